//! Probes that tell whether a store really enforces conditional writes, and
//! does so atomically under concurrency. A store that fails them could let
//! more than `limit` jobs in, so jobgate refuses to use it.

use std::sync::Arc;

use bytes::Bytes;

use crate::error::{Error, Result};
use crate::semaphore::read_ledger;
use crate::store::{Condition, DynStore, ETag, Fetched, StoreError, unique_suffix};

#[derive(Debug, Clone)]
pub struct Probe {
    pub name: &'static str,
    pub passed: bool,
    pub detail: String,
}

/// How hard the concurrent probes push: `rounds` races of `racers`
/// simultaneous writers each. A store that checks and then writes without
/// a lock lets two writers win only when they land in the same small
/// window, so a store suspected of it needs more rounds than the default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Racing {
    pub racers: usize,
    pub rounds: usize,
}

impl Default for Racing {
    fn default() -> Self {
        Racing {
            racers: 16,
            rounds: 1,
        }
    }
}

/// What one race came to: writers that won, writers refused, and errors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Round {
    pub won: usize,
    pub lost: usize,
    pub errors: Vec<String>,
}

fn probe(name: &'static str, passed: bool, detail: impl Into<String>) -> Probe {
    Probe {
        name,
        passed,
        detail: detail.into(),
    }
}

fn body(tag: &str) -> Bytes {
    Bytes::from(format!("{{\"jobgate-doctor\":\"{tag}\"}}\n"))
}

/// Runs every probe next to `key` (probe objects are `KEY.doctor-*` and are
/// deleted afterwards). Stops early when the store cannot be reached at all.
pub async fn run(store: &DynStore, key: &str, racing: Racing) -> Vec<Probe> {
    let mut probes = Vec::new();
    match read_ledger(store, key).await {
        Ok(Some((l, _))) => probes.push(probe(
            "read ledger",
            true,
            format!(
                "limit {}, {} holder(s), {} agent(s), commit {}",
                l.limit,
                l.holders.len(),
                l.agents.len(),
                l.seq
            ),
        )),
        Ok(None) => probes.push(probe("read ledger", true, "not created yet")),
        Err(Error::Ledger { source, .. }) => {
            probes.push(probe("read ledger", false, source.to_string()))
        }
        Err(e) => {
            probes.push(probe("reach store", false, e.to_string()));
            return probes;
        }
    }

    let base = format!("{key}.doctor-{}", unique_suffix());
    probes.push(match store.get(&format!("{base}-absent"), None).await {
        Ok(Fetched::Missing) => probe("a missing object reads as missing", true, "404"),
        Err(StoreError::AccessDenied(_)) => probe(
            "a missing object reads as missing",
            false,
            "refused (403) instead: grant s3:ListBucket on the ledger's prefix, or a new ledger can never be created (see examples/iam-policy.json)",
        ),
        Ok(_) => probe(
            "a missing object reads as missing",
            false,
            "an object never written was found",
        ),
        Err(e) => probe("a missing object reads as missing", false, e.to_string()),
    });
    let single = format!("{base}-single");
    let mut cleanup: Vec<String> = vec![single.clone()];

    match store.put(&single, body("1"), Condition::Create).await {
        Ok(_) => match store.put(&single, body("2"), Condition::Create).await {
            Err(StoreError::Conflict(_)) => probes.push(probe(
                "create-only write",
                true,
                "second create was refused",
            )),
            Ok(_) => probes.push(probe(
                "create-only write",
                false,
                "a second create overwrote the object: the store ignores the create-only condition",
            )),
            Err(e) => probes.push(probe("create-only write", false, e.to_string())),
        },
        Err(e) => {
            probes.push(probe("create-only write", false, e.to_string()));
            return probes;
        }
    }

    let wrong = ETag("\"00000000000000000000000000000000\"".into());
    probes.push(
        match store
            .put(&single, body("3"), Condition::Match(wrong.clone()))
            .await
        {
            Err(StoreError::Conflict(_)) => probe(
                "write conditioned on a version the object does not have",
                true,
                "refused",
            ),
            Ok(_) => probe(
                "write conditioned on a version the object does not have",
                false,
                "accepted: the store ignores the version condition",
            ),
            Err(e) => probe(
                "write conditioned on a version the object does not have",
                false,
                e.to_string(),
            ),
        },
    );

    let absent = format!("{base}-absent");
    probes.push(
        match store.put(&absent, body("4"), Condition::Match(wrong)).await {
            Err(StoreError::Missing) | Err(StoreError::Conflict(_)) => probe(
                "write conditioned on a version of a missing object",
                true,
                "refused",
            ),
            Ok(_) => {
                cleanup.push(absent.clone());
                probe(
                    "write conditioned on a version of a missing object",
                    false,
                    "accepted: the store ignores the version condition",
                )
            }
            Err(e) => probe(
                "write conditioned on a version of a missing object",
                false,
                e.to_string(),
            ),
        },
    );

    let mut creates = Vec::new();
    for round in 0..racing.rounds {
        let racing_create = format!("{base}-race-create-{round}");
        cleanup.push(racing_create.clone());
        creates.push(race(store, &racing_create, None, racing.racers).await);
    }
    probes.push(verdict(
        "concurrent create-only writes",
        racing.racers,
        &creates,
    ));

    let mut swaps = Vec::new();
    for round in 0..racing.rounds {
        let racing_swap = format!("{base}-race-match-{round}");
        cleanup.push(racing_swap.clone());
        match store
            .put(&racing_swap, body("start"), Condition::Create)
            .await
        {
            Ok(etag) => swaps.push(race(store, &racing_swap, Some(etag), racing.racers).await),
            Err(e) => swaps.push(Round {
                errors: vec![e.to_string()],
                ..Round::default()
            }),
        }
    }
    probes.push(verdict(
        "concurrent writes conditioned on one version",
        racing.racers,
        &swaps,
    ));

    for key in cleanup {
        if let Ok(Fetched::Found(v)) = store.get(&key, None).await {
            let _ = store.delete(&key, &v.etag).await;
        }
    }
    probes
}

/// One race of `racers` simultaneous conditional writes to `key`.
async fn race(store: &DynStore, key: &str, etag: Option<ETag>, racers: usize) -> Round {
    let start = Arc::new(tokio::sync::Barrier::new(racers));
    let mut tasks = Vec::new();
    for i in 0..racers {
        let store = store.clone();
        let key = key.to_string();
        let start = start.clone();
        let condition = match &etag {
            Some(e) => Condition::Match(e.clone()),
            None => Condition::Create,
        };
        tasks.push(tokio::spawn(async move {
            start.wait().await;
            store
                .put(&key, body(&format!("racer-{i}")), condition)
                .await
        }));
    }
    let mut round = Round::default();
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => round.won += 1,
            Ok(Err(StoreError::Conflict(_))) | Ok(Err(StoreError::Missing)) => round.lost += 1,
            Ok(Err(e)) => round.errors.push(e.to_string()),
            Err(e) => round.errors.push(e.to_string()),
        }
    }
    round
}

/// Passes only when every round had exactly one winner and no errors.
fn verdict(name: &'static str, racers: usize, rounds: &[Round]) -> Probe {
    let errors: Vec<&String> = rounds.iter().flat_map(|r| &r.errors).collect();
    let detail = match rounds {
        [one] => format!(
            "{racers} writers: {} won, {} refused, {} error(s)",
            one.won,
            one.lost,
            one.errors.len()
        ),
        _ => {
            let bad = rounds.iter().filter(|r| r.won != 1).count();
            let most = rounds.iter().map(|r| r.won).max().unwrap_or(0);
            format!(
                "{} rounds of {racers} writers: {bad} without exactly one winner (most winners in a round: {most}), {} error(s)",
                rounds.len(),
                errors.len()
            )
        }
    };
    if let Some(first) = errors.first() {
        return probe(name, false, format!("{detail}; first error: {first}"));
    }
    probe(name, rounds.iter().all(|r| r.won == 1), detail)
}

/// A cheap guard used before any real use of a store: an If-Match write to
/// an object that does not exist must be refused. One request, no object
/// left behind on a correct store.
pub async fn ensure_conditional_writes(store: &DynStore, key: &str) -> Result<()> {
    let absent = format!("{key}.probe-{}", unique_suffix());
    let bogus = ETag("\"00000000000000000000000000000000\"".into());
    match store
        .put(&absent, body("probe"), Condition::Match(bogus))
        .await
    {
        Err(StoreError::Missing) | Err(StoreError::Conflict(_)) => Ok(()),
        Ok(etag) => {
            let _ = store.delete(&absent, &etag).await;
            Err(Error::ConditionalWritesUnsupported(format!(
                "{} accepted If-Match on a missing object",
                store.describe()
            )))
        }
        Err(StoreError::Unsupported(why)) => Err(Error::ConditionalWritesUnsupported(why)),
        // Nothing depends on this probe's outcome, so an unclear answer just
        // means the store could not be reached.
        Err(StoreError::Ambiguous(why)) => Err(StoreError::Unavailable(why).into()),
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(won: usize, lost: usize) -> Round {
        Round {
            won,
            lost,
            errors: vec![],
        }
    }

    #[test]
    fn one_winner_in_every_round_passes() {
        let p = verdict("x", 16, &[round(1, 15)]);
        assert!(p.passed);
        assert_eq!(p.detail, "16 writers: 1 won, 15 refused, 0 error(s)");
        assert!(verdict("x", 4, &[round(1, 3), round(1, 3)]).passed);
    }

    #[test]
    fn a_single_round_with_two_winners_fails_the_probe() {
        let p = verdict("x", 4, &[round(1, 3), round(2, 2), round(1, 3)]);
        assert!(!p.passed);
        assert!(
            p.detail.starts_with(
                "3 rounds of 4 writers: 1 without exactly one winner (most winners in a round: 2)"
            ),
            "{}",
            p.detail
        );
        assert!(!verdict("x", 4, &[round(0, 4)]).passed);
    }

    #[test]
    fn errors_fail_the_probe_and_name_the_first() {
        let mut r = round(1, 2);
        r.errors.push("timed out".into());
        let p = verdict("x", 4, &[r]);
        assert!(!p.passed);
        assert!(p.detail.ends_with("first error: timed out"), "{}", p.detail);
    }
}
