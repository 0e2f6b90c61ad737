//! `make bench-operator`: the controller at depth, on local clusters built
//! from the test bed and SeaweedFS, and Kueue on the same work and the same
//! cluster (`testkit::kueue`). See docs/benchmarks.md for what each
//! scenario measures and how to read it.
//!
//! Every Job has one pod's worth of work held for 0.3–1.5 s. In stand-in
//! mode no Job controller runs: this program completes each Job that way
//! after it is seen running (pure admission: the test bed's own ceiling is
//! far above the limit's). In full mode kube-controller-manager runs the
//! Jobs, kube-scheduler places their pods and kwok runs them for that long.
//!
//! Knobs: `JOBGATE_BENCH_SCALE` (a factor on the number of Jobs, default 1),
//! `JOBGATE_BENCH_ONLY` (a scenario's name, or a comma-separated list),
//! `JOBGATE_BENCH_MAX_SECS` (time allowed per scenario, default 900; a
//! system slower than that is measured on the Jobs it finished).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use jobgate_testkit::bench::{
    Seen, cost_per_million_jobs, freed_to_admitted, metric_sum, quantile, rate,
};
use jobgate_testkit::faultproxy::{FaultProxy, Faults, Profile};
use jobgate_testkit::k8s::{ControlPlane, Pods, RUN_FOR_ANNOTATION};
use jobgate_testkit::kueue::{self, Kueue, KueueTuning};
use jobgate_testkit::operator::{
    AdmissionLog, ControllerProcess, GroupSpec, Sim, apply_group_with, client, is_finished,
    observe, prepare,
};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::workloads;
use jobgate_testkit::{SeaweedFs, bucket, seaweed};
use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

// Beside this file, in a folder named after it, as a module of its own.
#[path = "operator/others.rs"]
mod others;
use others::{create_others, timestamp_others};

const NS: &str = "bench";
/// How long each Job's work lasts (ms): the 0.3–1.5 s.
const HOLD_MS: (u64, u64) = (300, 1500);

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Mode {
    /// No Job controller; this program completes each running Job.
    StandIn,
    /// kube-controller-manager, kube-scheduler and kwok.
    Full,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum System {
    Jobgate,
    /// Kueue v0.17: a ClusterQueue whose `pods` quota is the limit; its
    /// client and controllers as the tuning says.
    Kueue(KueueTuning),
    /// No admission controller and no limit: Jobs created running.
    Unlimited,
}

/// The report's system column, as `Debug` printed it before, but for Kueue
/// also which tuning: its rows of the same work differ in nothing else.
impl std::fmt::Display for System {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            System::Jobgate => write!(f, "Jobgate"),
            System::Kueue(tuning) => write!(f, "Kueue {} ({tuning})", kueue::VERSION),
            System::Unlimited => write!(f, "Unlimited"),
        }
    }
}

struct Scenario {
    name: &'static str,
    system: System,
    mode: Mode,
    clusters: usize,
    groups: usize,
    jobs_per_group: usize,
    /// Per group.
    limit: u32,
    /// More controller flags.
    flags: &'static [&'static str],
    /// Per group, besides its Jobs: JobSets (two replicated Jobs of one
    /// pod each, one workload) and plain Pods, in one queue with the Jobs.
    /// Full mode, jobgate only: JobSet's controller runs beside the
    /// control plane.
    others: Others,
    /// S3 at a distance: the groups' ledgers are reached through the fault
    /// proxy at this latency profile (see benches/clusters.rs). `None`:
    /// SeaweedFS on loopback, as every other scenario.
    profile: Option<Profile>,
}

#[derive(Clone, Copy, PartialEq, Eq, Debug, Default)]
struct Others {
    jobsets: usize,
    pods: usize,
}

impl Others {
    fn any(self) -> bool {
        self.jobsets + self.pods > 0
    }
}

/// What one scenario measured.
struct Figures {
    jobs: usize,
    took: Duration,
    admissions_per_s: f64,
    completions_per_s: f64,
    latency: Vec<Duration>,
    peak: usize,
    peak_counted_on: &'static str,
    /// By group; in stand-in mode (Jobs), or full mode with one group
    /// (pods).
    peak_per_group: BTreeMap<String, usize>,
    s3_gets: f64,
    s3_puts: f64,
    api_requests: f64,
    ledger_writes: f64,
    cpu_seconds: f64,
    peak_rss_mib: f64,
    /// S3 requests per 10 s of one idle group in one cluster.
    idle_s3_per_10s: f64,
}

/// Times of what the watcher saw, since the start.
#[derive(Default)]
struct Timeline {
    admitted: BTreeMap<String, Duration>,
    finished: BTreeMap<String, Duration>,
    /// Suspended when last seen, by Job name: an admission is a change
    /// from suspended to running.
    suspended: BTreeMap<String, bool>,
}

/// Watches the Jobs of `NS` in one cluster and timestamps admissions and
/// completions (names are unique across clusters: they carry the cluster).
fn timestamp(kube: Client, start: Instant, timeline: Arc<Mutex<Timeline>>, selector: &str) {
    let api: Api<Job> = Api::namespaced(kube, NS);
    let config = watcher::Config::default().labels(selector);
    tokio::spawn(async move {
        let mut events = watcher(api, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(job) = events.next().await {
            let Ok(job) = job else { continue };
            let now = start.elapsed();
            let name = job.name_any();
            let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
            let mut t = timeline.lock().unwrap();
            let was = t.suspended.insert(name.clone(), suspended);
            if !suspended && was != Some(false) && !t.admitted.contains_key(&name) {
                t.admitted.insert(name.clone(), now);
            }
            if is_finished(&job) && !t.finished.contains_key(&name) {
                t.finished.insert(name, now);
            }
        }
    });
}

/// One cluster of the scenario.
struct Cluster {
    name: String,
    cp: ControlPlane,
    kube: Client,
}

async fn start_cluster(name: &str, mode: Mode) -> Cluster {
    let cp = match mode {
        Mode::StandIn => ControlPlane::start(),
        Mode::Full => ControlPlane::start_full_with(1, Pods::Held),
    };
    let kube = client(&cp).await;
    prepare(&cp, &kube, NS).await;
    Cluster {
        name: name.to_string(),
        cp,
        kube,
    }
}

/// Creates the Jobs, 16 at a time: suspended and labelled for the system
/// that admits them, or running when none does. Each has one pod, which
/// in full mode kwok runs for the Job's hold time.
async fn create_jobs(kube: &Client, names: Vec<(String, String)>, mode: Mode, system: System) {
    const PARALLEL: usize = 16;
    let api: Api<Job> = Api::namespaced(kube.clone(), NS);
    futures::stream::iter(names)
        .map(|(name, group)| {
            let api = api.clone();
            async move {
                let hold = HOLD_MS.0 + rand::random::<u64>() % (HOLD_MS.1 - HOLD_MS.0 + 1);
                let labels = match system {
                    System::Jobgate => json!({"jobgate.dev/group": group}),
                    System::Kueue(_) => json!({"kueue.x-k8s.io/queue-name": "lq"}),
                    System::Unlimited => json!({}),
                };
                let pod_annotations = match mode {
                    Mode::Full => json!({RUN_FOR_ANNOTATION: format!("{hold}ms")}),
                    Mode::StandIn => json!({}),
                };
                // No resource requests: Kueue's ClusterQueue covers pods only.
                let job: Job = serde_json::from_value(json!({
                    "metadata": {"name": name, "labels": labels},
                    "spec": {
                        "suspend": system != System::Unlimited,
                        "backoffLimit": 0,
                        "template": {
                            "metadata": {"annotations": pod_annotations},
                            "spec": {
                                "restartPolicy": "Never",
                                "terminationGracePeriodSeconds": 0,
                                "containers": [{"name": "work", "image": "busybox", "command": ["sleep", "inf"]}],
                            },
                        },
                    },
                }))
                .map_err(|e| e.to_string())?;
                api.create(&PostParams::default(), &job)
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string())
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await
        .unwrap_or_else(|e| panic!("creating Jobs: {e}"));
}

/// CPU seconds (user + system) and peak RSS in MiB of a process.
fn usage(pid: u32) -> (f64, f64) {
    let Ok(process) = procfs::process::Process::new(pid as i32) else {
        return (0.0, 0.0);
    };
    let hz = procfs::ticks_per_second() as f64;
    let cpu = process
        .stat()
        .map(|s| (s.utime + s.stime) as f64 / hz)
        .unwrap_or(0.0);
    let rss = process
        .status()
        .ok()
        .and_then(|s| s.vmhwm)
        .map_or(0.0, |kib| kib as f64 / 1024.0);
    (cpu, rss)
}

async fn run(sc: &Scenario, scale: f64, max_run: Duration, s3: &SeaweedFs) -> Figures {
    let jobs_per_group = ((sc.jobs_per_group as f64 * scale).round() as usize).max(1);
    let mut clusters = Vec::new();
    for i in 0..sc.clusters {
        clusters.push(start_cluster(&format!("c{i}"), sc.mode).await);
    }
    let bucket = bucket(s3).await;
    // Kept until the run ends: the groups reach S3 through it.
    let proxy = match sc.profile {
        Some(profile) => {
            Some(FaultProxy::start_with_profile(&s3.endpoint, Faults::default(), profile).await)
        }
        None => None,
    };
    let endpoint = proxy
        .as_ref()
        .map_or_else(|| s3.endpoint.clone(), |p| p.endpoint.clone());
    let groups: Vec<String> = (0..sc.groups).map(|g| format!("g{g}")).collect();
    if sc.system == System::Jobgate {
        for c in &clusters {
            for g in &groups {
                apply_group_with(
                    &c.cp,
                    &GroupSpec {
                        name: g,
                        ns: NS,
                        limit: sc.limit,
                        bucket: &bucket,
                        endpoint: &endpoint,
                        key: None,
                        secret: None,
                    },
                    json!({}),
                );
            }
        }
    }
    // Watched from before the first Job is created: without a limit, Jobs
    // run as soon as they are.
    // JobSet's controller, when the work has JobSets: it takes half a
    // minute to start (see `workloads::jobset::start`), before the clock.
    let _jobset_controllers: Vec<workloads::Handle> = if sc.others.jobsets > 0 {
        clusters
            .iter()
            .map(|c| tokio::task::block_in_place(|| workloads::jobset::start(&c.cp)))
            .collect()
    } else {
        Vec::new()
    };
    let start = Instant::now();
    let timeline = Arc::new(Mutex::new(Timeline::default()));
    let checker = AdmissionLog::default();
    // With other kinds, a JobSet's pods count as one workload, a plain
    // Pod as one of its own, a Job's pods as their Job.
    let pods = if sc.others.any() {
        PodLog::keyed_by(|pod| {
            let labels = pod.metadata.labels.as_ref()?;
            labels
                .get(workloads::jobset::UID_LABEL)
                .or_else(|| labels.get("batch.kubernetes.io/controller-uid"))
                .cloned()
                .or_else(|| {
                    labels
                        .contains_key("jobgate.dev/group")
                        .then(|| pod.uid())
                        .flatten()
                })
        })
    } else {
        PodLog::default()
    };
    // Only the work itself: a JobSet's Jobs are not the group's.
    let selector = match sc.system {
        System::Jobgate => "jobgate.dev/group",
        System::Kueue(_) => "kueue.x-k8s.io/queue-name",
        System::Unlimited => "",
    };
    for c in &clusters {
        timestamp(c.kube.clone(), start, timeline.clone(), selector);
        if sc.others.any() {
            timestamp_others(c.kube.clone(), start, timeline.clone());
        }
        match sc.mode {
            Mode::StandIn => observe(
                c.kube.clone(),
                &c.name,
                NS,
                checker.clone(),
                Some(Sim::new(HOLD_MS)),
            ),
            Mode::Full if sc.others.any() => pods.watch_selected(c.kube.clone(), &c.name, NS, ""),
            Mode::Full => pods.watch(c.kube.clone(), &c.name, NS),
        }
    }
    // Jobs are spread over the clusters; each group gets jobs_per_group in
    // all. Created before the controllers start: they wait at depth.
    let mut per_group: BTreeMap<String, usize> = BTreeMap::new();
    let mut owner: BTreeMap<String, String> = BTreeMap::new();
    let created = Instant::now();
    for (ci, c) in clusters.iter().enumerate() {
        let mut names = Vec::new();
        for g in &groups {
            for j in (ci..jobs_per_group).step_by(sc.clusters) {
                let name = format!("{}-{g}-{j:05}", c.name);
                owner.insert(name.clone(), g.clone());
                *per_group.entry(g.clone()).or_default() += 1;
                names.push((name, g.clone()));
            }
        }
        create_jobs(&c.kube, names, sc.mode, sc.system).await;
        if sc.others.any() {
            let mut others = Vec::new();
            for g in &groups {
                let scaled = |n: usize| ((n as f64 * scale).round() as usize).max(1);
                let kinds = std::iter::repeat_n(("set", true), scaled(sc.others.jobsets))
                    .chain(std::iter::repeat_n(("pod", false), scaled(sc.others.pods)));
                for (i, (what, jobset)) in kinds.enumerate() {
                    let name = format!("{}-{g}-{what}-{i:05}", c.name);
                    owner.insert(name.clone(), g.clone());
                    *per_group.entry(g.clone()).or_default() += 1;
                    others.push((name, g.clone(), jobset));
                }
            }
            create_others(&c.kube, others).await;
        }
    }
    let jobs = owner.len();
    eprintln!(
        "  {}: created {jobs} workloads in {:.1?}",
        sc.name,
        created.elapsed()
    );

    let controllers: Vec<ControllerProcess> = match sc.system {
        System::Jobgate => clusters
            .iter()
            .map(|c| {
                let cluster = format!("--cluster-name={}", c.name);
                let ns = format!("--namespace={NS}");
                let mut flags = vec![cluster.as_str(), ns.as_str(), "--leader-elect=false"];
                flags.extend(sc.flags);
                if sc.others.any() {
                    flags.push("--workload-kinds=jobset,pod");
                }
                ControllerProcess::start_plain(&c.cp, s3, &flags, &c.name)
            })
            .collect(),
        System::Kueue(_) | System::Unlimited => Vec::new(),
    };
    // Kueue blocks while it starts (CRDs, readiness, queues): off the
    // runtime's workers, so that the watchers keep up.
    let kueues: Vec<Kueue> = match sc.system {
        System::Kueue(tuning) => clusters
            .iter()
            .map(|c| tokio::task::block_in_place(|| Kueue::start(&c.cp, NS, sc.limit, tuning)))
            .collect(),
        _ => Vec::new(),
    };

    // Until every Job finished, or the time allowed is up (a slow system
    // is measured on the Jobs it got through), or no progress for two
    // minutes.
    let mut last_done = 0;
    let mut last_progress = Instant::now();
    loop {
        let done = timeline.lock().unwrap().finished.len();
        if done >= jobs || start.elapsed() > max_run {
            break;
        }
        if done > last_done {
            last_done = done;
            last_progress = Instant::now();
        }
        if last_progress.elapsed() > Duration::from_secs(120) {
            let admitted = timeline.lock().unwrap().admitted.len();
            let logs: Vec<String> = controllers
                .iter()
                .map(|c| {
                    let text = c.log_text();
                    let tail: Vec<&str> = text.lines().rev().take(30).collect();
                    let tail: Vec<&str> = tail.into_iter().rev().collect();
                    format!("{}\n{}", where_time_went(&c.metrics()), tail.join("\n"))
                })
                .collect();
            panic!(
                "{}: stuck at {done} of {jobs} Jobs finished ({admitted} seen admitted)\n{}",
                sc.name,
                logs.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = start.elapsed();
    let done = timeline.lock().unwrap().finished.len();

    // The controllers' own counts, then their idle S3 rate.
    let mut s3_gets = 0.0;
    let mut s3_puts = 0.0;
    let mut api_requests = 0.0;
    let mut ledger_writes = 0.0;
    let mut cpu_seconds = 0.0;
    let mut peak_rss_mib: f64 = 0.0;
    let s3_count = |text: &str, op: &str| {
        metric_sum(
            text,
            "jobgate_s3_request_duration_seconds_count",
            &[&format!("op=\"{op}\"")],
        )
    };
    // Both systems' API requests as the API server counts them (its audit
    // log of the identity they run as), so they are counted alike; the
    // controller's own count is printed beside it as a check.
    for c in &clusters {
        api_requests += c.cp.counted_requests() as f64;
    }
    let mut own_count = 0.0;
    for c in &controllers {
        let text = c.metrics();
        s3_gets += s3_count(&text, "get");
        s3_puts += s3_count(&text, "put");
        own_count += metric_sum(&text, "jobgate_kube_requests_total", &[]);
        ledger_writes += metric_sum(&text, "jobgate_ledger_writes_total", &[]);
        if let Some(pid) = c.pid() {
            let (cpu, rss) = usage(pid);
            cpu_seconds += cpu;
            peak_rss_mib = peak_rss_mib.max(rss);
        }
    }
    if !controllers.is_empty() {
        eprintln!(
            "  {}: API requests: {api_requests} counted by the API server, {own_count} by the controllers",
            sc.name
        );
        for c in &controllers {
            eprintln!("  {}: {}", sc.name, where_time_went(&c.metrics()));
        }
    }
    for k in &kueues {
        let (cpu, rss) = usage(k.pid());
        cpu_seconds += cpu;
        peak_rss_mib = peak_rss_mib.max(rss);
    }
    let idle_s3_per_10s = if controllers.is_empty() {
        0.0
    } else {
        // Let the last releases land, then count for 30 s.
        tokio::time::sleep(Duration::from_secs(5)).await;
        let total = |cs: &[ControllerProcess]| -> f64 {
            cs.iter()
                .map(|c| {
                    let text = c.metrics();
                    s3_count(&text, "get") + s3_count(&text, "put")
                })
                .sum()
        };
        let before = total(&controllers);
        let window = Duration::from_secs(30);
        tokio::time::sleep(window).await;
        let after = total(&controllers);
        (after - before) / (sc.groups * sc.clusters) as f64 / window.as_secs_f64() * 10.0
    };

    let t = timeline.lock().unwrap();
    let admitted: Vec<Duration> = t.admitted.values().copied().collect();
    let finished: Vec<Duration> = t.finished.values().copied().collect();
    let mut events = Vec::new();
    for (name, at) in &t.admitted {
        events.push((owner[name].clone(), *at, Seen::Admitted));
    }
    for (name, at) in &t.finished {
        events.push((owner[name].clone(), *at, Seen::Finished));
    }
    let (peak, peak_counted_on, peak_per_group) = match sc.mode {
        Mode::StandIn => checker.snapshot(|s| (s.max_running, "Jobs", s.max_per_group.clone())),
        Mode::Full => {
            // Full-mode scenarios have one group.
            assert_eq!(groups.len(), 1, "pods are counted for all groups together");
            let peak = pods.max();
            (peak, "pods", BTreeMap::from([(groups[0].clone(), peak)]))
        }
    };
    Figures {
        jobs: done,
        took,
        admissions_per_s: rate(&admitted),
        completions_per_s: rate(&finished),
        latency: if sc.system != System::Unlimited {
            freed_to_admitted(&events, &per_group)
        } else {
            Vec::new()
        },
        peak,
        peak_counted_on,
        peak_per_group,
        s3_gets,
        s3_puts,
        api_requests,
        ledger_writes,
        cpu_seconds,
        peak_rss_mib,
        idle_s3_per_10s,
    }
}

/// Where a controller's passes spent their time: passes and their mean,
/// then each kind of request (count, mean, total), from its metrics.
fn where_time_went(text: &str) -> String {
    let passes = metric_sum(text, "jobgate_pass_duration_seconds_count", &[]);
    let pass_secs = metric_sum(text, "jobgate_pass_duration_seconds_sum", &[]);
    let mut out = format!(
        "{passes} passes, mean {:.1} ms",
        pass_secs / passes.max(1.0) * 1000.0
    );
    for family in [
        "jobgate_kube_request_duration_seconds",
        "jobgate_s3_request_duration_seconds",
    ] {
        let prefix = format!("{family}_count{{op=\"");
        let ops: Vec<&str> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&prefix)?.split('"').next())
            .collect();
        for op in ops {
            let label = format!("op=\"{op}\"");
            let n = metric_sum(text, &format!("{family}_count"), &[&label]);
            let secs = metric_sum(text, &format!("{family}_sum"), &[&label]);
            out += &format!(
                "; {op} {n} × {:.1} ms = {secs:.1} s",
                secs / n.max(1.0) * 1000.0
            );
        }
    }
    out
}

fn ms(d: Duration) -> String {
    format!("{:.0}", d.as_secs_f64() * 1000.0)
}

fn report(sc: &Scenario, f: &Figures) -> String {
    let per_job = |x: f64| x / f.jobs.max(1) as f64;
    let limit = match sc.system {
        System::Unlimited => "–".into(),
        _ if sc.groups > 1 => format!(
            "{} per group ({} in all)",
            sc.limit,
            sc.limit as usize * sc.groups
        ),
        _ => sc.limit.to_string(),
    };
    let (p50, p99, max) = if f.latency.is_empty() {
        ("–".into(), "–".into(), "–".into())
    } else {
        (
            ms(quantile(&f.latency, 0.5)),
            ms(quantile(&f.latency, 0.99)),
            ms(quantile(&f.latency, 1.0)),
        )
    };
    let jobgate = |x: String| {
        if sc.system == System::Jobgate {
            x
        } else {
            "–".into()
        }
    };
    let controller = |x: String| {
        if sc.system == System::Unlimited {
            "–".into()
        } else {
            x
        }
    };
    format!(
        "| {} | {} | {:?} | {} | {} | {} | {:.1} | {:.1} | {p50} | {p99} | {max} | {} ({}) | {} | {} | {} | {} | {} | {} | {} | {:.0} s |",
        sc.name,
        sc.system,
        sc.mode,
        sc.clusters,
        f.jobs,
        limit,
        f.admissions_per_s,
        f.completions_per_s,
        f.peak,
        f.peak_counted_on,
        jobgate(format!(
            "{:.3} / {:.3}",
            per_job(f.s3_gets),
            per_job(f.s3_puts)
        )),
        jobgate(format!("{:.2}", per_job(f.ledger_writes))),
        jobgate(format!(
            "${:.2}",
            cost_per_million_jobs(per_job(f.s3_gets), per_job(f.s3_puts))
        )),
        jobgate(format!("{:.2}", f.idle_s3_per_10s)),
        controller(format!("{:.2}", per_job(f.api_requests))),
        controller(format!("{:.1}", f.cpu_seconds)),
        controller(format!("{:.0}", f.peak_rss_mib)),
        f.took.as_secs_f64(),
    )
}

fn scenarios() -> Vec<Scenario> {
    let one = |name, system, mode, jobs, limit| Scenario {
        name,
        system,
        mode,
        clusters: 1,
        groups: 1,
        jobs_per_group: jobs,
        limit,
        flags: &[],
        others: Others::default(),
        profile: None,
    };
    use Mode::{Full, StandIn};
    use System::{Jobgate, Kueue, Unlimited};
    vec![
        one("depth-10k-limit-100", Jobgate, StandIn, 10_000, 100),
        // What the pod check costs: the same without it (a pod LIST in
        // each pass that frees a finished Job's slot).
        Scenario {
            name: "depth-10k-limit-100-no-pod-check",
            flags: &["--unsafe-release-without-pods"],
            ..one("", Jobgate, StandIn, 10_000, 100)
        },
        one("depth-10k-limit-1000", Jobgate, StandIn, 10_000, 1_000),
        // The stand-in test bed's own ceiling: Jobs created running, no
        // limit; what the API server and the stand-in complete per second.
        one("depth-10k-unlimited", Unlimited, StandIn, 10_000, 0),
        // The same work for jobgate and Kueue, side by side.
        one("depth-2k-limit-100", Jobgate, StandIn, 2_000, 100),
        one(
            "kueue-depth-2k-limit-100",
            Kueue(KueueTuning::shipped_v017()),
            StandIn,
            2_000,
            100,
        ),
        // Whether Kueue's client limit is what holds it back: the same work
        // with the higher limit and concurrency v0.19 ships, then with no
        // effective client limit at all.
        one(
            "kueue-v019-defaults-depth-2k-limit-100",
            Kueue(KueueTuning::defaults_v019()),
            StandIn,
            2_000,
            100,
        ),
        one(
            "kueue-unthrottled-depth-2k-limit-100",
            Kueue(KueueTuning::unthrottled()),
            StandIn,
            2_000,
            100,
        ),
        one("full-1k-limit-100", Jobgate, Full, 1_000, 100),
        one(
            "kueue-full-1k-limit-100",
            Kueue(KueueTuning::shipped_v017()),
            Full,
            1_000,
            100,
        ),
        one("full-1k-unlimited", Unlimited, Full, 1_000, 0),
        Scenario {
            name: "two-clusters-20-groups",
            system: Jobgate,
            mode: StandIn,
            clusters: 2,
            groups: 20,
            jobs_per_group: 500,
            limit: 10,
            flags: &[],
            others: Others::default(),
            profile: None,
        },
        // The same work through one real controller, and through two real
        // controllers sharing one group, with S3 at AWS S3 Standard's
        // latency (as benches/clusters.rs; its agents stand in for more).
        Scenario {
            profile: Some(Profile::AWS_S3_STANDARD),
            ..one("aws-depth-2k-limit-100", Jobgate, StandIn, 2_000, 100)
        },
        Scenario {
            name: "aws-two-clusters-depth-2k-limit-100",
            clusters: 2,
            profile: Some(Profile::AWS_S3_STANDARD),
            ..one("", Jobgate, StandIn, 2_000, 100)
        },
        // One group's queue across kinds: the Jobs of full-1k-limit-100,
        // and 200 JobSets and 200 plain Pods among them.
        Scenario {
            others: Others {
                jobsets: 200,
                pods: 200,
            },
            ..one(
                "mixed-full-1k-jobs-200-jobsets-200-pods-limit-100",
                Jobgate,
                Full,
                1_000,
                100,
            )
        },
    ]
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let scale: f64 = std::env::var("JOBGATE_BENCH_SCALE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(1.0);
    let only: Option<Vec<String>> = std::env::var("JOBGATE_BENCH_ONLY")
        .ok()
        .filter(|s| !s.is_empty())
        .map(|s| s.split(',').map(str::to_string).collect());
    let max_run = Duration::from_secs(
        std::env::var("JOBGATE_BENCH_MAX_SECS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(900),
    );
    let s3 = seaweed().await;
    let mut rows = Vec::new();
    let mut over = Vec::new();
    for sc in scenarios() {
        if only
            .as_ref()
            .is_some_and(|o| !o.iter().any(|n| n == sc.name))
        {
            continue;
        }
        eprintln!("running {} (scale {scale})", sc.name);
        let f = run(&sc, scale, max_run, &s3).await;
        if sc.system != System::Unlimited {
            for (group, peak) in &f.peak_per_group {
                if *peak > sc.limit as usize {
                    over.push(format!(
                        "{} {group}: peak {peak} over {}",
                        sc.name, sc.limit
                    ));
                }
            }
        }
        let row = report(&sc, &f);
        eprintln!("{row}");
        rows.push(row);
    }
    println!(
        "| scenario | system | mode | clusters | Jobs done | limit | admissions/s | completions/s | freed→admitted p50 ms | p99 ms | max ms | peak running (counted on) | S3 GET / PUT per Job | ledger writes per Job | S3 cost per million Jobs | idle S3 requests per 10 s per group | API requests per Job | controller CPU s | peak RSS MiB | took |"
    );
    // Text columns left, figures right: one entry per column above.
    let align = [
        "---", "---", "---", "---:", "---:", "---", "---:", "---:", "---:", "---:", "---:", "---:",
        "---:", "---:", "---:", "---:", "---:", "---:", "---:", "---:",
    ];
    println!("|{}|", align.join("|"));
    for row in rows {
        println!("{row}");
    }
    assert!(over.is_empty(), "limit exceeded: {}", over.join("; "));
}
