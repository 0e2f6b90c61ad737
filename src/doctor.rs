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

const RACERS: usize = 16;

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
pub async fn run(store: &DynStore, key: &str) -> Vec<Probe> {
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
                "create-only (If-None-Match: *)",
                true,
                "second create was refused",
            )),
            Ok(_) => probes.push(probe(
                "create-only (If-None-Match: *)",
                false,
                "second create overwrote the object: If-None-Match is ignored",
            )),
            Err(e) => probes.push(probe(
                "create-only (If-None-Match: *)",
                false,
                e.to_string(),
            )),
        },
        Err(e) => {
            probes.push(probe(
                "create-only (If-None-Match: *)",
                false,
                e.to_string(),
            ));
            return probes;
        }
    }

    let wrong = ETag("\"00000000000000000000000000000000\"".into());
    probes.push(
        match store
            .put(&single, body("3"), Condition::Match(wrong.clone()))
            .await
        {
            Err(StoreError::Conflict(_)) => probe("If-Match with a wrong ETag", true, "refused"),
            Ok(_) => probe(
                "If-Match with a wrong ETag",
                false,
                "accepted: If-Match is ignored",
            ),
            Err(e) => probe("If-Match with a wrong ETag", false, e.to_string()),
        },
    );

    let absent = format!("{base}-absent");
    probes.push(
        match store.put(&absent, body("4"), Condition::Match(wrong)).await {
            Err(StoreError::Missing) | Err(StoreError::Conflict(_)) => {
                probe("If-Match on a missing object", true, "refused")
            }
            Ok(_) => {
                cleanup.push(absent.clone());
                probe(
                    "If-Match on a missing object",
                    false,
                    "accepted: If-Match is ignored",
                )
            }
            Err(e) => probe("If-Match on a missing object", false, e.to_string()),
        },
    );

    let racing_create = format!("{base}-race-create");
    cleanup.push(racing_create.clone());
    let wins = race(store, &racing_create, None).await;
    probes.push(verdict("concurrent create-only writes", wins));

    let racing = format!("{base}-race-match");
    cleanup.push(racing.clone());
    match store.put(&racing, body("start"), Condition::Create).await {
        Ok(etag) => {
            let wins = race(store, &racing, Some(etag)).await;
            probes.push(verdict("concurrent If-Match writes of one ETag", wins));
        }
        Err(e) => probes.push(probe(
            "concurrent If-Match writes of one ETag",
            false,
            e.to_string(),
        )),
    }

    for key in cleanup {
        if let Ok(Fetched::Found(v)) = store.get(&key, None).await {
            let _ = store.delete(&key, &v.etag).await;
        }
    }
    probes
}

/// (successes, lost races, errors) of `RACERS` simultaneous conditional writes.
async fn race(store: &DynStore, key: &str, etag: Option<ETag>) -> (usize, usize, Vec<String>) {
    let start = Arc::new(tokio::sync::Barrier::new(RACERS));
    let mut tasks = Vec::new();
    for i in 0..RACERS {
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
    let (mut ok, mut lost, mut errors) = (0, 0, Vec::new());
    for t in tasks {
        match t.await {
            Ok(Ok(_)) => ok += 1,
            Ok(Err(StoreError::Conflict(_))) | Ok(Err(StoreError::Missing)) => lost += 1,
            Ok(Err(e)) => errors.push(e.to_string()),
            Err(e) => errors.push(e.to_string()),
        }
    }
    (ok, lost, errors)
}

fn verdict(name: &'static str, (ok, lost, errors): (usize, usize, Vec<String>)) -> Probe {
    let detail = format!(
        "{RACERS} writers: {ok} won, {lost} refused, {} error(s)",
        errors.len()
    );
    if !errors.is_empty() {
        return probe(name, false, format!("{detail}; first error: {}", errors[0]));
    }
    probe(name, ok == 1, detail)
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
