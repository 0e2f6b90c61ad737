//! Many contenders with separate clients on one ledger, checked by recording
//! every holding interval on one monotonic clock. The same checker applied to
//! the naive counter finds the limit exceeded, which shows it can fail.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use jobgate::semaphore::read_ledger;
use jobgate::store::{DynStore, MemoryStore, S3Options, S3Store};
use jobgate::{Config, Semaphore};
use jobgate_testkit::faultproxy::{FaultProxy, Faults};
use jobgate_testkit::history::{IntervalLog, max_overlap};
use jobgate_testkit::naive::NaiveCounter;

const CONTENDERS: usize = 16;
const CYCLES: usize = 20;
const LIMIT: u32 = 3;

struct Report {
    max_overlap: usize,
    per_contender: Vec<usize>,
    total: usize,
}

/// Runs the stress with one client (and one agent) per contender; `connect`
/// makes each contender its own store client.
async fn stress<F, Fut>(connect: F, key: &str) -> Report
where
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = DynStore>,
{
    let recorder = Arc::new(IntervalLog::default());
    let mut tasks = Vec::new();
    for c in 0..CONTENDERS {
        let store = connect().await;
        let recorder = recorder.clone();
        let key = key.to_string();
        tasks.push(tokio::spawn(async move {
            let mut cfg = Config::new(format!("agent-{c}"));
            cfg.limit = Some(LIMIT);
            cfg.poll = Duration::from_millis(20);
            cfg.lease = Duration::from_secs(60);
            cfg.max_errors = 50;
            let sem = Semaphore::new(store, &key, cfg);
            let mut got = 0;
            for i in 0..CYCLES {
                let holder = format!("c{c}-{i}");
                let permit = sem
                    .acquire(&holder)
                    .await
                    .unwrap_or_else(|e| panic!("acquire {holder}: {e}"));
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..5))).await;
                assert!(!permit.is_lost(), "{holder} lost its slot while live");
                let end = Instant::now();
                recorder.record(c, start, end);
                sem.release(&holder)
                    .await
                    .unwrap_or_else(|e| panic!("release {holder}: {e}"));
                got += 1;
            }
            sem.shutdown().await;
            got
        }));
    }
    let mut per_contender = Vec::new();
    for t in tasks {
        per_contender.push(t.await.expect("contender panicked"));
    }
    let intervals = recorder.intervals();
    Report {
        max_overlap: max_overlap(&intervals),
        total: intervals.len(),
        per_contender,
    }
}

fn assert_invariants(r: &Report) {
    assert!(
        r.max_overlap <= LIMIT as usize,
        "limit {LIMIT} exceeded: {} at once",
        r.max_overlap
    );
    assert!(
        r.per_contender.iter().all(|&n| n == CYCLES),
        "a contender starved: {:?}",
        r.per_contender
    );
    assert_eq!(r.total, CONTENDERS * CYCLES);
}

async fn assert_empty(store: &DynStore, key: &str) {
    let (ledger, _) = read_ledger(store, key)
        .await
        .unwrap()
        .expect("ledger exists");
    assert!(
        ledger.holders.is_empty(),
        "holders left: {:?}",
        ledger.holders
    );
    assert!(ledger.agents.is_empty(), "agents left: {:?}", ledger.agents);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_on_memory_store() {
    let store: DynStore = Arc::new(MemoryStore::new());
    let shared = store.clone();
    let r = stress(
        move || {
            let s = shared.clone();
            async move { s }
        },
        "mem.json",
    )
    .await;
    assert_invariants(&r);
    assert_empty(&store, "mem.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_on_seaweedfs() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let opts = server.s3_options();
    let b = bucket.clone();
    let r = stress(
        move || {
            let (b, o) = (b.clone(), opts.clone());
            async move { Arc::new(S3Store::connect(&b, &o).await) as DynStore }
        },
        "stress.json",
    )
    .await;
    eprintln!(
        "seaweedfs: {} holds, max overlap {}",
        r.total, r.max_overlap
    );
    assert_invariants(&r);
    assert_empty(&server.dyn_store(&bucket).await, "stress.json").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn stress_on_seaweedfs_with_faults() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let proxy = FaultProxy::start(
        &server.endpoint,
        Faults {
            drop_after_apply: 0.05,
            error_500_before: 0.03,
            error_503_after: 0.04,
            conflict_409: 0.04,
            delay: 0.05,
            delay_by: Duration::from_millis(150),
        },
    )
    .await;
    let opts = S3Options {
        endpoint: Some(proxy.endpoint.clone()),
        ..server.s3_options()
    };
    let b = bucket.clone();
    let r = stress(
        move || {
            let (b, o) = (b.clone(), opts.clone());
            async move { Arc::new(S3Store::connect(&b, &o).await) as DynStore }
        },
        "faults.json",
    )
    .await;
    let c = &proxy.counts;
    eprintln!(
        "faults: {} requests, {} dropped after apply, {} x500, {} x503 after apply, {} x409, {} delayed; max overlap {}",
        c.requests.load(Ordering::Relaxed),
        c.dropped_after_apply.load(Ordering::Relaxed),
        c.error_500.load(Ordering::Relaxed),
        c.error_503_after.load(Ordering::Relaxed),
        c.conflict_409.load(Ordering::Relaxed),
        c.delayed.load(Ordering::Relaxed),
        r.max_overlap
    );
    assert!(
        c.dropped_after_apply.load(Ordering::Relaxed) > 0,
        "no write was lost after landing"
    );
    assert!(
        c.error_503_after.load(Ordering::Relaxed) > 0,
        "no 503 after a landed write"
    );
    assert_invariants(&r);
    assert_empty(&server.dyn_store(&bucket).await, "faults.json").await;
}

/// The reference design under the same stress and the same checker.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn naive_counter_exceeds_the_limit() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let client = || server.sdk_client(Duration::from_secs(10));
    NaiveCounter::new(client(), &bucket, "naive.json", LIMIT as i64)
        .reset()
        .await
        .unwrap();
    let recorder = Arc::new(IntervalLog::default());
    let mut tasks = Vec::new();
    for c in 0..CONTENDERS {
        let naive = NaiveCounter::new(client(), &bucket, "naive.json", LIMIT as i64);
        let recorder = recorder.clone();
        tasks.push(tokio::spawn(async move {
            for _ in 0..CYCLES {
                let deadline = Instant::now() + Duration::from_secs(20);
                while !naive.try_acquire().await.unwrap() {
                    if Instant::now() > deadline {
                        // Slots leaked by lost updates: the naive design never gets them back.
                        return;
                    }
                    tokio::time::sleep(Duration::from_millis(rand::random_range(1..20))).await;
                }
                let start = Instant::now();
                tokio::time::sleep(Duration::from_millis(rand::random_range(0..5))).await;
                recorder.record(c, start, Instant::now());
                naive.release().await.unwrap();
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let overlap = max_overlap(&recorder.intervals());
    eprintln!("naive: max overlap {overlap} with limit {LIMIT}");
    assert!(
        overlap > LIMIT as usize,
        "the checker should catch the naive design exceeding the limit (saw {overlap})"
    );
}
