//! `jobgate doctor`: is this bucket safe to coordinate through?

use clap::Args;

use super::StoreArgs;
use crate::error::Result;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    store: StoreArgs,
}

pub async fn doctor(args: DoctorArgs) -> Result<u8> {
    let (store, url) = args.store.open().await?;
    println!("checking {url}");
    let probes = crate::doctor::run(&store, url.key()).await;
    for p in &probes {
        println!(
            "  {}  {}: {}",
            if p.passed { "PASS" } else { "FAIL" },
            p.name,
            p.detail
        );
    }
    let failed = probes.iter().filter(|p| !p.passed).count();
    if failed == 0 && probes.len() > 2 {
        println!(
            "verdict: OK, conditional writes are enforced and atomic; jobgate can use this store"
        );
        Ok(0)
    } else {
        println!("verdict: NOT SAFE, {failed} check(s) failed; jobgate must not use this store");
        Ok(1)
    }
}
