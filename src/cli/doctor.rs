//! `jobgate doctor`: is this bucket safe to coordinate through?

use clap::Args;

use super::StoreArgs;
use crate::error::Result;

#[derive(Debug, Args)]
pub struct DoctorArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Writers in each concurrent probe; exactly one may win.
    #[arg(long, default_value_t = 16, value_parser = clap::value_parser!(u16).range(2..=256))]
    racers: u16,
    /// Races per concurrent probe. A store that checks and then writes
    /// without a lock lets two writers win only now and then; more rounds
    /// give it more chances to show.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=1000))]
    rounds: u16,
}

pub async fn doctor(args: DoctorArgs) -> Result<u8> {
    let (store, url) = args.store.open().await?;
    println!("checking {url}");
    let racing = crate::doctor::Racing {
        racers: usize::from(args.racers),
        rounds: usize::from(args.rounds),
    };
    let probes = crate::doctor::run(&store, url.key(), racing).await;
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
