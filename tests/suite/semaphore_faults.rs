//! The semaphore under store faults that a real server cannot be made to
//! produce on demand (writes that land but whose answer is lost, followed by
//! a partition) and its leases, all on an in-memory store and tokio's paused
//! clock: time moves only when every task waits, so lease arithmetic is
//! checked exactly and a 30-second lease costs no wall-clock time.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use async_trait::async_trait;
use bytes::Bytes;
use jobgate::store::{Condition, DynStore, ETag, Fetched, MemoryStore, Store, StoreError};
use jobgate::{Config, Semaphore};

/// Applies the first `lose_answers` writes but reports them as timeouts;
/// once `partitioned` is set, every call fails.
#[derive(Debug, Default)]
struct Flaky {
    inner: MemoryStore,
    lose_answers: AtomicU32,
    partitioned: std::sync::atomic::AtomicBool,
    /// Seconds every write's answer takes to come back.
    slow_answers: AtomicU32,
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
        let slow = self.slow_answers.load(Ordering::SeqCst);
        if slow > 0 {
            tokio::time::sleep(Duration::from_secs(u64::from(slow))).await;
        }
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

#[tokio::test(start_paused = true)]
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

#[tokio::test(start_paused = true)]
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

#[tokio::test(start_paused = true)]
async fn a_silent_agents_slot_returns_after_one_lease_on_the_waiters_clock() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let lease = Duration::from_secs(30);
    let silent = Semaphore::new(store.clone(), "s.json", config("silent", lease));
    let held = silent.acquire("h").await.unwrap();
    // Stops renewing without releasing, as a crashed process would.
    silent.shutdown().await;
    let stopped = Instant::now();
    let waiter = Semaphore::new(store.clone(), "s.json", config("waiter", lease));
    let got = waiter.acquire("w").await.unwrap();
    let waited = stopped.elapsed();
    assert!(
        waited >= lease,
        "took the slot after {waited:?}, before a whole lease of {lease:?}"
    );
    // The waiter starts watching at once and polls every 20 ms.
    assert!(
        waited <= lease + Duration::from_secs(1),
        "took {waited:?} to reclaim a slot whose lease is {lease:?}"
    );
    eprintln!("reclaimed after {waited:?} with a lease of {lease:?}");
    assert!(got.token > held.token, "fencing tokens only grow");
    waiter.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_live_agents_slot_is_never_taken_however_long_it_holds() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let lease = Duration::from_secs(30);
    let live = Semaphore::new(store.clone(), "l.json", config("live", lease));
    let permit = live.acquire("held").await.unwrap();
    let waiter = Semaphore::new(store.clone(), "l.json", config("waiter", lease));
    let waited = tokio::time::timeout(lease * 10, waiter.acquire("want")).await;
    assert!(waited.is_err(), "a live agent's slot was taken: {waited:?}");
    assert!(
        !permit.is_lost(),
        "the live holder was told its slot is lost"
    );
    let (ledger, _) = jobgate::semaphore::read_ledger(&store, "l.json")
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        ledger.holders.keys().collect::<Vec<_>>(),
        vec!["held"],
        "{ledger:?}"
    );
    // One renewal every third of the lease: about 30 in ten leases.
    let renewals = ledger.agents["live"].renewals;
    assert!(renewals >= 27, "renewed {renewals} times in ten leases");
    live.shutdown().await;
    waiter.shutdown().await;
}

/// A restarted process with the same agent id takes its slot up again. The
/// grant carries a renewal, so the slot is fenced like any other when the
/// store then goes away (before, no renewal was known and it never was).
#[tokio::test(start_paused = true)]
async fn a_slot_taken_up_again_is_fenced_like_any_other() {
    let store = Arc::new(Flaky::default());
    let lease = Duration::from_secs(30);
    let first = Semaphore::new(store.clone(), "u.json", config("a", lease));
    let granted = first.acquire("h").await.unwrap();
    first.shutdown().await;
    let again = Semaphore::new(store.clone(), "u.json", config("a", lease));
    let mut taken_up = again.acquire("h").await.unwrap();
    assert_eq!(
        taken_up.token, granted.token,
        "the same grant, not a new one"
    );
    store.partitioned.store(true, Ordering::SeqCst);
    let cut = Instant::now();
    tokio::time::timeout(lease, taken_up.lost())
        .await
        .expect("a slot taken up again was never fenced");
    assert!(
        cut.elapsed() < lease,
        "fenced {:?} after the cut",
        cut.elapsed()
    );
    again.shutdown().await;
}

/// A grant whose answer arrives after the fence period is never usable: the
/// client hands it out already lost (on this single-threaded paused runtime
/// the client's next step would also mark it lost before the caller looks;
/// on a multi-threaded one that step races the caller, which is why the
/// grant is lost from the start).
#[tokio::test(start_paused = true)]
async fn a_grant_answered_after_the_fence_period_is_handed_out_lost() {
    let store = Arc::new(Flaky::default());
    let lease = Duration::from_secs(30);
    // The fence comes at 60% of the lease: 18 s.
    store.slow_answers.store(20, Ordering::SeqCst);
    let sem = Semaphore::new(store.clone(), "late.json", config("a", lease));
    let permit = sem.acquire("h").await.unwrap();
    assert!(
        permit.is_lost(),
        "a grant answered after 20 s was handed out usable"
    );
    // Answered in time, the next grant is usable.
    store.slow_answers.store(1, Ordering::SeqCst);
    let other = Semaphore::new(store.clone(), "ok.json", config("b", lease));
    let fine = other.acquire("g").await.unwrap();
    assert!(!fine.is_lost());
    sem.shutdown().await;
    other.shutdown().await;
}
