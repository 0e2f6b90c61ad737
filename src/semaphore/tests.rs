use super::*;
use crate::store::MemoryStore;

fn at(seq: u64) -> Ledger {
    let mut l = Ledger::new(1);
    l.seq = seq;
    l
}

#[test]
fn counters_grow_past_what_was_seen_and_a_first_write_past_the_clock() {
    let mut ledger = Ledger::new(2);
    ledger.seq = 50;
    ledger.next_token = 40;
    let hw = |seq, next_token| HighWater { seq, next_token };
    // As read, once this client has written: nothing to lift.
    assert_eq!(carried_counters(&ledger, None, false, 1_000), hw(50, 40));
    assert_eq!(
        carried_counters(&ledger, Some(hw(10, 5)), false, 1_000),
        hw(50, 40)
    );
    // Rolled back below what this client saw.
    assert_eq!(
        carried_counters(&ledger, Some(hw(70, 60)), false, 1_000),
        hw(70, 60)
    );
    // A first write: up to the clock floor, or what was seen if higher.
    assert_eq!(
        carried_counters(&ledger, None, true, 1_000),
        hw(1_000, 1_000)
    );
    assert_eq!(
        carried_counters(&ledger, Some(hw(2_000, 60)), true, 1_000),
        hw(2_000, 1_000)
    );
    // A floor below the ledger's counters (a clock behind) lowers nothing.
    assert_eq!(carried_counters(&ledger, None, true, 30), hw(50, 40));
}

#[test]
fn history_tells_a_deleted_or_older_ledger_from_one_that_moved_on() {
    let hw = Some(HighWater::of(&at(5)));
    assert_eq!(history(None, None), History::Continues, "never seen");
    assert_eq!(history(None, Some(&at(1))), History::Continues);
    assert_eq!(history(hw, Some(&at(5))), History::Continues);
    assert_eq!(history(hw, Some(&at(9))), History::Continues);
    assert_eq!(history(hw, None), History::Vanished);
    assert_eq!(history(hw, Some(&at(4))), History::WentBack);
}

#[test]
fn a_new_ledger_starts_its_counters_from_the_clock() {
    let a = creation_floor();
    // 2026 in microseconds since 1970, give or take.
    assert!(a > 1_700_000_000_000_000, "{a}");
    assert!(creation_floor() >= a);
}

#[tokio::test(start_paused = true)]
async fn a_raised_limit_admits_waiters_and_a_lowered_one_preempts_nothing() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let mut cfg = Config::new("a");
    cfg.limit = Some(1);
    let a = Semaphore::new(store.clone(), "k", cfg);
    let _first = a.acquire("h1").await.unwrap();
    assert!(a.try_acquire("h2").await.unwrap().is_none());
    let change = |limit| LimitChange {
        limit,
        by: "east/ns/g".into(),
        generation: Some(2),
    };
    let written = a.set_limit(change(3)).await.unwrap();
    assert_eq!(written.limit, 3);
    let set = written.limit_set.clone().unwrap();
    assert_eq!(
        (set.by.as_str(), set.generation, set.previous),
        ("east/ns/g", Some(2), 1)
    );
    assert!(a.try_acquire("h2").await.unwrap().is_some());
    assert!(a.try_acquire("h3").await.unwrap().is_some());
    // Lowered below the three in use: all three keep their slots.
    let written = a.set_limit(change(1)).await.unwrap();
    assert_eq!((written.limit, written.in_use()), (1, 3));
    assert!(a.try_acquire("h4").await.unwrap().is_none());
    a.release("h1").await.unwrap();
    a.release("h2").await.unwrap();
    assert!(
        a.try_acquire("h4").await.unwrap().is_none(),
        "1 of 1 still in use"
    );
    a.release("h3").await.unwrap();
    assert!(a.try_acquire("h4").await.unwrap().is_some());
    assert!(matches!(
        a.set_limit(change(0)).await,
        Err(Error::InvalidLimit(0))
    ));
    a.shutdown().await;
    // From the CLI: by compare-and-swap, recorded as a person's change.
    let (before, after) = set_limit_by_hand(&store, "k", 5, "jobgate-limit@h")
        .await
        .unwrap();
    assert_eq!((before, after.limit), (1, 5));
    assert_eq!(after.limit_set.unwrap().generation, None);
    let (before, _) = set_limit_by_hand(&store, "k", 5, "jobgate-limit@h")
        .await
        .unwrap();
    assert_eq!(before, 5, "setting the same limit again changes nothing");
}

/// A store whose writes take a second to answer.
#[derive(Debug)]
struct SlowWrites(MemoryStore);

#[async_trait::async_trait]
impl crate::store::Store for SlowWrites {
    async fn get(
        &self,
        key: &str,
        if_none_match: Option<&ETag>,
    ) -> std::result::Result<Fetched, StoreError> {
        self.0.get(key, if_none_match).await
    }
    async fn put(
        &self,
        key: &str,
        body: Bytes,
        condition: Condition,
    ) -> std::result::Result<ETag, StoreError> {
        let etag = self.0.put(key, body, condition).await;
        tokio::time::sleep(Duration::from_secs(1)).await;
        etag
    }
    async fn delete(&self, key: &str, etag: &ETag) -> std::result::Result<(), StoreError> {
        self.0.delete(key, etag).await
    }
    fn describe(&self) -> String {
        "slow".into()
    }
}

#[tokio::test(start_paused = true)]
async fn a_grant_whose_caller_gave_up_is_freed_only_by_agents_that_free_orphans() {
    for release_orphans in [true, false] {
        let store: DynStore = Arc::new(SlowWrites(MemoryStore::new()));
        let mut cfg = Config::new("east/ns/g");
        cfg.limit = Some(1);
        cfg.release_orphans = release_orphans;
        let sem = Semaphore::new(store.clone(), "k", cfg);
        // The caller (a controller's pass, dropped when its replica lost
        // leadership) gives up while the grant is being written.
        let gave_up = tokio::time::timeout(Duration::from_millis(100), sem.acquire("h1")).await;
        assert!(gave_up.is_err());
        tokio::time::sleep(Duration::from_secs(5)).await;
        let ledger = sem.snapshot().await.unwrap();
        // A controller leaves the slot to its next pass (another
        // replica may have let the Job run on it); `jobgate run` frees
        // it, since nobody else could use it.
        assert_eq!(
            ledger.holders.contains_key("h1"),
            !release_orphans,
            "release_orphans {release_orphans}: {ledger:?}"
        );
        if !release_orphans {
            // The next pass asks again: the same slot and token.
            let permit = sem.try_acquire("h1").await.unwrap().unwrap();
            assert_eq!(permit.token, ledger.holders["h1"].token);
        }
        sem.shutdown().await;
    }
}

/// The machine's clocks, plus boot time a test adds: a suspend the
/// monotonic clock never saw.
#[derive(Debug, Default)]
struct Suspendable(std::sync::atomic::AtomicU64);

impl Clocks for Suspendable {
    fn read(&self) -> Reading {
        let mut r = SystemClocks::default().read();
        let slept = Duration::from_millis(self.0.load(Ordering::Relaxed));
        r.boot = Some(r.boot.unwrap_or_default() + slept);
        r
    }
}

#[tokio::test(start_paused = true)]
async fn slots_kept_through_a_suspend_longer_than_the_fence_are_lost_on_waking() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let clocks = Arc::new(Suspendable::default());
    let mut cfg = Config::new("laptop");
    cfg.limit = Some(1);
    cfg.lease = Duration::from_secs(30);
    cfg.clocks = clocks.clone();
    let sem = Semaphore::new(store, "k", cfg);
    let permit = sem.acquire("h1").await.unwrap();
    // Awake, renewing: safe for as long as it runs.
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!permit.is_lost());
    // Suspended for 20 s (more than the 18 s fence period), the
    // monotonic clock stopped: lost within a clock check of waking,
    // before any renewal could find the slot gone.
    clocks.0.store(20_000, Ordering::Relaxed);
    tokio::time::sleep(CLOCK_CHECK + Duration::from_millis(10)).await;
    assert!(permit.is_lost());

    // A suspend shorter than what is left of the fence period loses
    // nothing.
    let store: DynStore = Arc::new(MemoryStore::new());
    let clocks = Arc::new(Suspendable::default());
    let mut cfg = Config::new("laptop");
    cfg.limit = Some(1);
    cfg.clocks = clocks.clone();
    let sem = Semaphore::new(store, "k", cfg);
    let permit = sem.acquire("h1").await.unwrap();
    clocks.0.store(5_000, Ordering::Relaxed);
    tokio::time::sleep(Duration::from_secs(60)).await;
    assert!(!permit.is_lost());
}

#[tokio::test(start_paused = true)]
async fn an_agent_that_leaves_is_gone_from_the_ledger_unless_it_holds_slots() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let mut cfg = Config::new("a");
    cfg.limit = Some(2);
    cfg.record_wait = true;
    let a = Semaphore::new(store.clone(), "k", cfg);
    let _held = a.acquire("h").await.unwrap();
    let kept = a.leave().await.unwrap();
    assert!(kept.agents.contains_key("a"), "it still holds h");
    a.release("h").await.unwrap();
    let gone = a.leave().await.unwrap();
    assert!(!gone.agents.contains_key("a"), "{gone:?}");
    let (stored, _) = read_ledger(&store, "k").await.unwrap().unwrap();
    assert!(stored.agents.is_empty() && stored.holders.is_empty());
    a.shutdown().await;
}

#[tokio::test(start_paused = true)]
async fn a_deleted_ledger_fences_its_holders_within_a_renewal_and_is_not_recreated() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let lease = Duration::from_secs(30);
    let mut cfg = Config::new("a");
    cfg.limit = Some(1);
    cfg.lease = lease;
    let a = Semaphore::new(store.clone(), "k", cfg.clone());
    let mut held = a.acquire("h").await.unwrap();
    let Ok(Fetched::Found(v)) = store.get("k", None).await else {
        panic!("no ledger")
    };
    let old = Ledger::parse(&v.body).unwrap();
    store.delete("k", &v.etag).await.unwrap();
    let deleted = Instant::now();
    held.lost().await;
    let told = deleted.elapsed();
    assert!(held.is_lost());
    // The next renewal finds it gone: one renewal interval at most, a
    // fifth of the lease (a third of the fence period, 60% of it).
    eprintln!("told {told:?} after the deletion");
    assert!(
        told <= lease / 5 + Duration::from_millis(100),
        "told {told:?} after the deletion"
    );
    // This client never creates it again behind its old holders.
    let err = a.try_acquire("again").await.unwrap_err();
    assert!(matches!(err, Error::LedgerVanished(_)), "{err}");
    assert!(matches!(store.get("k", None).await, Ok(Fetched::Missing)));
    // A client that never saw it creates it, with tokens above the old.
    cfg.agent = "b".into();
    let b = Semaphore::new(store.clone(), "k", cfg);
    let fresh = b.acquire("n").await.unwrap();
    assert!(
        fresh.token > old.next_token,
        "{} <= {}",
        fresh.token,
        old.next_token
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// Agent "a" at limit 2 is granted "first", then "second"; then someone
/// restores the ledger's version from before "second" was granted. The
/// client, both permits, and the ledger as it was before the rollback.
async fn rolled_back_after_two_grants(store: &DynStore) -> (Semaphore, Permit, Permit, Ledger) {
    let mut cfg = Config::new("a");
    cfg.limit = Some(2);
    let a = Semaphore::new(store.clone(), "k", cfg);
    let Ok(Some(first)) = a.try_acquire("first").await else {
        panic!("no slot")
    };
    let Ok(Fetched::Found(old)) = store.get("k", None).await else {
        panic!("no ledger")
    };
    let second = a.acquire("second").await.unwrap();
    let Ok(Fetched::Found(now)) = store.get("k", None).await else {
        panic!("no ledger")
    };
    let newer = Ledger::parse(&now.body).unwrap();
    store
        .put("k", old.body.clone(), Condition::Match(now.etag))
        .await
        .unwrap();
    (a, first, second, newer)
}

#[tokio::test(start_paused = true)]
async fn a_ledger_rolled_back_fences_holders_and_counters_keep_growing() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let (a, _first, mut second, newer) = rolled_back_after_two_grants(&store).await;
    second.lost().await;
    assert!(second.is_lost());
    let again = a.acquire("third").await.unwrap();
    assert!(
        again.token >= newer.next_token,
        "token {} reissued below {}",
        again.token,
        newer.next_token
    );
    let Ok(Fetched::Found(v)) = store.get("k", None).await else {
        panic!("no ledger")
    };
    assert!(Ledger::parse(&v.body).unwrap().seq > newer.seq);
    a.shutdown().await;
}

/// A client that never saw the newer versions of a ledger rolled back
/// to an older one (a new `jobgate run`, another cluster) cannot know
/// the tokens granted in them. Its first write lifts the counters to the
/// clock floor, so it hands out none of those tokens again.
#[tokio::test(start_paused = true)]
async fn a_client_new_to_a_rolled_back_ledger_repeats_no_token() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let (a, first, second, _) = rolled_back_after_two_grants(&store).await;
    let b = Semaphore::new(store.clone(), "k", Config::new("b"));
    let Ok(Some(other)) = b.try_acquire("other").await else {
        panic!("no slot")
    };
    assert!(
        other.token > second.token && other.token > first.token,
        "token {} granted again (tokens granted before the rollback: {} and {})",
        other.token,
        first.token,
        second.token
    );
    a.shutdown().await;
    b.shutdown().await;
}

/// An agent that records waits and swaps a released slot for a new one
/// in one write (as the operator does) never leaves a free slot to a
/// waiter it cannot see; once that waiter has waited `record_wait_after`,
/// its wait is in the ledger and it gets the next free slot.
#[tokio::test(start_paused = true)]
async fn a_waiter_that_records_late_is_not_starved_by_swaps() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let mut cfg = Config::new("operator");
    cfg.limit = Some(1);
    cfg.record_wait = true;
    cfg.release_orphans = false;
    let operator = Semaphore::new(store.clone(), "k", cfg);
    let mut held = "job-0".to_string();
    let got = operator
        .release_and_try_acquire(&[], &ones(&[&held]))
        .await
        .unwrap();
    assert!(matches!(got[0], Ok(Some(_))));
    let mut run_cfg = Config::new("run");
    run_cfg.poll = Duration::from_millis(100);
    run_cfg.record_wait_after = Some(Duration::from_secs(5));
    let run = Semaphore::new(store.clone(), "k", run_cfg);
    let waiter = tokio::spawn(async move {
        let started = Instant::now();
        let permit = run.acquire("cli").await;
        (permit.map(|p| p.token), started.elapsed(), run)
    });
    // The operator swaps its slot every 500 ms for 60 s.
    let mut swaps = 0;
    while !waiter.is_finished() && swaps < 120 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let next = format!("job-{}", swaps + 1);
        let got = operator
            .release_and_try_acquire(&ids(&[&held]), &ones(&[&next]))
            .await
            .unwrap();
        if matches!(got[0], Ok(Some(_))) {
            held = next;
        } else {
            held.clear();
        }
        swaps += 1;
        if held.is_empty() {
            break;
        }
    }
    let (token, waited, run) = tokio::time::timeout(Duration::from_secs(10), waiter)
        .await
        .expect("the waiter was starved")
        .unwrap();
    assert!(token.is_ok(), "{token:?}");
    assert!(
        waited >= Duration::from_secs(5) && waited < Duration::from_secs(8),
        "waited {waited:?}"
    );
    run.shutdown().await;
    operator.shutdown().await;
}

/// A recorded wait holds free slots back from agents that hold more
/// only while its agent keeps asking: an agent that renews (it holds a
/// slot) but has stopped asking withdraws its wait after a lease.
#[tokio::test(start_paused = true)]
async fn a_wait_nobody_asks_for_any_more_stops_counting_after_a_lease() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let agent = |name: &str| {
        let mut cfg = Config::new(name);
        cfg.limit = Some(4);
        cfg.release_orphans = false;
        cfg.record_wait = true;
        Semaphore::new(store.clone(), "k", cfg)
    };
    let (a, b) = (agent("a"), agent("b"));
    let got = b
        .release_and_try_acquire(&[], &ones(&["b1", "b2", "b3"]))
        .await
        .unwrap();
    assert!(got.iter().all(|g| matches!(g, Ok(Some(_)))));
    let got = a
        .release_and_try_acquire(&[], &ones(&["a1", "a2"]))
        .await
        .unwrap();
    assert!(matches!(got[0], Ok(Some(_))) && matches!(got[1], Ok(None)));
    let ledger = a.snapshot().await.unwrap();
    assert_eq!(ledger.agents["a"].waiting, 1);
    // From now on `a` only renews. `b` swaps a slot every second: it
    // holds more than `a`, so it defers to `a`'s wait while that counts.
    let started = Instant::now();
    let mut held = "b3".to_string();
    let mut n = 4;
    let got_after = loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let next = format!("b{n}");
        let release = if held.is_empty() {
            vec![]
        } else {
            ids(&[&held])
        };
        let got = b
            .release_and_try_acquire(&release, &ones(&[&next]))
            .await
            .unwrap();
        held.clear();
        n += 1;
        if matches!(got[0], Ok(Some(_))) {
            break started.elapsed();
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "b was held back for a minute"
        );
    };
    let lease = Config::new("x").lease;
    eprintln!("b got a slot {got_after:?} after a's last attempt (lease {lease:?})");
    assert!(
        got_after >= lease - Duration::from_secs(2) && got_after <= lease + Duration::from_secs(12),
        "b got a slot {got_after:?} after a stopped asking (lease {lease:?})"
    );
    assert_eq!(a.snapshot().await.unwrap().agents["a"].waiting, 0);
    a.shutdown().await;
    b.shutdown().await;
}

fn client(store: &DynStore, agent: &str) -> Semaphore {
    let mut cfg = Config::new(agent);
    cfg.limit = Some(2);
    cfg.release_orphans = false;
    cfg.record_wait = true;
    Semaphore::new(store.clone(), "k", cfg)
}

fn ids(v: &[&str]) -> Vec<String> {
    v.iter().map(|s| s.to_string()).collect()
}

/// Holders taking one unit each.
fn ones(v: &[&str]) -> Vec<(String, u32)> {
    v.iter().map(|s| (s.to_string(), 1)).collect()
}

#[tokio::test]
async fn an_agent_that_frees_a_slot_yields_it_to_a_waiting_agent() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let a = client(&store, "a");
    let b = client(&store, "b");
    let got = a
        .release_and_try_acquire(&[], &ones(&["a1", "a2", "a3"]))
        .await
        .unwrap();
    assert_eq!(got.iter().filter(|g| matches!(g, Ok(Some(_)))).count(), 2);
    let got = b
        .release_and_try_acquire(&[], &ones(&["b1"]))
        .await
        .unwrap();
    assert!(matches!(got[0], Ok(None)));
    // Polling (a snapshot) keeps b's place.
    let ledger = b.snapshot().await.unwrap();
    assert_eq!(ledger.agents["b"].waiting, 1, "{ledger:?}");
    let ledger = b.snapshot().await.unwrap();
    assert_eq!(ledger.agents["b"].waiting, 1, "{ledger:?}");
    let got = a
        .release_and_try_acquire(&ids(&["a1"]), &ones(&["a3"]))
        .await
        .unwrap();
    let l = a.snapshot().await.unwrap();
    assert!(
        matches!(got[0], Ok(None)),
        "a took back the slot b waits for: {l:?}"
    );
    // A try reads the cache; b's next poll (a fresh read) sees the slot.
    b.snapshot().await.unwrap();
    let got = b
        .release_and_try_acquire(&[], &ones(&["b1"]))
        .await
        .unwrap();
    assert!(matches!(got[0], Ok(Some(_))));
}
