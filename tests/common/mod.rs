#![allow(dead_code)]

pub mod conformance;
pub mod faultproxy;
pub mod k8s;
pub mod operator;

use jobgate::testbed::SeaweedFs;

/// Starts SeaweedFS; fails (never skips) when the binary is missing.
pub async fn seaweed() -> SeaweedFs {
    // A port picked as free can still be taken by someone else before the
    // server binds it; a second try gets other ports.
    let mut last = String::new();
    for _ in 0..3 {
        match SeaweedFs::start().await {
            Ok(s) => return s,
            Err(e) if e.contains("not found") => panic!("{e}"),
            Err(e) => last = e,
        }
    }
    panic!("{last}")
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
