//! The promise counted on pods: full clusters (kube-apiserver,
//! kube-controller-manager, kube-scheduler, kwok) whose pods behave like
//! real work with a real shutdown (`Pods::Held`): a Job's pod runs until its
//! run time is up, and a pod being deleted stays Terminating for its whole
//! `terminationGracePeriodSeconds`. The checker (`PodLog`) watches the pods
//! of every cluster and counts the Jobs with a pod that may still run; it
//! never looks at the ledger or at Job flags.
//!
//! Each scenario prints a seed (`JOBGATE_SEED` replays it) and runs
//! `JOBGATE_SCENARIO_ROUNDS` times (default 1; `make soak` runs more). The
//! scenarios take turns: two full clusters at once are what a 2-core
//! machine can carry with room for the timing they measure.

use std::time::{Duration, Instant};

use jobgate_testkit::faultproxy::{FaultProxy, Faults, Holds};
use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    ControllerProcess, GroupSpec, apply_credentials, apply_group_with, apply_secret,
    create_held_job, eventually, held_cluster, read_ledger,
};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::seaweedfs::{TENANT_ACCESS_KEY, TENANT_SECRET_KEY};
use jobgate_testkit::{SeaweedFs, bucket, seaweed, seed};
use rand::Rng;
use rand::rngs::StdRng;
use serde_json::json;

const NS: &str = "batch";
/// The groups' `leaseSeconds` and `maxGracePeriodSeconds`: the holder
/// fences 20 − 5 − 5 = 10 s after its last renewal known to have landed,
/// leaving 10 s for a Job's pods (grace periods up to 5 s) to stop before
/// another cluster may take the slot.
const LEASE: Duration = Duration::from_secs(20);
const MAX_GRACE_SECONDS: u32 = 5;

/// Leader election with a 3 s leader Lease: a leader whose API server goes
/// down stops leading 2–3 s into the outage.
const LEADER_ELECTION: [&str; 3] = [
    "--leader-elect=true",
    "--leader-election-namespace=batch",
    "--leader-election-lease=3s",
];

/// One scenario at a time in this binary (see the module comment).
static SERIAL: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn group(cp: &ControlPlane, name: &str, limit: u32, bucket: &str, endpoint: &str) {
    group_with(cp, name, limit, bucket, endpoint, json!({}));
}

/// [`group`] with `extra` merged into its spec.
fn group_with(
    cp: &ControlPlane,
    name: &str,
    limit: u32,
    bucket: &str,
    endpoint: &str,
    extra: serde_json::Value,
) {
    let mut spec =
        json!({"leaseSeconds": LEASE.as_secs(), "maxGracePeriodSeconds": MAX_GRACE_SECONDS});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    apply_group_with(
        cp,
        &GroupSpec {
            name,
            ns: NS,
            limit,
            bucket,
            endpoint,
            key: None,
            secret: None,
        },
        spec,
    );
}

fn job_field(cp: &ControlPlane, job: &str, path: &str) -> String {
    let out = cp.kubectl(&[
        "get",
        "-n",
        NS,
        "job",
        job,
        "-o",
        &format!("jsonpath={path}"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A JSONPath over the pods that `selector` picks.
fn pods_field(cp: &ControlPlane, selector: &str, path: &str) -> String {
    let out = cp.kubectl(&[
        "get",
        "-n",
        NS,
        "pods",
        "-l",
        selector,
        "-o",
        &format!("jsonpath={path}"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The phases of a Job's pods, space-separated.
fn pod_phases(cp: &ControlPlane, job: &str) -> String {
    pods_field(
        cp,
        &format!("batch.kubernetes.io/job-name={job}"),
        "{.items[*].status.phase}",
    )
}

fn controller(
    cp: &ControlPlane,
    s3: &SeaweedFs,
    cluster: &str,
    extra: &[&str],
) -> ControllerProcess {
    let mut flags: Vec<&str> = extra.to_vec();
    if !extra.iter().any(|f| f.starts_with("--leader-elect=")) {
        flags.push("--leader-elect=false");
    }
    ControllerProcess::start_with(cp, s3, cluster, NS, true, &flags, "")
}

// ---------------------------------------------------------------------------
// A Job deleted while its pods still run

/// How the running Job stops holding its slot in the deletion scenario.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Ending {
    /// `kubectl delete job` (background cascade): the Job is gone at once,
    /// its pod then takes its grace period to stop.
    Deleted,
    /// Deleted orphaning its pod, which runs on until the test deletes it
    /// a little later (and then takes its grace period).
    Orphaned,
    /// Failed by the Job controller (`activeDeadlineSeconds` lowered to 1)
    /// while its pod still terminates.
    Failed,
    /// Its group label removed: out of the group, its pod runs on until its
    /// run time is up.
    Unlabelled,
}

/// What the deletion scenario saw.
struct Deleted {
    max: usize,
    over: Duration,
    /// From the deletion until the next Job had a pod.
    next_after: Duration,
    /// The least `next_after` may be: when the first Job's pod could have
    /// stopped at the earliest.
    earliest: Duration,
}

/// Limit 1: `first` runs, `second` waits. `first` then ends as `ending`
/// says, and its pod takes its whole grace period to stop. `second` must not
/// get a pod while it may still run.
async fn end_a_running_job(rng: &mut StdRng, extra: &[&str], ending: Ending) -> Deleted {
    let s3 = seaweed().await;
    let bucket = bucket(&s3).await;
    let (cp, kube) = held_cluster(NS).await;
    group(&cp, "del", 1, &bucket, &s3.endpoint);
    let grace = rng.random_range(3..=MAX_GRACE_SECONDS);
    let orphan_for = Duration::from_millis(rng.random_range(1500..=4000));
    let run_for = Duration::from_millis(rng.random_range(8000..=12000));
    eprintln!(
        "grace {grace} s, {ending:?} (orphan deleted {orphan_for:?} later; run time {run_for:?} if unlabelled)"
    );
    let pods = PodLog::default();
    pods.watch(kube.clone(), "one", NS);
    let first_runs = (ending == Ending::Unlabelled).then_some(run_for);
    create_held_job(&kube, NS, "first", "del", grace, first_runs).await;
    create_held_job(&kube, NS, "second", "del", grace, None).await;
    let _controller = controller(&cp, &s3, "one", extra);
    // Running, so bound to a node: the apiserver deletes an unbound pod at
    // once, without its grace period.
    eventually(Duration::from_secs(60), "first's pod running", || async {
        (job_field(&cp, "first", "{.spec.suspend}") == "false"
            && pod_phases(&cp, "first") == "Running")
            .then_some(())
    })
    .await;
    let running = Instant::now();
    // The pods carry the Job's fencing token (for the downward API) and
    // the group label.
    let token = job_field(
        &cp,
        "first",
        "{.metadata.annotations.jobgate\\.dev/fencing-token}",
    );
    let pod_token = pods_field(
        &cp,
        "batch.kubernetes.io/job-name=first,jobgate.dev/group=del",
        "{.items[*].metadata.annotations.jobgate\\.dev/fencing-token}",
    );
    assert!(!token.is_empty(), "no token on the admitted Job");
    assert_eq!(pod_token, token, "the pod's token");
    // The deletion timestamp has whole seconds: a pod may stop up to a
    // second before its grace period is over.
    let grace_at_least = Duration::from_secs(u64::from(grace) - 1);
    let args: Vec<&str> = match ending {
        Ending::Deleted => vec!["delete", "job/first", "--wait=false"],
        Ending::Orphaned => vec!["delete", "job/first", "--cascade=orphan", "--wait=false"],
        Ending::Failed => vec![
            "patch",
            "job/first",
            "--type=merge",
            "-p",
            r#"{"spec":{"activeDeadlineSeconds":1}}"#,
        ],
        Ending::Unlabelled => vec!["label", "job/first", "jobgate.dev/group-"],
    };
    let mut full = vec!["-n", NS];
    full.extend(args);
    cp.kubectl_ok(&full);
    let ended = Instant::now();
    let earliest = match ending {
        Ending::Deleted | Ending::Failed => grace_at_least,
        Ending::Orphaned => {
            // The orphaned pod runs on by itself for a while, then is
            // deleted (and takes its grace period to stop).
            tokio::time::sleep(orphan_for).await;
            cp.kubectl_ok(&[
                "delete",
                "-n",
                NS,
                "pods",
                "-l",
                "batch.kubernetes.io/job-name=first",
                "--wait=false",
            ]);
            orphan_for + grace_at_least
        }
        Ending::Unlabelled => (running + run_for).saturating_duration_since(ended),
    };
    eventually(Duration::from_secs(60), "second's pod", || async {
        (!pod_phases(&cp, "second").is_empty()).then_some(())
    })
    .await;
    let next_after = ended.elapsed();
    eventually(Duration::from_secs(60), "first's pod stopped", || async {
        let phases = pod_phases(&cp, "first");
        (!phases.contains("Running") && !phases.contains("Pending")).then_some(())
    })
    .await;
    // Let the checker's watch catch up with what kubectl saw.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "{}; second's pod {next_after:?} after first ended",
        pods.summary(1)
    );
    Deleted {
        max: pods.max(),
        over: pods.time_over(1),
        next_after,
        earliest,
    }
}

/// A Job's slot is kept while its pods may still run: through the grace
/// period of a background deletion or of a Job failed while its pod
/// terminates, for as long as orphaned pods live, and while the pod of a
/// Job taken out of the group runs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_jobs_slot_is_kept_until_its_pods_have_stopped() {
    let _turn = SERIAL.lock().await;
    for _ in 0..seed::rounds() {
        let mut rng = seed::rng("deleted job");
        let endings = [
            Ending::Deleted,
            Ending::Orphaned,
            Ending::Failed,
            Ending::Unlabelled,
        ];
        let ending = endings[rng.random_range(0..endings.len())];
        let seen = end_a_running_job(&mut rng, &[], ending).await;
        assert_eq!(
            (seen.max, seen.over),
            (1, Duration::ZERO),
            "more than one Job had live pods at limit 1"
        );
        assert!(
            seen.next_after >= seen.earliest,
            "second started {:?} after first ended ({ending:?}), before first's pod could have stopped ({:?})",
            seen.next_after,
            seen.earliest
        );
    }
}

/// The checker is shown to catch a violation: with the slot freed as soon
/// as the Job is gone (the behaviour before pods were counted, behind a
/// test-only flag), the next Job's pod starts while the deleted Job's pod
/// is still terminating, and the checker sees two at limit 1.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pod_checker_catches_a_slot_freed_while_pods_still_terminate() {
    let _turn = SERIAL.lock().await;
    let mut rng = seed::rng("deleted job, pods not counted");
    let seen = end_a_running_job(
        &mut rng,
        &["--unsafe-release-without-pods"],
        Ending::Deleted,
    )
    .await;
    assert!(
        seen.max >= 2 && seen.over > Duration::ZERO,
        "the pod checker did not see the limit exceeded (peak {}, {:?} over)",
        seen.max,
        seen.over
    );
}

// ---------------------------------------------------------------------------
// Two clusters sharing one ledger

/// Two held clusters with one group `shared` at limit 2, each reaching S3
/// through a fault proxy of its own. East's two Jobs run (for good, or for
/// `east_run_for`), west's two wait, recorded in the ledger.
struct TwoClusters {
    s3: SeaweedFs,
    bucket: String,
    proxy: FaultProxy,
    west_proxy: FaultProxy,
    east_cp: ControlPlane,
    west_cp: ControlPlane,
    east: ControllerProcess,
    west: ControllerProcess,
    pods: PodLog,
}

impl TwoClusters {
    async fn start(grace: u32, east_run_for: Option<Duration>) -> TwoClusters {
        Self::start_with(grace, east_run_for, &[], json!({})).await
    }

    /// `east_flags`: extra flags for east's controller; `spec`: merged into
    /// both clusters' group spec.
    async fn start_with(
        grace: u32,
        east_run_for: Option<Duration>,
        east_flags: &[&str],
        spec: serde_json::Value,
    ) -> TwoClusters {
        let s3 = seaweed().await;
        let bucket = bucket(&s3).await;
        let (east_cp, east_kube) = held_cluster(NS).await;
        let (west_cp, west_kube) = held_cluster(NS).await;
        let proxy = FaultProxy::start(&s3.endpoint, Faults::default()).await;
        let west_proxy = FaultProxy::start(&s3.endpoint, Faults::default()).await;
        group_with(
            &east_cp,
            "shared",
            2,
            &bucket,
            &proxy.endpoint,
            spec.clone(),
        );
        group_with(&west_cp, "shared", 2, &bucket, &west_proxy.endpoint, spec);
        let pods = PodLog::default();
        pods.watch(east_kube.clone(), "east", NS);
        pods.watch(west_kube.clone(), "west", NS);
        for name in ["east-0", "east-1"] {
            create_held_job(&east_kube, NS, name, "shared", grace, east_run_for).await;
        }
        let east = controller(&east_cp, &s3, "east", east_flags);
        let since = Instant::now();
        while pods.running_in("east") < 2 {
            assert!(
                since.elapsed() < Duration::from_secs(60),
                "east's two pods did not start within 60 s\n{}",
                east.log_text()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        for name in ["west-0", "west-1"] {
            create_held_job(&west_kube, NS, name, "shared", grace, None).await;
        }
        let west = controller(&west_cp, &s3, "west", &[]);
        let me = TwoClusters {
            s3,
            bucket,
            proxy,
            west_proxy,
            east_cp,
            west_cp,
            east,
            west,
            pods,
        };
        eventually(Duration::from_secs(60), "west waits", || async {
            let ledger = read_ledger(&me.s3, &me.bucket, "jobgate/batch/shared.json").await?;
            let waiting = ledger.agents.get(&format!("west/{NS}/shared"))?.waiting;
            (waiting == 2).then_some(())
        })
        .await;
        me
    }

    /// From `since`, until west runs two Jobs (or `timeout`): when east
    /// last had a live pod and when west first had one.
    async fn handover(&self, since: Instant, timeout: Duration) -> Handover {
        let mut east_stopped = None;
        let mut west_started = None;
        while since.elapsed() < timeout {
            if east_stopped.is_none() && self.pods.running_in("east") == 0 {
                east_stopped = Some(since.elapsed());
            }
            if west_started.is_none() && self.pods.running_in("west") > 0 {
                west_started = Some(since.elapsed());
            }
            if self.pods.running_in("west") == 2 && east_stopped.is_some() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        Handover {
            east_stopped,
            west_started,
            west_running: self.pods.running_in("west"),
        }
    }

    /// Never more than two Jobs with live pods, and west got both slots.
    fn assert_limit_held_and_handed_over(&self, seen: &Handover) {
        assert_eq!(
            (self.pods.max(), self.pods.time_over(2)),
            (2, Duration::ZERO),
            "more than two Jobs had live pods at limit 2\n{}",
            self.logs()
        );
        assert_eq!(
            seen.west_running,
            2,
            "west never got the slots\n{}",
            self.logs()
        );
    }

    fn logs(&self) -> String {
        format!(
            "{}\n----\n{}\n----\n{}\n----\n{}",
            self.east.log_text(),
            self.west.log_text(),
            self.east_cp.log_tail("kube-controller-manager", 20),
            self.west_cp.log_tail("kube-controller-manager", 20),
        )
    }
}

#[derive(Debug)]
struct Handover {
    east_stopped: Option<Duration>,
    west_started: Option<Duration>,
    west_running: usize,
}

/// East is cut off from S3 for longer than the lease. It must suspend its
/// Jobs early enough for their pods to stop (grace periods included) before
/// west may take the slots, so that at no moment do more than two Jobs have
/// live pods in the two clusters together; west then gets both slots.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_cut_off_from_s3_stops_its_pods_before_the_others_start_theirs() {
    let _turn = SERIAL.lock().await;
    for _ in 0..seed::rounds() {
        let mut rng = seed::rng("S3 partition");
        let grace = rng.random_range(1..=MAX_GRACE_SECONDS);
        // Either policy: a live controller suspends its Jobs at the fence,
        // before a FailJobs deadline could fail them.
        let policy = if rng.random_bool(0.5) {
            "FailJobs"
        } else {
            "Reclaim"
        };
        let bed =
            TwoClusters::start_with(grace, None, &[], json!({"onControllerLoss": policy})).await;
        // Cut at a random point of east's renewal cycle.
        tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
        bed.proxy.partition(true);
        let cut = Instant::now();
        let seen = bed.handover(cut, Duration::from_secs(60)).await;
        let suspended = job_field(&bed.east_cp, "east-0", "{.spec.suspend}");
        let failed = job_field(
            &bed.east_cp,
            "east-0",
            "{.status.conditions[?(@.type==\"Failed\")].reason}",
        );
        eprintln!(
            "grace {grace} s, onControllerLoss {policy}: {seen:?} after the cut (lease {LEASE:?}); east-0 suspended {suspended}, failed {failed:?}; {}",
            bed.pods.summary(2)
        );
        assert_eq!(
            (suspended.as_str(), failed.as_str()),
            ("true", ""),
            "east's Job was not suspended (or failed)\n{}",
            bed.logs()
        );
        bed.assert_limit_held_and_handed_over(&seen);

        // Healed, and west's Jobs gone: east's Jobs get slots again and
        // run on past a fence period (a re-admitted Job's first deadline
        // must count from its old start time, which the Job controller
        // checks it against before resetting it).
        bed.proxy.partition(false);
        bed.west_cp.kubectl_ok(&[
            "delete",
            "-n",
            NS,
            "job/west-0",
            "job/west-1",
            "--wait=false",
        ]);
        eventually(
            Duration::from_secs(90),
            "east runs its Jobs again",
            || async { (bed.pods.running_in("east") == 2).then_some(()) },
        )
        .await;
        tokio::time::sleep(LEASE - Duration::from_secs(5)).await;
        let failed = job_field(
            &bed.east_cp,
            "east-0",
            "{.status.conditions[?(@.type==\"Failed\")].reason}",
        );
        assert_eq!(
            (bed.pods.running_in("east"), failed.as_str()),
            (2, ""),
            "east's re-admitted Jobs did not run on\n{}",
            bed.logs()
        );
        assert_eq!(bed.pods.max(), 2, "{}", bed.pods.summary(2));
    }
}

/// S3 unreachable from both clusters for one and a half leases: east
/// suspends its Jobs at its fence, from its own state, and nobody admits
/// anything; healed, the slots are handed out again, and at no moment do
/// more than two Jobs have live pods.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_s3_down_everywhere_nothing_runs_past_the_fence_and_the_limit_holds_after() {
    let _turn = SERIAL.lock().await;
    let mut rng = seed::rng("S3 down everywhere");
    let grace = rng.random_range(1..=MAX_GRACE_SECONDS);
    let bed = TwoClusters::start(grace, None).await;
    tokio::time::sleep(Duration::from_millis(rng.random_range(0..3000))).await;
    bed.proxy.partition(true);
    bed.west_proxy.partition(true);
    let cut = Instant::now();
    eventually(Duration::from_secs(60), "east's pods stop", || async {
        (bed.pods.running_in("east") == 0).then_some(())
    })
    .await;
    let east_stopped = cut.elapsed();
    let outage = LEASE * 3 / 2;
    tokio::time::sleep(outage.saturating_sub(cut.elapsed())).await;
    assert_eq!(
        bed.pods.running(),
        0,
        "a Job ran while S3 was down everywhere\n{}",
        bed.logs()
    );
    bed.proxy.partition(false);
    bed.west_proxy.partition(false);
    let healed = Instant::now();
    eventually(Duration::from_secs(90), "two Jobs run again", || async {
        (bed.pods.running() == 2).then_some(())
    })
    .await;
    let again = healed.elapsed();
    eprintln!(
        "grace {grace} s, S3 down everywhere for {outage:?}: east's pods gone {east_stopped:?} after the cut (lease {LEASE:?}); two Jobs ran again {again:?} after healing (east {}, west {}); {}",
        bed.pods.running_in("east"),
        bed.pods.running_in("west"),
        bed.pods.summary(2)
    );
    assert!(
        east_stopped < LEASE,
        "east's pods ran {east_stopped:?} into the outage\n{}",
        bed.logs()
    );
    assert_eq!(
        (bed.pods.max(), bed.pods.time_over(2)),
        (2, Duration::ZERO),
        "more than two Jobs had live pods at limit 2\n{}",
        bed.logs()
    );
}

/// A controller that dies and stays dead for longer than the lease cannot
/// stop its Jobs, and the other clusters cannot know whether they still run:
/// after a lease of silence they take its slots (the documented choice, for
/// liveness). The exposure measured here is the documented bound: from a
/// lease after the last renewal until the dead cluster's Jobs end on their
/// own, up to the dead cluster's slots over the limit.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_controllers_jobs_run_over_the_limit_until_they_end() {
    let _turn = SERIAL.lock().await;
    for _ in 0..seed::rounds() {
        let mut rng = seed::rng("controller dead longer than the lease");
        let run_for = Duration::from_secs(rng.random_range(35..=45));
        let mut bed = TwoClusters::start(1, Some(run_for)).await;
        bed.east.kill9();
        let killed = Instant::now();
        // Until east's Jobs end (run_for after their pods started, before
        // the kill) and west has both slots.
        let seen = bed.handover(killed, run_for + LEASE).await;
        let over = bed.pods.time_over(2);
        eprintln!(
            "east's Jobs run {run_for:?}; {seen:?} after the kill; {}",
            bed.pods.summary(2)
        );
        let west_started = seen
            .west_started
            .unwrap_or_else(|| panic!("west never started\n{}", bed.logs()));
        // West waits a whole lease of silence, counted from the last change
        // of east's renewals it saw (at most a renewal interval, a third of
        // the fence period, before the kill).
        assert!(
            west_started >= LEASE - Duration::from_secs(4),
            "west started {west_started:?} after the kill, before a lease of silence"
        );
        // The bound: over the limit by at most east's two slots, and only
        // until east's Jobs end.
        assert!(bed.pods.max() <= 4, "{}", bed.pods.summary(2));
        let east_end = seen
            .east_stopped
            .unwrap_or_else(|| panic!("east's Jobs never ended\n{}", bed.logs()));
        assert!(
            east_end <= run_for + Duration::from_secs(5),
            "east's Jobs ran {east_end:?} past the kill, longer than their run time {run_for:?}"
        );
        assert!(
            over <= east_end.saturating_sub(west_started) + Duration::from_secs(1),
            "over the limit for {over:?}, longer than from west's start ({west_started:?}) to the end of east's Jobs ({east_end:?})"
        );
    }
}

/// East's API server stops answering for longer than the lease (frozen, so
/// its pods, which need no API server to run, go on). East's controller can
/// neither renew its leader Lease nor suspend anything; it must keep its
/// slots renewed in the ledger, so that west takes none while east's pods
/// may run. Once the API server answers again east leads again, and when
/// east's Jobs are deleted west gets their slots after their pods stop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_whose_api_server_is_down_keeps_its_slots() {
    let _turn = SERIAL.lock().await;
    for _ in 0..seed::rounds() {
        let mut rng = seed::rng("API server down");
        let grace = rng.random_range(1..=MAX_GRACE_SECONDS);
        let down_for = LEASE + Duration::from_millis(rng.random_range(5000..=15000));
        let mut bed = TwoClusters::start_with(grace, None, &LEADER_ELECTION, json!({})).await;
        bed.east_cp.freeze("kube-apiserver", true);
        let frozen = Instant::now();
        let mut west_during = 0;
        while frozen.elapsed() < down_for {
            west_during = west_during.max(bed.pods.running_in("west"));
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        bed.east_cp.freeze("kube-apiserver", false);
        eprintln!(
            "grace {grace} s, API server down {down_for:?}; west ran {west_during} Jobs meanwhile"
        );
        let exited = bed.east.exited();
        assert!(
            exited.is_none(),
            "east's controller exited ({exited:?})\n{}",
            bed.logs()
        );
        assert_eq!(
            west_during,
            0,
            "west ran Jobs while east's pods may run\n{}",
            bed.logs()
        );
        eventually(Duration::from_secs(60), "east leads again", || async {
            bed.east.log_text().contains("leader again").then_some(())
        })
        .await;
        bed.east_cp.kubectl_ok(&[
            "delete",
            "-n",
            NS,
            "job/east-0",
            "job/east-1",
            "--wait=false",
        ]);
        let deleted = Instant::now();
        let seen = bed.handover(deleted, Duration::from_secs(60)).await;
        eprintln!(
            "{seen:?} after east's Jobs were deleted; {}",
            bed.pods.summary(2)
        );
        bed.assert_limit_held_and_handed_over(&seen);
    }
}

/// East's ledger client is rebuilt (its credentials Secret rotated) by a
/// pass that stops before it takes east's slots up again: the new client's
/// first read of the ledger is held by the proxy, and east's API server
/// then goes down, so east loses its leader Lease and drops the pass while
/// its pods run on. The replaced client must go on renewing east's slots:
/// west runs nothing while east's pods may run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_rebuilt_just_before_leadership_is_lost_keeps_its_slots_renewed() {
    let _turn = SERIAL.lock().await;
    let mut rng = seed::rng("rebuild then leadership lost");
    let grace = rng.random_range(1..=MAX_GRACE_SECONDS);
    let bed = TwoClusters::start_with(grace, None, &LEADER_ELECTION, json!({})).await;
    // East's group takes its credentials from a Secret.
    apply_credentials(&bed.east_cp, NS, "s3-creds", &bed.s3);
    bed.east_cp.kubectl_ok(&[
        "patch",
        "-n",
        NS,
        "concurrencygroup/shared",
        "--type=merge",
        "-p",
        r#"{"spec":{"ledger":{"credentialsSecretRef":{"name":"s3-creds"}}}}"#,
    ]);
    // The change starts a pass at once, which rebuilds the client and
    // takes the slots up with it; a few more follow.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert_eq!(bed.pods.running_in("east"), 2, "{}", bed.logs());

    // Rotated to SeaweedFS's other identity, whose reads of the ledger the
    // proxy holds: the pass that rebuilds the client gets no further.
    bed.proxy.hold(Holds {
        reads_signed_by: Some((TENANT_ACCESS_KEY.into(), "jobgate/batch/shared.json".into())),
        ..Default::default()
    });
    apply_secret(
        &bed.east_cp,
        NS,
        "s3-creds",
        TENANT_ACCESS_KEY,
        TENANT_SECRET_KEY,
    );
    eventually(
        Duration::from_secs(30),
        "the new client's read held",
        || async {
            (bed.proxy
                .counts
                .held
                .load(std::sync::atomic::Ordering::Relaxed)
                > 0)
            .then_some(())
        },
    )
    .await;
    bed.east_cp.freeze("kube-apiserver", true);
    let frozen = Instant::now();
    let down_for = LEASE + Duration::from_secs(10);
    let mut west_during = 0;
    while frozen.elapsed() < down_for {
        west_during = west_during.max(bed.pods.running_in("west"));
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let east_during = bed.pods.running_in("east");
    bed.east_cp.freeze("kube-apiserver", false);
    bed.proxy.hold(Holds::default());
    eprintln!(
        "grace {grace} s, east's client rebuilt then its API server down {down_for:?}: west ran {west_during} Jobs meanwhile, east {east_during}; {}",
        bed.pods.summary(2)
    );
    assert!(
        bed.east.log_text().contains("lost leadership"),
        "east never lost its Lease\n{}",
        bed.logs()
    );
    assert_eq!(
        (west_during, bed.pods.time_over(2)),
        (0, Duration::ZERO),
        "west ran Jobs while east's pods may run\n{}",
        bed.logs()
    );
}

fn metric_sum(controller: &ControllerProcess, name: &str) -> u64 {
    controller
        .metrics()
        .lines()
        .filter(|l| l.starts_with(name))
        .filter_map(|l| l.rsplit(' ').next()?.trim().parse::<u64>().ok())
        .sum()
}

/// With `onControllerLoss: FailJobs`, a dead controller's Jobs carry a
/// deadline that nobody moves on any more: the Job controller fails them
/// (`DeadlineExceeded`) and their pods stop before west may take the slots,
/// so the limit holds on pods. While the controller lives, the deadline
/// keeps moving on and the Jobs run well past their first one.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_fail_jobs_a_dead_controllers_jobs_stop_before_their_slots_are_taken() {
    let _turn = SERIAL.lock().await;
    for _ in 0..seed::rounds() {
        let mut rng = seed::rng("controller dead, onControllerLoss: FailJobs");
        let grace = rng.random_range(1..=MAX_GRACE_SECONDS);
        let live_for = Duration::from_secs(rng.random_range(25..=35));
        let mut bed =
            TwoClusters::start_with(grace, None, &[], json!({"onControllerLoss": "FailJobs"}))
                .await;
        let deadline = job_field(&bed.east_cp, "east-0", "{.spec.activeDeadlineSeconds}");
        assert!(!deadline.is_empty(), "no deadline on an admitted Job");
        // Past the first deadline (fence 10 s + 2 s): it must have moved on.
        tokio::time::sleep(live_for).await;
        assert_eq!(
            bed.pods.running_in("east"),
            2,
            "east's Jobs did not outlive their first deadline while the controller lived\n{}",
            bed.logs()
        );
        let patches = metric_sum(&bed.east, "jobgate_deadline_patches_total");
        bed.east.kill9();
        let killed = Instant::now();
        let seen = bed.handover(killed, Duration::from_secs(60)).await;
        let reason = job_field(
            &bed.east_cp,
            "east-0",
            "{.status.conditions[?(@.type==\"Failed\")].reason}",
        );
        eprintln!(
            "grace {grace} s, controller alive {live_for:?} with {patches} deadline patches for 2 Jobs (first deadline {deadline} s); {seen:?} after the kill; east-0 failed: {reason}; {}",
            bed.pods.summary(2)
        );
        bed.assert_limit_held_and_handed_over(&seen);
        assert_eq!(reason, "DeadlineExceeded");
    }
}
