//! `jobgate limit`: change a ledger's limit at runtime.

use clap::Args;

use super::StoreArgs;
use crate::error::{Error, Result};
use crate::semaphore::set_limit_by_hand;

#[derive(Debug, Args)]
pub struct LimitArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The new limit. Lowering it stops nothing that runs: new slots are
    /// granted once fewer than this are in use.
    #[arg(allow_negative_numbers = true)]
    limit: i64,
}

/// A limit as given on the command line: from 1 to `u32::MAX`.
pub fn parse_limit(n: i64) -> Result<u32> {
    u32::try_from(n)
        .ok()
        .filter(|l| *l >= 1)
        .ok_or(Error::InvalidLimit(n))
}

pub async fn limit(args: LimitArgs) -> Result<u8> {
    let limit = parse_limit(args.limit)?;
    let (store, url) = args.store.open().await?;
    let who = format!("jobgate-limit@{}", crate::agent::hostname());
    let (before, ledger) = match set_limit_by_hand(&store, url.key(), limit, &who).await {
        Err(Error::LedgerMissing(_)) => {
            return Err(Error::InvalidArgument(format!(
                "{url} does not exist, so there is no limit to change; the first `jobgate run --limit N` or ConcurrencyGroup that uses it creates it"
            )));
        }
        other => other?,
    };
    println!("{}", summary(&url.to_string(), before, &ledger));
    Ok(0)
}

/// One line saying what changed and what it means for what runs now.
fn summary(url: &str, before: u32, ledger: &crate::Ledger) -> String {
    let in_use = ledger.in_use();
    let now = ledger.limit;
    if before == now {
        return format!("{url}: the limit is already {now} ({in_use} in use)");
    }
    let mut line = format!("{url}: limit {before} -> {now} ({in_use} in use)");
    if in_use > now as usize {
        line.push_str(&format!(
            "; nothing is stopped: new slots are granted once fewer than {now} are in use"
        ));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Agent, Holder, Ledger};

    fn with_holders(limit: u32, n: usize) -> Ledger {
        let mut l = Ledger::new(limit);
        l.agents.insert("a".into(), Agent::default());
        for i in 0..n {
            l.holders.insert(
                format!("h{i}"),
                Holder {
                    agent: "a".into(),
                    token: i as u64 + 1,
                    granted_seq: 1,
                    granted_at: String::new(),
                    slots: 1,
                },
            );
        }
        l
    }

    #[test]
    fn says_what_changed_and_that_lowering_stops_nothing() {
        assert_eq!(
            summary("s3://b/k", 2, &with_holders(4, 2)),
            "s3://b/k: limit 2 -> 4 (2 in use)"
        );
        assert_eq!(
            summary("s3://b/k", 4, &with_holders(1, 3)),
            "s3://b/k: limit 4 -> 1 (3 in use); nothing is stopped: new slots are granted once fewer than 1 are in use"
        );
        assert_eq!(
            summary("s3://b/k", 3, &with_holders(3, 0)),
            "s3://b/k: the limit is already 3 (0 in use)"
        );
    }
}
