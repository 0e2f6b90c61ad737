//! The operator under faults that split what runs from what the ledger says:
//! a cluster cut off from S3 for longer than the lease, and a controller
//! that starts while it cannot read the ledger. Real kube-apiservers, etcd,
//! SeaweedFS (behind a fault proxy for the cut-off cluster) and `jobgate
//! controller` processes; Jobs are run by the stand-in for the Job
//! controller, so a suspended Job has stopped at once.

use std::time::{Duration, Instant};

use jobgate_testkit::faultproxy::{FaultProxy, Faults};
use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    AdmissionLog, Bed, ControllerProcess, GroupSpec, Sim, apply_group, cluster, create_jobs,
    eventually, observe, read_ledger,
};

const NS: &str = "batch";
/// `leaseSeconds` of the groups `apply_group` makes.
const LEASE: Duration = Duration::from_secs(10);

fn names(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}-{i:02}")).collect()
}

fn events(cp: &ControlPlane, ns: &str, reason: &str) -> String {
    let selector = format!("reason={reason}");
    let out = cp.kubectl(&["get", "events", "-n", ns, "--field-selector", &selector]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Cluster "east": group `shared` at limit 2 reaching S3 through a fault
/// proxy, its Jobs watched by the checker and run by a stand-in Job
/// controller that never completes them (they run until suspended).
async fn east_behind_a_proxy() -> (Bed, FaultProxy, AdmissionLog, Sim) {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    let proxy = FaultProxy::start(&bed.s3.endpoint, Faults::default()).await;
    shared_group_behind(&bed, &proxy);
    let checker = AdmissionLog::default();
    let sim = Sim::new((100, 100));
    sim.pause(true);
    observe(
        bed.kube.clone(),
        "east",
        ns,
        checker.clone(),
        Some(sim.clone()),
    );
    (bed, proxy, checker, sim)
}

/// Group `shared` at limit 2 in the bed's cluster, reaching S3 through
/// `proxy`.
fn shared_group_behind(bed: &Bed, proxy: &FaultProxy) {
    apply_group(
        &bed.cp,
        &GroupSpec {
            name: "shared",
            ns: &bed.ns,
            limit: 2,
            bucket: &bed.bucket,
            endpoint: &proxy.endpoint,
            key: None,
            secret: None,
        },
    );
}

/// What the partition scenario saw.
struct Cut {
    /// The most Jobs running at once in both clusters together.
    max_running: usize,
    /// From the cut until east ran no Job (None: it never stopped them).
    east_stopped: Option<Duration>,
    lease_lost_events: usize,
    /// The LeaseLost events as kubectl lists them, for a failure message.
    lease_lost_text: String,
    logs: String,
}

/// East runs two Jobs at limit 2 while west waits; then east loses S3 (every
/// request hangs) until west has taken the slots, or 30 s have passed.
/// `extra`: flags for east's controller.
async fn cut_east_off_from_s3(extra: &[&str]) -> Cut {
    let (bed, proxy, checker, sim) = east_behind_a_proxy().await;
    let ns = bed.ns.as_str();
    let (west, west_kube) = cluster(ns, false).await;
    bed.group_in(&west, "shared", ns, 2, None, None);
    observe(
        west_kube.clone(),
        "west",
        ns,
        checker.clone(),
        Some(sim.clone()),
    );

    create_jobs(&bed.kube, ns, "shared", &names("east", 2)).await;
    let mut flags = vec!["--leader-elect=false"];
    flags.extend(extra);
    let east = ControllerProcess::start_with(&bed.cp, &bed.s3, "east", ns, true, &flags, "");
    eventually(Duration::from_secs(60), "east runs two Jobs", || async {
        (checker.snapshot(|s| s.running.len()) == 2).then_some(())
    })
    .await;
    create_jobs(&west_kube, ns, "shared", &names("west", 2)).await;
    let west_controller = ControllerProcess::start(&west, &bed.s3, "west", ns, true);
    eventually(Duration::from_secs(60), "west waits", || async {
        let ledger = read_ledger(&bed.s3, &bed.bucket, &bed.key("shared")).await?;
        let waiting = ledger.agents.get(&format!("west/{ns}/shared"))?.waiting;
        (waiting == 2).then_some(())
    })
    .await;

    proxy.partition(true);
    let cut = Instant::now();
    let running = |cluster: &str| {
        checker.snapshot(|s| s.running.iter().filter(|(c, _)| c == cluster).count())
    };
    let mut east_stopped = None;
    while cut.elapsed() < Duration::from_secs(30) && running("west") < 2 {
        if east_stopped.is_none() && running("east") == 0 {
            east_stopped = Some(cut.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = cut.elapsed();
    if east_stopped.is_none() && running("east") == 0 {
        east_stopped = Some(took);
    }
    eprintln!(
        "partition: east stopped its Jobs {east_stopped:?} after the cut; west ran {} Jobs {took:?} after it (lease {LEASE:?})",
        running("west")
    );
    let lease_lost = events(&bed.cp, ns, "LeaseLost");
    Cut {
        max_running: checker.snapshot(|s| s.max_running),
        east_stopped,
        lease_lost_events: lease_lost.matches("east-").count(),
        lease_lost_text: lease_lost,
        logs: format!("{}\n----\n{}", east.log_text(), west_controller.log_text()),
    }
}

/// East must suspend its Jobs before its lease can run out at west, so that
/// at no moment do more than two Jobs run in the two clusters together.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_cut_off_from_s3_suspends_its_jobs_before_the_others_take_their_slots() {
    let cut = cut_east_off_from_s3(&[]).await;
    let stopped = cut.east_stopped.unwrap_or(Duration::MAX);
    // West may take the slots a whole lease after east's last renewal
    // landed, which was before the cut.
    assert!(
        stopped < LEASE,
        "east's Jobs ran {stopped:?} after the cut, past the lease of {LEASE:?}\n{}",
        cut.logs
    );
    assert!(
        cut.max_running <= 2,
        "{} Jobs ran at once with limit 2\n{}",
        cut.max_running,
        cut.logs
    );
    assert_eq!(
        cut.lease_lost_events, 2,
        "one LeaseLost event per east Job:\n{}\n{}",
        cut.lease_lost_text, cut.logs
    );
}

/// The same cut with east fencing only after a ledger read, as before
/// fencing without the ledger: the Job checker sees four Jobs run at limit
/// 2. This shows the checker catches a violation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_checker_catches_the_limit_exceeded_when_fencing_waits_for_the_ledger() {
    let cut = cut_east_off_from_s3(&["--unsafe-fence-only-with-ledger"]).await;
    assert!(
        cut.max_running > 2,
        "expected the checker to see more than 2 Jobs at once, saw {}\n{}",
        cut.max_running,
        cut.logs
    );
}

/// A controller that starts while the ledger cannot be read cannot vouch for
/// the Jobs it admitted before it restarted: it suspends them once it has
/// waited a third of the fence period for the ledger.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restarted_controller_that_cannot_read_the_ledger_suspends_the_jobs_it_cannot_vouch_for()
{
    let (bed, proxy, checker, _sim) = east_behind_a_proxy().await;
    let ns = bed.ns.as_str();
    create_jobs(&bed.kube, ns, "shared", &names("east", 2)).await;
    let mut controller = ControllerProcess::start(&bed.cp, &bed.s3, "east", ns, true);
    eventually(Duration::from_secs(60), "two Jobs run", || async {
        (checker.snapshot(|s| s.running.len()) == 2).then_some(())
    })
    .await;
    controller.kill9();
    proxy.partition(true);
    let cut = Instant::now();
    controller.restart();
    eventually(Duration::from_secs(60), "the Jobs suspended", || async {
        (checker.snapshot(|s| s.running.len()) == 0).then_some(())
    })
    .await;
    let suspended_after = cut.elapsed();
    eprintln!("restart without the ledger: Jobs suspended {suspended_after:?} after the cut");
    // The group's fence period is 5 s (a 10 s lease, no grace period); the
    // restarted controller waits a third of it for the ledger. The previous
    // process's last renewal landed at most a third of the fence period
    // before it was killed, so its slots were safe for two thirds of the
    // fence period after the kill: the suspension must come before that.
    assert!(
        suspended_after < Duration::from_secs(5) * 2 / 3,
        "Jobs suspended {suspended_after:?} after the kill, past two thirds of the fence period\n{}",
        controller.log_text()
    );
    let lease_lost = events(&bed.cp, ns, "LeaseLost");
    assert_eq!(
        lease_lost.matches("east-").count(),
        2,
        "one LeaseLost event per Job:\n{lease_lost}\n{}",
        controller.log_text()
    );
    // Healed: the controller takes its slots up again and lets them run.
    proxy.partition(false);
    eventually(Duration::from_secs(60), "the Jobs run again", || async {
        (checker.snapshot(|s| s.running.len()) == 2).then_some(())
    })
    .await;
    checker.snapshot(|s| assert!(s.max_running <= 2, "{} at once", s.max_running));
}

/// A Job whose pods may take longer to stop than the group's
/// `maxGracePeriodSeconds` could outlive a lost lease: it is not admitted
/// (suspended if it was created running), with a Warning event, and the
/// group's `JobsFit` condition says what to change.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobs_whose_pods_cannot_stop_within_the_lease_are_not_admitted() {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    bed.group("slow", ns, 2);
    let job = |name: &str, suspend: bool, grace: u32| {
        format!(
            "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: {name}, namespace: {ns}, labels: {{jobgate.dev/group: slow}}}}\nspec:\n  suspend: {suspend}\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: {grace}\n      containers: [{{name: w, image: busybox, command: [\"true\"]}}]\n"
        )
    };
    for (name, suspend, grace) in [
        ("patient", true, 30),
        ("rogue", false, 30),
        ("quick", true, 0),
    ] {
        let out = bed
            .cp
            .kubectl_stdin(&["apply", "-f", "-"], &job(name, suspend, grace));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let controller = ControllerProcess::start(&bed.cp, &bed.s3, "one", ns, true);
    let jsonpath = |what: &str| {
        let out = bed
            .cp
            .kubectl(&["get", "-n", ns, what, "-o", "jsonpath={.spec.suspend}"]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(
        Duration::from_secs(60),
        "quick admitted, rogue suspended",
        || async {
            (jsonpath("job/quick") == "false" && jsonpath("job/rogue") == "true").then_some(())
        },
    )
    .await;
    let condition = |field: &str| {
        let path = format!("jsonpath={{.status.conditions[?(@.type==\"JobsFit\")].{field}}}");
        let out = bed.cp.kubectl(&["get", "-n", ns, "cg/slow", "-o", &path]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    eventually(Duration::from_secs(30), "JobsFit False", || async {
        (condition("status") == "False").then_some(())
    })
    .await;
    assert_eq!(condition("reason"), "GracePeriodTooLong");
    assert!(
        condition("message").contains("up to 30"),
        "{}",
        condition("message")
    );
    assert_eq!(jsonpath("job/patient"), "true", "never admitted");
    let warned = events(&bed.cp, ns, "GracePeriodTooLong");
    for name in ["patient", "rogue"] {
        assert!(
            warned.contains(name),
            "no event for {name}:\n{warned}\n{}",
            controller.log_text()
        );
    }
}

/// The number in a `name value` line of the controller's metrics.
fn metric(controller: &ControllerProcess, name: &str) -> u64 {
    controller
        .metrics()
        .lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse().ok())
        .unwrap_or(0)
}

/// A Job deleted while a pod of it may still run (here a pod that stays
/// Pending, since no scheduler runs; the Job deleted orphaning it) keeps its
/// slot until that pod is gone: a slot is free only when its work has
/// stopped. The same holds for a Job whose group label is removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_jobs_slot_is_kept_while_its_pods_may_run() {
    // No garbage collector runs here to finish an orphaning deletion: the
    // Job stays, being deleted (which counts as finished), and its pod stays.
    slot_kept_while_a_pod_may_run(
        "pods",
        &["delete", "job/first", "--cascade=orphan", "--wait=false"],
    )
    .await;
}

/// A Job suspended (here by a user) while a pod of it may still run keeps
/// its slot until that pod is gone, even when the Job's status counts no
/// pod: the Job controller counts a pod it created just before the
/// suspension only later (here it never does: none runs).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_jobs_slot_is_kept_while_a_pod_not_yet_counted_may_run() {
    slot_kept_while_a_pod_may_run(
        "paused",
        &[
            "patch",
            "job/first",
            "--type=merge",
            "-p",
            r#"{"spec":{"suspend":true}}"#,
        ],
    )
    .await;
}

/// Group `group` at limit 1: Job `first` is admitted and gets a pod (made
/// here as the Job controller would: labelled with the Job's UID; it stays
/// Pending), `second` waits, and `kubectl <end> -n <ns>` ends `first`.
/// Through five passes `second` stays suspended and `first` keeps its slot;
/// once the pod is deleted, `second` is admitted.
async fn slot_kept_while_a_pod_may_run(group: &str, end: &[&str]) {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    bed.group(group, ns, 1);
    create_jobs(&bed.kube, ns, group, &["first".to_string()]).await;
    let controller = ControllerProcess::start(&bed.cp, &bed.s3, "one", ns, true);
    let get = |what: &str, path: &str| {
        let out = bed
            .cp
            .kubectl(&["get", "-n", ns, what, "-o", &format!("jsonpath={path}")]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let kubectl_ok = |args: &[&str]| {
        let out = bed.cp.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    eventually(Duration::from_secs(60), "first admitted", || async {
        (get("job/first", "{.spec.suspend}") == "false").then_some(())
    })
    .await;
    let uid = get("job/first", "{.metadata.uid}");
    let pod = format!(
        "apiVersion: v1\nkind: Pod\nmetadata: {{name: first-pod, namespace: {ns}, labels: {{batch.kubernetes.io/controller-uid: {uid}}}}}\nspec:\n  terminationGracePeriodSeconds: 0\n  containers: [{{name: w, image: busybox}}]\n"
    );
    let out = bed.cp.kubectl_stdin(&["apply", "-f", "-"], &pod);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    create_jobs(&bed.kube, ns, group, &["second".to_string()]).await;
    kubectl_ok(&[end, &["-n", ns]].concat());
    // Several passes see the Job ended and its pod pending.
    let passes = metric(&controller, "jobgate_reconciles_total");
    eventually(Duration::from_secs(30), "five more passes", || async {
        (metric(&controller, "jobgate_reconciles_total") >= passes + 5).then_some(())
    })
    .await;
    assert_eq!(
        get("job/second", "{.spec.suspend}"),
        "true",
        "second admitted while first's pod may still run\n{}",
        controller.log_text()
    );
    let ledger = read_ledger(&bed.s3, &bed.bucket, &bed.key(group))
        .await
        .expect("ledger");
    assert!(ledger.holders.contains_key(&uid), "{ledger:?}");
    // The pod ends: the slot is freed and the next Job admitted.
    kubectl_ok(&[
        "delete",
        "-n",
        ns,
        "pod/first-pod",
        "--grace-period=0",
        "--force",
    ]);
    eventually(Duration::from_secs(30), "second admitted", || async {
        (get("job/second", "{.spec.suspend}") == "false").then_some(())
    })
    .await;
}
