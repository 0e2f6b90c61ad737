//! Admissions per second and S3 requests per admission against a real
//! SeaweedFS, for jobgate with group commit, jobgate without it, and the
//! naive counter. Run with `make bench` (or `cargo bench --bench ledger`);
//! `JOBGATE_BENCH_SECS` sets the measuring time per cell (default 3),
//! `JOBGATE_BENCH_TIMEOUT_MS` the S3 attempt timeout (default 1000),
//! `JOBGATE_BENCH_ONLY=C:L` runs only C contenders at limit L.
//!
//! Each contender loops: acquire a fresh holder, hold it for 2 ms, release. Latency
//! is from asking to being granted. Max concurrency comes from the same
//! checker the tests use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use jobgate::store::{CountingStore, DynStore, RequestCounts, S3Store};
use jobgate::{Config, Semaphore};
use jobgate_testkit::SeaweedFs;
use jobgate_testkit::history::{IntervalLog, max_overlap};
use jobgate_testkit::naive::NaiveCounter;

/// How long each contender holds its slot.
const HOLD: Duration = Duration::from_millis(2);

#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    GroupCommit,
    Unbatched,
    Naive,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::GroupCommit => "jobgate, group commit",
            Mode::Unbatched => "jobgate, no group commit",
            Mode::Naive => "naive counter (unsafe)",
        }
    }
}

struct Cell {
    mode: Mode,
    contenders: usize,
    limit: u32,
    acquisitions: u64,
    secs: f64,
    p50: Duration,
    p99: Duration,
    gets: u64,
    puts: u64,
    failed_puts: u64,
    max_concurrency: usize,
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

async fn measure(
    server: &SeaweedFs,
    bucket: &str,
    mode: Mode,
    contenders: usize,
    limit: u32,
    secs: f64,
) -> Cell {
    let key = format!(
        "bench-{:?}-{contenders}-{limit}-{:08x}.json",
        mode,
        rand::random::<u32>()
    );
    let counts = Arc::new(RequestCounts::default());
    let recorder = Arc::new(IntervalLog::default());
    let done = Arc::new(AtomicU64::new(0));
    let latencies = Arc::new(std::sync::Mutex::new(Vec::new()));
    let mut opts = server.s3_options();
    // SeaweedFS sometimes holds a conditional PUT on a contended key for
    // seconds; a short attempt timeout gives every mode its best case.
    let timeout_ms = std::env::var("JOBGATE_BENCH_TIMEOUT_MS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1000);
    let timeout = Duration::from_millis(timeout_ms);
    opts.request_timeout = Some(timeout);
    let connect = |counts: Arc<RequestCounts>| {
        let opts = opts.clone();
        let bucket = bucket.to_string();
        async move {
            Arc::new(CountingStore::new(
                S3Store::connect(&bucket, &opts).await,
                counts,
            )) as DynStore
        }
    };
    let config = |agent: String, group: bool| {
        let mut c = Config::new(agent);
        c.limit = Some(limit);
        c.poll = Duration::from_millis(10);
        c.group_commit = group;
        c.max_errors = 1000;
        c
    };
    if mode == Mode::Naive {
        NaiveCounter::new(server.sdk_client(timeout), bucket, &key, limit as i64)
            .reset()
            .await
            .ok();
    }
    let shared = match mode {
        Mode::GroupCommit => Some(Arc::new(Semaphore::new(
            connect(counts.clone()).await,
            &key,
            config("bench".into(), true),
        ))),
        _ => None,
    };
    // Every client is connected before the clock starts.
    let mut resources = Vec::new();
    for c in 0..contenders {
        let own = match mode {
            Mode::Unbatched => Some(Semaphore::new(
                connect(counts.clone()).await,
                &key,
                config(format!("bench-{c}"), false),
            )),
            _ => None,
        };
        let naive = match mode {
            Mode::Naive => Some(
                NaiveCounter::new(server.sdk_client(timeout), bucket, &key, limit as i64)
                    .with_counts(counts.clone()),
            ),
            _ => None,
        };
        resources.push((own, naive));
    }
    let start = Instant::now();
    let deadline = start + Duration::from_secs_f64(secs);
    let mut tasks = Vec::new();
    for (c, (own, naive)) in resources.into_iter().enumerate() {
        let (recorder, done, latencies) = (recorder.clone(), done.clone(), latencies.clone());
        let shared = shared.clone();
        tasks.push(tokio::spawn(async move {
            let mut lat = Vec::new();
            let mut i = 0u64;
            while Instant::now() < deadline {
                let holder = format!("c{c}-{i}");
                i += 1;
                let asked = Instant::now();
                let granted = if let Some(n) = &naive {
                    let mut ok = false;
                    while Instant::now() < deadline {
                        if n.try_acquire().await.unwrap_or(false) {
                            ok = true;
                            break;
                        }
                        tokio::time::sleep(Duration::from_millis(10)).await;
                    }
                    ok
                } else {
                    let sem = shared.as_deref().or(own.as_ref()).expect("a semaphore");
                    let remaining = deadline.saturating_duration_since(Instant::now());
                    matches!(
                        tokio::time::timeout(remaining, sem.acquire(&holder)).await,
                        Ok(Ok(_))
                    )
                };
                if !granted {
                    break;
                }
                let at = Instant::now();
                lat.push(at - asked);
                tokio::time::sleep(HOLD).await;
                recorder.record(c, at, Instant::now());
                done.fetch_add(1, Ordering::Relaxed);
                if let Some(n) = &naive {
                    let _ = n.release().await;
                } else {
                    let sem = shared.as_deref().or(own.as_ref()).expect("a semaphore");
                    let _ = sem.release(&holder).await;
                }
            }
            if let Some(own) = own {
                own.shutdown().await;
            }
            latencies.lock().unwrap().extend(lat);
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    let elapsed = start.elapsed().as_secs_f64();
    if let Some(sem) = shared.and_then(|s| Arc::try_unwrap(s).ok()) {
        sem.shutdown().await;
    }
    let mut lat = latencies.lock().unwrap().clone();
    lat.sort();
    Cell {
        mode,
        contenders,
        limit,
        acquisitions: done.load(Ordering::Relaxed),
        secs: elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        gets: counts.gets(),
        puts: counts.puts(),
        failed_puts: counts.failed_puts(),
        max_concurrency: max_overlap(&recorder.intervals()),
    }
}

fn ms(d: Duration) -> String {
    format!("{:.1}", d.as_secs_f64() * 1000.0)
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
    // e.g. JOBGATE_BENCH_ONLY=16:64 runs only 16 contenders at limit 64.
    let only = std::env::var("JOBGATE_BENCH_ONLY").ok();
    let secs: f64 = std::env::var("JOBGATE_BENCH_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(3.0);
    let server = match SeaweedFs::start().await {
        Ok(s) => s,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(1);
        }
    };
    let bucket = "bench";
    server.create_bucket(bucket).await.expect("bucket");
    println!(
        "| mode | contenders | limit | acquisitions/s | p50 ms | p99 ms | GET/acq | PUT/acq | failed PUTs | max concurrent |"
    );
    println!("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|");
    let mut rates = std::collections::HashMap::new();
    for limit in [1u32, 8, 64] {
        for contenders in [1usize, 4, 16, 64] {
            if only
                .as_ref()
                .is_some_and(|o| o != &format!("{contenders}:{limit}"))
            {
                continue;
            }
            for mode in [Mode::GroupCommit, Mode::Unbatched, Mode::Naive] {
                let c = measure(&server, bucket, mode, contenders, limit, secs).await;
                let per = |n: u64| {
                    if c.acquisitions == 0 {
                        f64::NAN
                    } else {
                        n as f64 / c.acquisitions as f64
                    }
                };
                let rate = c.acquisitions as f64 / c.secs;
                rates.insert((mode.name(), contenders, limit), rate);
                let flag = if c.max_concurrency > c.limit as usize {
                    " **over limit**"
                } else {
                    ""
                };
                println!(
                    "| {} | {} | {} | {:.0} | {} | {} | {:.2} | {:.2} | {:.0}% | {}{} |",
                    c.mode.name(),
                    c.contenders,
                    c.limit,
                    rate,
                    ms(c.p50),
                    ms(c.p99),
                    per(c.gets),
                    per(c.puts),
                    if c.puts == 0 {
                        0.0
                    } else {
                        100.0 * c.failed_puts as f64 / c.puts as f64
                    },
                    c.max_concurrency,
                    flag,
                );
            }
        }
    }
    if only.is_some() {
        return;
    }
    println!();
    println!("group commit / no group commit, acquisitions per second at 64 contenders:");
    for limit in [1u32, 8, 64] {
        let g = rates[&(Mode::GroupCommit.name(), 64, limit)];
        let u = rates[&(Mode::Unbatched.name(), 64, limit)];
        println!("- limit {limit}: {:.1}x ({g:.0} vs {u:.0})", g / u);
    }
}
