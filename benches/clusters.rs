//! `make bench-clusters`: N clusters sharing one group (one ledger object)
//! through S3 at AWS latency. See docs/benchmarks.md ("N clusters on one
//! ledger, at AWS S3 latency") for what it measures and how to read it.
//!
//! Each cluster is an agent: one `jobgate::Semaphore` with exactly the
//! settings the controller gives a group's client (src/operator/ledgers.rs),
//! all on one ledger key, reaching SeaweedFS through the fault proxy at a
//! latency profile (`aws-s3-standard`; one run at `aws-cross-region`). No
//! Kubernetes API is in the loop: each cluster's deep queue of Jobs is
//! modelled by enough waiters (a fresh holder each, held 0.3–1.5 s, then
//! released) that every cluster alone could fill the limit. Three
//! diagnostic runs (2, 10 and 50 clusters) turn the controller's recorded
//! waits off, to show what deferring free slots to the cluster holding
//! fewer costs, and where the object itself stops scaling without it.
//!
//! Knobs: `JOBGATE_BENCH_SECS` (measuring window per run, default 40),
//! `JOBGATE_BENCH_WARMUP_SECS` (before it, default 8),
//! `JOBGATE_BENCH_IDLE_SECS` (idle measurement after the queue drains,
//! default 60, one `--poll-idle`), `JOBGATE_BENCH_WAITERS` (per cluster,
//! default limit + 10), `JOBGATE_BENCH_CROSS_N` (clusters in the
//! cross-region run, default 10), `JOBGATE_BENCH_ONLY` (comma-separated
//! cluster counts, `cross` for the cross-region run, `2-nowait`,
//! `10-nowait` and `50-nowait` for the diagnostic runs).

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use jobgate::operator::crd::ConcurrencyGroupSpec;
use jobgate::store::{
    Condition, CountingStore, DynStore, ETag, Fetched, RequestCounts, S3Store, Store, StoreError,
};
use jobgate::{Config, Semaphore};
use jobgate_testkit::bench::{Seen, cost_per_million_jobs, freed_to_admitted, quantile};
use jobgate_testkit::faultproxy::{FaultProxy, Faults, Op, Profile};
use jobgate_testkit::history::{IntervalLog, max_overlap};
use jobgate_testkit::{SeaweedFs, bucket, seaweed};

/// The group's limit, for all clusters together.
const LIMIT: u32 = 100;
/// How long each Job's work lasts (ms), as in benches/operator.rs.
const HOLD_MS: (u64, u64) = (300, 1500);
/// The controller's `--poll-waiting` default: how often a cluster with
/// waiting Jobs reads the ledger for slots freed elsewhere.
const POLL_WAITING: Duration = Duration::from_secs(2);
/// The controller's `--poll-idle` default: how often an idle group's
/// ledger is read (`reconcile::gather::known_ledger`).
const POLL_IDLE: Duration = Duration::from_secs(60);
/// S3 Standard list prices (us-east-1), dollars per request.
const PUT_PRICE: f64 = 0.005 / 1000.0;
const GET_PRICE: f64 = 0.0004 / 1000.0;
const SECS_PER_MONTH: f64 = 30.0 * 24.0 * 3600.0;

fn env<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// A store that counts the conditional writes that lost a race (412, 409,
/// or 404 on If-Match): `CountingStore` counts every failed PUT, including
/// the profile's 503s.
#[derive(Debug)]
struct Races<S> {
    inner: S,
    lost: Arc<AtomicU64>,
}

#[async_trait]
impl<S: Store> Store for Races<S> {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        self.inner.get(key, if_none_match).await
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        let result = self.inner.put(key, body, condition).await;
        if matches!(result, Err(StoreError::Conflict(_) | StoreError::Missing)) {
            self.lost.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        self.inner.delete(key, etag).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// The settings the controller gives a group's ledger client
/// (`operator::ledgers::Ledgers::get`), for a group with the CRD's
/// defaults (leaseSeconds 60, maxGracePeriodSeconds 30) and the command
/// line's (`--poll-waiting 2s`). `record_wait` is the controller's (true)
/// but in the diagnostic runs (see [`Run::record_wait`]).
fn controller_config(cluster: usize, record_wait: bool) -> Config {
    let spec: ConcurrencyGroupSpec = serde_json::from_value(serde_json::json!({
        "limit": LIMIT,
        "ledger": {"bucket": "bench"},
    }))
    .expect("a group spec with the CRD's defaults");
    let name = format!("cluster-{cluster}");
    let mut cfg = Config::new(format!("{name}/bench/shared"));
    cfg.description = Some(format!(
        "jobgate controller, cluster {name}, group bench/shared"
    ));
    cfg.lease = Duration::from_secs(u64::from(spec.lease_seconds));
    cfg.fence_after = Some(
        spec.fence_after(None)
            .expect("the defaults' timing is valid"),
    );
    cfg.limit = Some(spec.limit);
    cfg.poll = POLL_WAITING;
    cfg.release_orphans = false;
    cfg.record_wait = record_wait;
    cfg.instance = Some(format!("cluster uid-of-{name}"));
    cfg
}

/// Request counters at one instant.
#[derive(Debug, Clone, Copy, Default)]
struct Snap {
    gets: u64,
    puts: u64,
    failed_puts: u64,
    lost: u64,
}

impl Snap {
    fn of(counts: &RequestCounts, lost: &AtomicU64) -> Snap {
        Snap {
            gets: counts.gets(),
            puts: counts.puts(),
            failed_puts: counts.failed_puts(),
            lost: lost.load(Ordering::Relaxed),
        }
    }

    fn since(self, before: Snap) -> Snap {
        Snap {
            gets: self.gets - before.gets,
            puts: self.puts - before.puts,
            failed_puts: self.failed_puts - before.failed_puts,
            lost: self.lost - before.lost,
        }
    }
}

/// What happened to the group's Jobs, on one clock (time since the run's
/// start).
#[derive(Default)]
struct Log {
    events: Mutex<Vec<(String, Duration, Seen)>>,
    admitted_by: Mutex<BTreeMap<usize, u64>>,
    errors: AtomicU64,
    last_error: Mutex<Option<String>>,
}

impl Log {
    fn seen(&self, at: Duration, what: Seen) {
        let mut v = self.events.lock().unwrap_or_else(|p| p.into_inner());
        v.push(("group".to_string(), at, what));
    }

    fn error(&self, e: impl std::fmt::Display) {
        self.errors.fetch_add(1, Ordering::Relaxed);
        *self.last_error.lock().unwrap_or_else(|p| p.into_inner()) = Some(e.to_string());
    }
}

/// One waiter: a Job of `cluster`'s queue after another, until `stop`.
/// A request still waiting at `stop` is withdrawn (its future dropped);
/// a slot held then is released when its work ends.
async fn waiter(
    sem: Arc<Semaphore>,
    cluster: usize,
    w: usize,
    t0: Instant,
    stop: Instant,
    log: Arc<Log>,
    intervals: Arc<IntervalLog>,
) {
    let mut i = 0u64;
    while Instant::now() < stop {
        let holder = format!("c{cluster}-w{w}-{i}");
        i += 1;
        match tokio::time::timeout_at(stop.into(), sem.acquire(&holder)).await {
            Ok(Ok(_permit)) => {}
            Ok(Err(e)) => {
                log.error(e);
                tokio::time::sleep(Duration::from_millis(100)).await;
                continue;
            }
            Err(_) => break,
        }
        let granted = Instant::now();
        log.seen(granted - t0, Seen::Admitted);
        *log.admitted_by
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(cluster)
            .or_default() += 1;
        let hold = HOLD_MS.0 + rand::random::<u64>() % (HOLD_MS.1 - HOLD_MS.0 + 1);
        tokio::time::sleep(Duration::from_millis(hold)).await;
        let freed = Instant::now();
        intervals.record(cluster, granted, freed);
        log.seen(freed - t0, Seen::Finished);
        if let Err(e) = sem.release(&holder).await {
            log.error(e);
        }
    }
}

struct Run {
    profile: Profile,
    clusters: usize,
    /// The controller's setting. Off only in the diagnostic runs, to show
    /// what recording waits (and so deferring free slots to the cluster
    /// that holds fewer) costs: without it nothing is fair between
    /// clusters.
    record_wait: bool,
}

impl Run {
    fn label(&self) -> String {
        if self.record_wait {
            self.profile.name.to_string()
        } else {
            format!("{}, waits not recorded (diagnostic)", self.profile.name)
        }
    }
}

/// What one run measured.
struct Figures {
    profile: String,
    record_wait: bool,
    clusters: usize,
    waiters: usize,
    admissions: u64,
    secs: f64,
    freed_to_admitted: Vec<Duration>,
    window: Snap,
    peak: usize,
    put_p50: Duration,
    put_p99: Duration,
    get_p50: Duration,
    get_p99: Duration,
    slow_down: u64,
    conflict_409: u64,
    errors: u64,
    last_error: Option<String>,
    spread: (u64, u64),
}

/// What the idle phase measured (after the run's queue drained).
struct Idle {
    clusters: usize,
    secs: f64,
    counts: Snap,
}

impl Idle {
    fn per_cluster_per_10s(&self) -> (f64, f64) {
        let per = |n: u64| n as f64 / self.clusters as f64 / self.secs * 10.0;
        (per(self.counts.gets), per(self.counts.puts))
    }

    fn dollars_per_month_per_cluster(&self) -> f64 {
        let (gets, puts) = self.per_cluster_per_10s();
        (gets * GET_PRICE + puts * PUT_PRICE) / 10.0 * SECS_PER_MONTH
    }
}

async fn run(
    server: &SeaweedFs,
    bucket: &str,
    r: &Run,
    waiters: usize,
    warmup: Duration,
    window: Duration,
    idle: Duration,
) -> (Figures, tokio::task::JoinHandle<Idle>) {
    let proxy =
        FaultProxy::start_with_profile(&server.endpoint, Faults::default(), r.profile).await;
    let opts = jobgate::store::S3Options {
        endpoint: Some(proxy.endpoint.clone()),
        ..server.s3_options()
    };
    let key = format!(
        "jobgate/bench/{}-{}-{:08x}.json",
        r.profile.name,
        r.clusters,
        rand::random::<u32>()
    );
    let counts = Arc::new(RequestCounts::default());
    let lost = Arc::new(AtomicU64::new(0));
    let mut sems = Vec::new();
    for c in 0..r.clusters {
        let store: DynStore = Arc::new(CountingStore::new(
            Races {
                inner: S3Store::connect(bucket, &opts).await,
                lost: lost.clone(),
            },
            counts.clone(),
        ));
        sems.push(Arc::new(Semaphore::new(
            store,
            &key,
            controller_config(c, r.record_wait),
        )));
    }
    let log = Arc::new(Log::default());
    let intervals = Arc::new(IntervalLog::default());
    let t0 = Instant::now();
    let (from, stop) = (t0 + warmup, t0 + warmup + window);
    let mut tasks = Vec::new();
    for (c, sem) in sems.iter().enumerate() {
        for w in 0..waiters {
            tasks.push(tokio::spawn(waiter(
                sem.clone(),
                c,
                w,
                t0,
                stop,
                log.clone(),
                intervals.clone(),
            )));
        }
    }
    tokio::time::sleep_until(from.into()).await;
    let before = Snap::of(&counts, &lost);
    tokio::time::sleep_until(stop.into()).await;
    let after = Snap::of(&counts, &lost);
    for t in tasks {
        let _ = t.await;
    }
    // A request withdrawn at `stop` while its grant was being written
    // leaves a slot held for nobody: the controller keeps such slots
    // (release_orphans is off) until its next pass, which releases the
    // holders no admitted Job stands behind. That pass, for every cluster.
    for (c, sem) in sems.iter().enumerate() {
        let agent = controller_config(c, r.record_wait).agent;
        match sem.snapshot().await {
            Ok(ledger) => {
                for holder in ledger.holders_of(&agent) {
                    if let Err(e) = sem.release(holder).await {
                        log.error(e);
                    }
                }
            }
            Err(e) => log.error(e),
        }
    }

    // Freed→admitted: each admission paired with the oldest unpaired
    // completion of the group (every cluster's), as in benches/operator.rs.
    // Demand always exceeds the limit until `stop`, so every completion
    // counts. Pairing is in time order, so the pairs of the admissions
    // before the window are a prefix of all pairs.
    let events = log.events.lock().unwrap_or_else(|p| p.into_inner()).clone();
    let upto = |t: Duration| -> Vec<(String, Duration, Seen)> {
        events.iter().filter(|e| e.1 < t).cloned().collect()
    };
    let jobs = BTreeMap::from([("group".to_string(), usize::MAX)]);
    let warm = freed_to_admitted(&upto(from - t0), &jobs).len();
    let all = freed_to_admitted(&upto(stop - t0), &jobs);
    let in_window = all[warm.min(all.len())..].to_vec();
    let admissions = events
        .iter()
        .filter(|(_, t, s)| *s == Seen::Admitted && *t >= from - t0 && *t < stop - t0)
        .count() as u64;
    let by_cluster = log
        .admitted_by
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    let spread = (
        by_cluster.values().copied().min().unwrap_or(0),
        by_cluster.values().copied().max().unwrap_or(0),
    );
    let lat = |op: Op| {
        let v = proxy.latencies.observed(op);
        (quantile(&v, 0.5), quantile(&v, 0.99))
    };
    let ((put_p50, put_p99), (get_p50, get_p99)) = (lat(Op::Put), lat(Op::Get));
    let figures = Figures {
        profile: r.label(),
        record_wait: r.record_wait,
        clusters: r.clusters,
        waiters,
        admissions,
        secs: window.as_secs_f64(),
        freed_to_admitted: in_window,
        window: after.since(before),
        peak: max_overlap(&intervals.intervals()),
        put_p50,
        put_p99,
        get_p50,
        get_p99,
        slow_down: proxy.counts.slow_down.load(Ordering::Relaxed),
        conflict_409: proxy.counts.conflict_in_flight.load(Ordering::Relaxed),
        errors: log.errors.load(Ordering::Relaxed),
        last_error: log
            .last_error
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone(),
        spread,
    };

    // Idle: the queue has drained (every request withdrawn, every slot
    // released). What each cluster's controller still does is one ledger
    // read per --poll-idle per group; in the steady state of a long idle
    // spell the clusters' reads fall at unrelated times. Measured in the
    // background over one --poll-idle while the next run goes on (it costs
    // that run one GET per cluster per minute).
    let clusters = r.clusters;
    let idle_task = tokio::spawn(async move {
        // The withdrawals of the waits and the last releases land first.
        tokio::time::sleep(Duration::from_secs(3)).await;
        let start = Instant::now();
        let before = Snap::of(&counts, &lost);
        let mut pollers = Vec::new();
        for sem in &sems {
            let sem = sem.clone();
            let phase = POLL_IDLE.mul_f64(rand::random::<f64>());
            pollers.push(tokio::spawn(async move {
                tokio::time::sleep(phase).await;
                loop {
                    let _ = sem.snapshot().await;
                    tokio::time::sleep(POLL_IDLE).await;
                }
            }));
        }
        tokio::time::sleep(idle).await;
        let counts_idle = Snap::of(&counts, &lost).since(before);
        let secs = start.elapsed().as_secs_f64();
        for p in pollers {
            p.abort();
        }
        for sem in sems {
            if let Ok(sem) = Arc::try_unwrap(sem) {
                sem.shutdown().await;
            }
        }
        drop(proxy);
        Idle {
            clusters,
            secs,
            counts: counts_idle,
        }
    });
    (figures, idle_task)
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    if std::env::args().any(|a| a == "--list" || a == "--test") {
        return; // `cargo test --all-targets` probes benches; nothing to run.
    }
    if std::env::var_os("RUST_LOG").is_some() {
        tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_writer(std::io::stderr)
            .init();
    }
    let began = Instant::now();
    let window = Duration::from_secs_f64(env("JOBGATE_BENCH_SECS", 40.0));
    let warmup = Duration::from_secs_f64(env("JOBGATE_BENCH_WARMUP_SECS", 8.0));
    let idle = Duration::from_secs_f64(env("JOBGATE_BENCH_IDLE_SECS", POLL_IDLE.as_secs_f64()));
    let waiters: usize = env("JOBGATE_BENCH_WAITERS", LIMIT as usize + 10);
    let cross_n: usize = env("JOBGATE_BENCH_CROSS_N", 10);
    let only: Option<Vec<String>> = std::env::var("JOBGATE_BENCH_ONLY")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(|p| p.trim().to_string()).collect());
    let wanted = |name: &str| only.as_ref().is_none_or(|o| o.iter().any(|p| p == name));
    let mut runs: Vec<Run> = [1usize, 2, 5, 10, 25, 50]
        .into_iter()
        .filter(|n| wanted(&n.to_string()))
        .map(|clusters| Run {
            profile: Profile::AWS_S3_STANDARD,
            clusters,
            record_wait: true,
        })
        .collect();
    if wanted("cross") {
        runs.push(Run {
            profile: Profile::AWS_CROSS_REGION,
            clusters: cross_n,
            record_wait: true,
        });
    }
    for clusters in [2usize, 10, 50] {
        if wanted(&format!("{clusters}-nowait")) {
            runs.push(Run {
                profile: Profile::AWS_S3_STANDARD,
                clusters,
                record_wait: false,
            });
        }
    }

    let server = seaweed().await;
    let bucket = bucket(&server).await;
    let ceiling = f64::from(LIMIT) / ((HOLD_MS.0 + HOLD_MS.1) as f64 / 2.0 / 1000.0);
    let mut results = Vec::new();
    for r in &runs {
        eprintln!(
            "running {} clusters at {} ({} waiters each, {:.0} s warm-up, {:.0} s window)",
            r.clusters,
            r.label(),
            waiters,
            warmup.as_secs_f64(),
            window.as_secs_f64()
        );
        let (f, idle_task) = run(&server, &bucket, r, waiters, warmup, window, idle).await;
        let w = &f.window;
        eprintln!(
            "  {} admissions in {:.0} s; {} GETs, {} PUTs ({} failed, {} lost races); proxy: {} x503, {} x409; PUT p50/p99 {}/{} ms, GET {}/{} ms; admissions per cluster (whole run) {}..{}; {} errors{}",
            f.admissions,
            f.secs,
            w.gets,
            w.puts,
            w.failed_puts,
            w.lost,
            f.slow_down,
            f.conflict_409,
            ms(f.put_p50),
            ms(f.put_p99),
            ms(f.get_p50),
            ms(f.get_p99),
            f.spread.0,
            f.spread.1,
            f.errors,
            f.last_error
                .as_ref()
                .map(|e| format!(" (last: {e})"))
                .unwrap_or_default(),
        );
        results.push((f, idle_task));
    }
    let mut rows = Vec::new();
    for (f, idle_task) in results {
        let idle = idle_task.await.expect("the idle measurement");
        eprintln!(
            "  idle, {} clusters at {}: {} GETs, {} PUTs in {:.0} s",
            f.clusters, f.profile, idle.counts.gets, idle.counts.puts, idle.secs
        );
        rows.push((f, idle));
    }

    println!(
        "Profile as measured at the proxy (arrival to answer, whole runs), against the targets PUT p50 60 / p99 250 ms, GET p50 20 / p99 100 ms (+140 ms cross-region):"
    );
    println!();
    println!("| profile | clusters | PUT p50 ms | PUT p99 ms | GET p50 ms | GET p99 ms |");
    println!("|---|---:|---:|---:|---:|---:|");
    for (f, _) in &rows {
        println!(
            "| {} | {} | {} | {} | {} | {} |",
            f.profile,
            f.clusters,
            ms(f.put_p50),
            ms(f.put_p99),
            ms(f.get_p50),
            ms(f.get_p99)
        );
    }
    println!();
    println!(
        "Limit {LIMIT}, work 0.3–1.5 s per Job, ceiling {ceiling:.0} admissions/s (limit / mean hold), {} waiters per cluster, {:.0} s window:",
        rows.first().map_or(0, |(f, _)| f.waiters),
        window.as_secs_f64()
    );
    println!();
    println!(
        "| profile | clusters | admissions/s | of ceiling | freed→admitted p50 ms | p99 ms | writes/s | Jobs per write | lost races per Job | GET per Job | PUT per Job | $ per M Jobs | idle GET+PUT per 10 s per cluster | idle $ per month per cluster | peak holders |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    for (f, idle) in &rows {
        let w = &f.window;
        let jobs = f.admissions.max(1) as f64;
        let per = |n: u64| n as f64 / jobs;
        let rate = f.admissions as f64 / f.secs;
        let writes = w.puts - w.failed_puts;
        let (ig, ip) = idle.per_cluster_per_10s();
        println!(
            "| {} | {} | {:.1} | {:.0}% | {} | {} | {:.1} | {:.1} | {:.2} | {:.2} | {:.2} | {:.2} | {:.2} | {:.4} | {}{} |",
            f.profile,
            f.clusters,
            rate,
            100.0 * rate / ceiling,
            ms(quantile(&f.freed_to_admitted, 0.5)),
            ms(quantile(&f.freed_to_admitted, 0.99)),
            writes as f64 / f.secs,
            f.admissions as f64 / (writes.max(1)) as f64,
            per(w.lost),
            per(w.gets),
            per(w.puts),
            cost_per_million_jobs(per(w.gets), per(w.puts)),
            ig + ip,
            idle.dollars_per_month_per_cluster(),
            f.peak,
            if f.peak > LIMIT as usize {
                " **over limit**"
            } else {
                ""
            },
        );
    }
    println!();
    let find = |n: usize| {
        rows.iter().find(|(f, _)| {
            f.record_wait && f.profile == Profile::AWS_S3_STANDARD.name && f.clusters == n
        })
    };
    println!("Targets:");
    if let Some((f, _)) = find(1) {
        let share = f.admissions as f64 / f.secs / ceiling;
        println!(
            "- one cluster, limit 100, >= 90% of the ceiling: {:.0}% ({})",
            100.0 * share,
            if share >= 0.9 { "met" } else { "missed" }
        );
    }
    if let Some((f, _)) = find(10) {
        let rate = f.admissions as f64 / f.secs;
        let p50 = quantile(&f.freed_to_admitted, 0.5);
        println!(
            "- 10 clusters, >= 100 admissions/s and freed→admitted p50 < 1 s: {rate:.1}/s, {} ms ({})",
            ms(p50),
            if rate >= 100.0 && p50 < Duration::from_secs(1) {
                "met"
            } else {
                "missed"
            }
        );
    }
    if let Some((f, _)) = find(2) {
        let jobs = f.admissions.max(1) as f64;
        let cost = cost_per_million_jobs(f.window.gets as f64 / jobs, f.window.puts as f64 / jobs);
        println!(
            "- two clusters, <= $1 per million Jobs: ${cost:.2} ({})",
            if cost <= 1.0 { "met" } else { "missed" }
        );
    }
    // Where one ledger stops scaling: the first cluster count whose rate
    // falls below 90% of the one-cluster rate, with and without recorded
    // waits.
    let one = find(1).map(|(f, _)| f.admissions as f64 / f.secs);
    for record_wait in [true, false] {
        let series: Vec<&Figures> = rows
            .iter()
            .map(|(f, _)| f)
            .filter(|f| {
                f.record_wait == record_wait
                    && f.profile.starts_with(Profile::AWS_S3_STANDARD.name)
                    && f.clusters > 1
            })
            .collect();
        if let (Some(one), false) = (one, series.is_empty()) {
            let stops = series
                .iter()
                .find(|f| f.admissions as f64 / f.secs < 0.9 * one)
                .map_or("not within the cluster counts run".to_string(), |f| {
                    format!("{} clusters", f.clusters)
                });
            println!(
                "- one ledger stops scaling (below 90% of one cluster's {one:.1}/s), {}: {stops}",
                if record_wait {
                    "the controller's settings"
                } else {
                    "waits not recorded"
                }
            );
        }
    }
    eprintln!("took {:.0} s", began.elapsed().as_secs_f64());
    for (f, _) in &rows {
        assert!(
            f.peak <= LIMIT as usize,
            "{} clusters at {}: {} holders at once, over the limit of {LIMIT}",
            f.clusters,
            f.profile,
            f.peak
        );
    }
}
