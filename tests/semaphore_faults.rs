//! The semaphore under store faults that a real server cannot be made to
//! produce on demand: writes that land but whose answer is lost, followed by
//! a partition.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use jobgate::store::{Condition, ETag, Fetched, MemoryStore, Store, StoreError};
use jobgate::{Config, Semaphore};

/// Applies the first `lose_answers` writes but reports them as timeouts;
/// once `partitioned` is set, every call fails.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    lose_answers: AtomicU32,
    partitioned: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Store for Flaky {
    async fn get(&self, key: &str, inm: Option<&ETag>) -> Result<Fetched, StoreError> {
        if self.partitioned.load(Ordering::SeqCst) {
            return Err(StoreError::Unavailable("partitioned".into()));
        }
        self.inner.get(key, inm).await
    }

    async fn put(&self, key: &str, body: Bytes, c: Condition) -> Result<ETag, StoreError> {
        if self.partitioned.load(Ordering::SeqCst) {
            return Err(StoreError::Ambiguous("partitioned".into()));
        }
        let result = self.inner.put(key, body, c).await;
        if result.is_ok() && self.lose_answers.load(Ordering::SeqCst) > 0 {
            self.lose_answers.fetch_sub(1, Ordering::SeqCst);
            return Err(StoreError::Ambiguous("answer lost".into()));
        }
        result
    }

    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        self.inner.delete(key, etag).await
    }

    fn describe(&self) -> String {
        "flaky".into()
    }
}

fn config(agent: &str, lease: Duration) -> Config {
    let mut c = Config::new(agent);
    c.limit = Some(1);
    c.lease = lease;
    c.poll = Duration::from_millis(20);
    c
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_whose_answer_was_lost_is_granted_once_and_still_fenced() {
    let store = Arc::new(Flaky::default());
    // The create lands but its answer is lost; so does the retry's answer.
    store.lose_answers.store(2, Ordering::SeqCst);
    let lease = Duration::from_secs(2);
    let sem = Semaphore::new(store.clone(), "l.json", config("a", lease));
    let asked = Instant::now();
    let mut permit = sem.acquire("h").await.unwrap();
    let (ledger, _) = jobgate::semaphore::read_ledger(&(store.clone() as _), "l.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(ledger.holders.len(), 1, "granted exactly once: {ledger:?}");
    assert_eq!(ledger.holders["h"].token, permit.token);

    store.partitioned.store(true, Ordering::SeqCst);
    tokio::time::timeout(lease, permit.lost())
        .await
        .expect("never told the slot was unsafe");
    let told = asked.elapsed();
    assert!(
        told < lease,
        "told after {told:?}, at or past the lease {lease:?}"
    );
    sem.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_the_caller_gave_up_on_is_released() {
    let store = Arc::new(Flaky::default());
    let dynstore: jobgate::store::DynStore = store.clone();
    let sem = Semaphore::new(
        dynstore.clone(),
        "g.json",
        config("a", Duration::from_secs(30)),
    );
    let first = sem.acquire("first").await.unwrap();
    // Waits, then is abandoned; the slot it would get must not leak.
    let waiting = tokio::time::timeout(Duration::from_millis(100), sem.acquire("second")).await;
    assert!(waiting.is_err());
    sem.release(&first.holder).await.unwrap();
    let next = sem.acquire("third").await.unwrap();
    let (ledger, _) = jobgate::semaphore::read_ledger(&dynstore, "g.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ledger.holders.keys().collect::<Vec<_>>(),
        vec!["third"],
        "{ledger:?}"
    );
    sem.release(&next.holder).await.unwrap();
    sem.shutdown().await;
}
