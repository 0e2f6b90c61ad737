#![allow(dead_code)]

pub mod conformance;
pub mod faultproxy;
pub mod k8s;
pub mod operator;

use jobgate::testbed::SeaweedFs;

/// Starts SeaweedFS; fails (never skips) when the binary is missing.
pub async fn seaweed() -> SeaweedFs {
    match SeaweedFs::start().await {
        Ok(s) => s,
        Err(e) => panic!("{e}"),
    }
}

/// A fresh bucket on `server`.
pub async fn bucket(server: &SeaweedFs) -> String {
    let name = format!("jg-{:08x}", rand::random::<u32>());
    server
        .create_bucket(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    name
}

pub fn jobgate_bin() -> std::path::PathBuf {
    std::path::PathBuf::from(env!("CARGO_BIN_EXE_jobgate"))
}
