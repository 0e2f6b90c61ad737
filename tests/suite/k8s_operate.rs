//! Day-2 operations end to end, counted on pods: a full cluster
//! (kube-apiserver, kube-controller-manager's Job controller,
//! kube-scheduler, kwok with held pods) and SeaweedFS, both shared by the
//! binary's tests (a namespace and a bucket each), and the controller.
//! Changing a limit at runtime (from the spec and from `jobgate limit`,
//! with a second cluster whose spec is stale), suspending a group,
//! deleting one cleanly (and the escapes when its ledger is gone), weighted
//! Jobs, and a Job whose group does not exist. The checker (`PodLog`) counts Jobs with
//! pods that may still run.

use std::process::Command;
use std::time::{Duration, Instant};

use jobgate_testkit::SeaweedFs;
use jobgate_testkit::faultproxy::{FaultProxy, Faults};
use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    Bed, ControllerProcess, GroupSpec, apply_credentials, apply_group_with, client,
    create_held_job, create_namespace, create_weighted_held_job, eventually, read_ledger,
};
use jobgate_testkit::pods::PodLog;
use serde_json::json;

const NS: &str = "batch";

fn group(
    cp: &ControlPlane,
    ns: &str,
    s3: &SeaweedFs,
    bucket: &str,
    name: &str,
    limit: u32,
    extra: serde_json::Value,
) {
    apply_group_with(
        cp,
        &GroupSpec {
            name,
            ns,
            limit,
            bucket,
            endpoint: &s3.endpoint,
            key: None,
            secret: None,
        },
        extra,
    );
}

/// `kubectl get cg NAME` columns: NAME LIMIT IN-USE HERE WAITING READY SUSPENDED READ AGE.
fn cg_columns(cp: &ControlPlane, ns: &str, name: &str) -> Vec<String> {
    let out = cp.kubectl(&["get", "cg", name, "-n", ns, "--no-headers"]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .map(str::to_string)
        .collect()
}

fn condition(cp: &ControlPlane, ns: &str, name: &str, type_: &str, field: &str) -> String {
    let path = format!("{{.status.conditions[?(@.type==\"{type_}\")].{field}}}");
    let out = cp.kubectl(&[
        "get",
        "cg",
        name,
        "-n",
        ns,
        "-o",
        &format!("jsonpath={path}"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn events_of(cp: &ControlPlane, ns: &str, object: &str) -> String {
    cp.events(ns, &format!("involvedObject.name={object}"))
}

fn has_pod(cp: &ControlPlane, ns: &str, job: &str) -> bool {
    let out = cp.kubectl(&[
        "get",
        "pods",
        "-n",
        ns,
        "-l",
        &format!("batch.kubernetes.io/job-name={job}"),
        "-o",
        "name",
    ]);
    !String::from_utf8_lossy(&out.stdout).trim().is_empty()
}

fn controller(
    cp: &ControlPlane,
    ns: &str,
    s3: &SeaweedFs,
    cluster: &str,
    extra: &[&str],
) -> ControllerProcess {
    let mut flags = vec!["--leader-elect=false"];
    flags.extend_from_slice(extra);
    ControllerProcess::start_with(cp, s3, cluster, ns, true, &flags, "")
}

fn jobgate_limit(s3: &SeaweedFs, url: &str, limit: &str) -> std::process::Output {
    Command::new(jobgate_testkit::jobgate_bin())
        .args(["limit", "--ledger", url, limit])
        .envs(s3.env())
        .output()
        .unwrap()
}

/// Limit 2 with six Jobs. East's spec is raised to 4: the ledger takes it
/// (recorded as east's), four Jobs run, and west (whose spec still says 2)
/// reports the disagreement without setting it back. `jobgate limit 1`
/// then lowers it with four running: nothing is stopped, and no Job starts
/// until fewer than one run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_changed_at_runtime_applies_everywhere_and_a_stale_cluster_does_not_set_it_back() {
    let bed = Bed::shared_held(NS).await;
    let (s3, bucket, east, kube, ns) =
        (&*bed.s3, &bed.bucket, &*bed.cp, &bed.kube, bed.ns.as_str());
    // West shares the ledger but runs no Jobs: a control plane is enough.
    let west = jobgate_testkit::shared::control_plane();
    let west_kube = client(west).await;
    // The same namespace as east's: the ledger key is made from it.
    create_namespace(&west_kube, ns).await;
    group(east, ns, s3, bucket, "lim", 2, json!({}));
    group(west, ns, s3, bucket, "lim", 2, json!({}));
    let pods = PodLog::default();
    pods.watch(kube.clone(), "east", ns);
    let _east_ctl = controller(east, ns, s3, "east", &[]);
    let _west_ctl = controller(west, ns, s3, "west", &[]);
    // The first two end after a while; the rest run until the end.
    for i in 0..6 {
        let run_for = (i < 2).then_some(Duration::from_secs(20));
        create_held_job(kube, ns, &format!("job-{i}"), "lim", 0, run_for).await;
    }
    eventually(Duration::from_secs(60), "two Jobs with pods", || async {
        (pods.running() == 2).then_some(())
    })
    .await;
    let waiting = eventually(Duration::from_secs(20), "a Waiting event", || async {
        let e = events_of(east, ns, "job-3");
        e.contains("Waiting").then_some(e)
    })
    .await;
    assert!(
        // The queue's length depends on how many Jobs existed at that pass.
        waiting.contains("position 2 of ")
            && waiting.contains("in this cluster's queue (1 ahead here)")
            && waiting.contains("in use 2/2 in all clusters (east 2)"),
        "{waiting}"
    );
    eventually(
        Duration::from_secs(20),
        "both clusters agree on 2",
        || async { (condition(west, ns, "lim", "LimitAgreed", "status") == "True").then_some(()) },
    )
    .await;

    let raised = Instant::now();
    east.kubectl_ok(&[
        "patch",
        "cg",
        "lim",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"limit":4}}"#,
    ]);
    eventually(Duration::from_secs(30), "four Jobs with pods", || async {
        (pods.running() == 4).then_some(())
    })
    .await;
    eprintln!(
        "raised to 4: four Jobs had pods {:?} later",
        raised.elapsed()
    );
    let key = &bed.key("lim");
    let ledger = read_ledger(s3, bucket, key).await.unwrap();
    let set = ledger.limit_set.clone().unwrap();
    assert_eq!(ledger.limit, 4);
    assert!(
        set.by.starts_with(&format!("east/{ns}/lim")) && set.previous == 2,
        "{set:?}"
    );
    // The limit in force in both clusters' `kubectl get cg`; the spec's in -o wide.
    eventually(
        Duration::from_secs(20),
        "LIMIT 4 in both clusters",
        || async {
            (cg_columns(east, ns, "lim").get(1).map(String::as_str) == Some("4")
                && cg_columns(west, ns, "lim").get(1).map(String::as_str) == Some("4"))
            .then_some(())
        },
    )
    .await;
    let wide = west.kubectl_ok(&["get", "cg", "lim", "-n", ns, "-o", "wide"]);
    assert!(
        wide.contains("SPEC-LIMIT") && wide.contains("SUSPENDED"),
        "{wide}"
    );
    let message = eventually(Duration::from_secs(20), "west disagrees", || async {
        (condition(west, ns, "lim", "LimitAgreed", "status") == "False")
            .then(|| condition(west, ns, "lim", "LimitAgreed", "message"))
    })
    .await;
    assert!(
        message.contains(&format!("spec.limit is 2 but the shared ledger's limit is 4, set by east/{ns}/lim from generation 2")),
        "{message}"
    );
    // West keeps passing (its poll is 300 ms) and must not set 2 back.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(read_ledger(s3, bucket, key).await.unwrap().limit, 4);
    assert_eq!(condition(east, ns, "lim", "LimitAgreed", "status"), "True");

    // Lowered below the four in use, from the CLI.
    let url = format!("s3://{bucket}/{key}");
    let out = jobgate_limit(s3, &url, "1");
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        said.contains("limit 4 -> 1 (4 in use); nothing is stopped"),
        "{said}"
    );
    let lowered = Instant::now();
    let message = eventually(
        Duration::from_secs(20),
        "east reports the CLI's change",
        || async {
            (condition(east, ns, "lim", "LimitAgreed", "status") == "False")
                .then(|| condition(east, ns, "lim", "LimitAgreed", "message"))
        },
    )
    .await;
    assert!(message.contains("set by jobgate-limit@"), "{message}");
    // The two Jobs that end after 20 s leave two running; nothing new may
    // start while one or more run.
    eventually(
        Duration::from_secs(60),
        "the two short Jobs ended",
        || async { (pods.running() == 2).then_some(()) },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert_eq!(pods.running(), 2, "a Job started above the lowered limit");
    assert_eq!(pods.rises_above(1, lowered), Vec::<usize>::new());
    assert_eq!(pods.rises_above(4, raised), Vec::<usize>::new());
    assert_eq!(pods.max(), 4, "{}", pods.summary(4));
    let bad = jobgate_limit(s3, &url, "0");
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert_eq!(
        read_ledger(s3, bucket, key).await.unwrap().limit,
        1,
        "{err}"
    );
}

/// A suspended group admits nothing new while admitted Jobs run to their
/// end; waiting Jobs are told why and keep their place; resumed, it admits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_suspended_group_lets_admitted_jobs_finish_and_admits_nothing_until_resumed() {
    let bed = Bed::shared_held(NS).await;
    let (s3, bucket, cp, kube, ns) = (&*bed.s3, &bed.bucket, &*bed.cp, &bed.kube, bed.ns.as_str());
    group(cp, ns, s3, bucket, "pause", 2, json!({}));
    let pods = PodLog::default();
    pods.watch(kube.clone(), "one", ns);
    let _ctl = controller(cp, ns, s3, "one", &[]);
    for i in 0..4 {
        create_held_job(
            kube,
            ns,
            &format!("p-{i}"),
            "pause",
            0,
            Some(Duration::from_secs(6)),
        )
        .await;
    }
    eventually(Duration::from_secs(60), "two Jobs with pods", || async {
        (pods.running() == 2).then_some(())
    })
    .await;
    cp.kubectl_ok(&[
        "patch",
        "cg",
        "pause",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    let suspended = Instant::now();
    eventually(Duration::from_secs(20), "SUSPENDED True", || async {
        (cg_columns(cp, ns, "pause").get(6).map(String::as_str) == Some("True")).then_some(())
    })
    .await;
    assert_eq!(
        condition(cp, ns, "pause", "Suspended", "reason"),
        "SuspendedBySpec"
    );
    eventually(
        Duration::from_secs(60),
        "the admitted Jobs ended",
        || async { (pods.running() == 0).then_some(()) },
    )
    .await;
    // Slots are free, and still nothing is admitted.
    tokio::time::sleep(Duration::from_secs(4)).await;
    assert!(
        !has_pod(cp, ns, "p-2") && !has_pod(cp, ns, "p-3"),
        "admitted while suspended"
    );
    assert_eq!(
        pods.rises_above(0, suspended + Duration::from_secs(1)),
        Vec::<usize>::new()
    );
    let events = events_of(cp, ns, "p-3");
    assert!(events.contains("GroupSuspended"), "{events}");
    let ledger = read_ledger(s3, bucket, &bed.key("pause")).await.unwrap();
    assert!(ledger.holders.is_empty(), "{ledger:?}");
    assert!(
        ledger.agents.values().all(|a| a.waiting == 0),
        "a suspended group must not make others defer: {ledger:?}"
    );

    cp.kubectl_ok(&[
        "patch",
        "cg",
        "pause",
        "-n",
        ns,
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    eventually(Duration::from_secs(30), "resumed and admitting", || async {
        (has_pod(cp, ns, "p-2") && has_pod(cp, ns, "p-3")).then_some(())
    })
    .await;
    assert_eq!(condition(cp, ns, "pause", "Suspended", "status"), "False");
    assert!(pods.max() <= 2, "{}", pods.summary(2));
}

/// A deleted group admits nothing new, waits for its admitted Jobs' pods
/// to stop, gives each slot back, takes its agent out of the ledger, and
/// only then goes. The escapes: a group whose ledger cannot be read goes
/// after `--deletion-timeout`, and `jobgate.dev/abandon-slots` lets one go at once.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_deleted_group_gives_its_slots_back_before_it_goes() {
    let bed = Bed::shared_held(NS).await;
    let (s3, bucket, cp, kube, ns) = (&*bed.s3, &bed.bucket, &*bed.cp, &bed.kube, bed.ns.as_str());
    group(cp, ns, s3, bucket, "gone", 2, json!({}));
    let pods = PodLog::default();
    pods.watch(kube.clone(), "one", ns);
    let ctl = controller(cp, ns, s3, "one", &["--deletion-timeout=8s"]);
    for i in 0..3 {
        create_held_job(
            kube,
            ns,
            &format!("d-{i}"),
            "gone",
            0,
            Some(Duration::from_secs(8)),
        )
        .await;
    }
    eventually(Duration::from_secs(60), "two Jobs with pods", || async {
        (pods.running() == 2).then_some(())
    })
    .await;
    let finalizers = cp.kubectl_ok(&[
        "get",
        "cg",
        "gone",
        "-n",
        ns,
        "-o",
        "jsonpath={.metadata.finalizers}",
    ]);
    assert!(
        finalizers.contains("jobgate.dev/release-slots"),
        "{finalizers}"
    );
    cp.kubectl_ok(&["delete", "cg", "gone", "-n", ns, "--wait=false"]);
    let deleted = Instant::now();
    eventually(Duration::from_secs(20), "Suspended: Deleting", || async {
        (condition(cp, ns, "gone", "Suspended", "reason") == "Deleting").then_some(())
    })
    .await;
    let events = eventually(
        Duration::from_secs(20),
        "the waiting Job is told",
        || async {
            let e = events_of(cp, ns, "d-2");
            e.contains("GroupDeleting").then_some(e)
        },
    )
    .await;
    assert!(events.contains("is being deleted"), "{events}");
    // Still there while its Jobs run: the finalizer holds it.
    let key = &bed.key("gone");
    assert_eq!(read_ledger(s3, bucket, key).await.unwrap().holders.len(), 2);
    eventually(Duration::from_secs(60), "the group is gone", || async {
        let out = cp.kubectl(&["get", "cg", "gone", "-n", ns]);
        (!out.status.success()).then_some(())
    })
    .await;
    let took = deleted.elapsed();
    assert_eq!(pods.running(), 0, "the group went while its Jobs' pods ran");
    let ledger = read_ledger(s3, bucket, key).await.unwrap();
    assert!(
        ledger.holders.is_empty() && ledger.agents.is_empty(),
        "{ledger:?}"
    );
    assert!(!has_pod(cp, ns, "d-2"), "admitted while being deleted");
    assert!(pods.max() <= 2, "{}", pods.summary(2));
    eprintln!("deleted with two running Jobs: gone {took:?} later, ledger empty");

    // Its credentials Secret deleted with it (as when a namespace goes): the
    // client it has gives its slot back once the Job's pod has stopped.
    apply_credentials(cp, ns, "creds", s3);
    let with_secret = |name: &'static str, endpoint: &str| {
        apply_group_with(
            cp,
            &GroupSpec {
                name,
                ns,
                limit: 1,
                bucket,
                endpoint,
                key: None,
                secret: Some("creds"),
            },
            json!({}),
        )
    };
    with_secret("sec", &s3.endpoint);
    create_held_job(kube, ns, "s-0", "sec", 0, Some(Duration::from_secs(4))).await;
    eventually(Duration::from_secs(30), "s-0 runs", || async {
        has_pod(cp, ns, "s-0").then_some(())
    })
    .await;
    cp.kubectl_ok(&["delete", "secret", "creds", "-n", ns]);
    cp.kubectl_ok(&["delete", "cg", "sec", "-n", ns, "--wait=false"]);
    eventually(
        Duration::from_secs(40),
        "the group with no Secret is gone",
        || async { (!cp.kubectl(&["get", "cg", "sec", "-n", ns]).status.success()).then_some(()) },
    )
    .await;
    let events = events_of(cp, ns, "sec");
    assert!(
        events.contains("SlotsReleased") && !events.contains("SlotsAbandoned"),
        "{events}"
    );
    let ledger = read_ledger(s3, bucket, &bed.key("sec")).await.unwrap();
    assert!(
        ledger.holders.is_empty() && ledger.agents.is_empty(),
        "{ledger:?}"
    );

    // The ledger cannot be reached (a partition between the controller and
    // S3): the finalizer goes after the timeout, with a Warning.
    apply_credentials(cp, ns, "creds", s3);
    let proxy = FaultProxy::start(&s3.endpoint, Faults::default()).await;
    with_secret("lost", &proxy.endpoint);
    create_held_job(kube, ns, "l-0", "lost", 0, None).await;
    eventually(Duration::from_secs(30), "l-0 runs", || async {
        has_pod(cp, ns, "l-0").then_some(())
    })
    .await;
    proxy.partition(true);
    cp.kubectl_ok(&["delete", "cg", "lost", "-n", ns, "--wait=false"]);
    let deleted = Instant::now();
    while cp
        .kubectl(&["get", "cg", "lost", "-n", ns])
        .status
        .success()
    {
        if deleted.elapsed() > Duration::from_secs(60) {
            let log = ctl.log_text();
            let tail: Vec<&str> = log.lines().rev().take(40).collect();
            panic!(
                "the unreachable group is still there after 60 s:\n{}",
                tail.join("\n")
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let took = deleted.elapsed();
    assert!(
        took >= Duration::from_secs(7),
        "went before the timeout: {took:?}"
    );
    let events = events_of(cp, ns, "lost");
    assert!(
        events.contains("SlotsAbandoned") && events.contains("could not be used"),
        "{events}"
    );
    eprintln!("unreachable ledger: the group went {took:?} after its deletion (timeout 8 s)");

    // The annotation: at once, whatever is held.
    group(cp, ns, s3, bucket, "quick", 1, json!({}));
    create_held_job(kube, ns, "q-0", "quick", 0, None).await;
    eventually(Duration::from_secs(30), "q-0 runs", || async {
        has_pod(cp, ns, "q-0").then_some(())
    })
    .await;
    cp.kubectl_ok(&[
        "annotate",
        "cg",
        "quick",
        "-n",
        ns,
        "jobgate.dev/abandon-slots=true",
    ]);
    cp.kubectl_ok(&["delete", "cg", "quick", "-n", ns, "--wait=false"]);
    eventually(
        Duration::from_secs(20),
        "the abandoned group is gone",
        || async {
            (!cp.kubectl(&["get", "cg", "quick", "-n", ns])
                .status
                .success())
            .then_some(())
        },
    )
    .await;
    let events = events_of(cp, ns, "quick");
    assert!(
        events.contains("SlotsAbandoned") && events.contains("1 held here"),
        "{events}"
    );
    drop(ctl);
}

/// A Job naming a group that does not exist gets a Warning and is counted
/// in `jobgate_jobs_without_group`; once the group exists it is admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_whose_group_does_not_exist_is_warned_and_counted() {
    let bed = Bed::shared_held(NS).await;
    let (s3, bucket, cp, kube, ns) = (&*bed.s3, &bed.bucket, &*bed.cp, &bed.kube, bed.ns.as_str());
    let pods = PodLog::default();
    pods.watch(kube.clone(), "one", ns);
    // The idle sweep once a minute, as by default: the metric must clear
    // when the group appears, not at the next sweep.
    let ctl = controller(cp, ns, s3, "one", &["--poll-idle=60s"]);
    create_held_job(kube, ns, "orphan", "typo", 0, None).await;
    let events = eventually(
        Duration::from_secs(30),
        "a GroupNotFound warning",
        || async {
            let e = events_of(cp, ns, "orphan");
            e.contains("GroupNotFound").then_some(e)
        },
    )
    .await;
    assert!(
        events.contains(&format!("\"typo\" does not exist in namespace {ns}")),
        "{events}"
    );
    let metric = &format!(r#"jobgate_jobs_without_group{{namespace="{ns}",group="typo"}} 1"#);
    eventually(Duration::from_secs(20), "the metric", || async {
        ctl.metrics().contains(metric).then_some(())
    })
    .await;
    group(cp, ns, s3, bucket, "typo", 1, json!({}));
    let created = std::time::Instant::now();
    eventually(Duration::from_secs(20), "the metric cleared", || async {
        (!ctl.metrics().contains(metric)).then_some(())
    })
    .await;
    let cleared = created.elapsed();
    eprintln!("jobs_without_group cleared {cleared:?} after the group was created");
    eventually(
        Duration::from_secs(30),
        "admitted once the group exists",
        || async { has_pod(cp, ns, "orphan").then_some(()) },
    )
    .await;
    // The sweep after a group appears waits 2 s (it gathers bursts).
    assert!(
        cleared < Duration::from_secs(10),
        "jobs_without_group cleared {cleared:?} after the group was created"
    );
    assert_eq!(pods.max(), 1);
}

/// Weighted Jobs at limit 4, counted in units on pods: a (2 units) runs;
/// b (3) does not fit beside it, and the light Jobs created after b wait
/// behind it rather than pass it; when a ends, b and c (1) run together.
/// A Job asking for more units than the limit is refused and holds no one
/// back. While b holds its units the ledger is schema v2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn weighted_jobs_take_their_units_in_order_and_never_exceed_the_limit() {
    let bed = Bed::shared_held(NS).await;
    let (s3, bucket, cp, kube, ns) = (&*bed.s3, &bed.bucket, &*bed.cp, &bed.kube, bed.ns.as_str());
    group(cp, ns, s3, bucket, "heavy", 4, json!({}));
    let pods = PodLog::default();
    pods.watch(kube.clone(), "one", ns);
    let run = Some(Duration::from_secs(6));
    create_weighted_held_job(kube, ns, "huge", "heavy", 0, None, Some(9)).await;
    for (name, units) in [("a", 2), ("b", 3), ("c", 1), ("d", 1), ("e", 1)] {
        create_weighted_held_job(kube, ns, name, "heavy", 0, run, Some(units)).await;
    }
    let _ctl = controller(cp, ns, s3, "one", &[]);
    eventually(Duration::from_secs(60), "a's pod", || async {
        has_pod(cp, ns, "a").then_some(())
    })
    .await;
    // a runs alone: b needs 3 of the 2 free, and c, d, e wait behind b.
    tokio::time::sleep(Duration::from_secs(3)).await;
    for waiting in ["b", "c", "d", "e"] {
        assert!(
            !has_pod(cp, ns, waiting),
            "{waiting} started while a ran alone"
        );
    }
    assert_eq!(pods.running(), 2, "{}", pods.summary(4));
    let events = events_of(cp, ns, "huge");
    assert!(
        events.contains("InvalidSlots") && events.contains("more than the group's limit 4"),
        "{events}"
    );
    eventually(Duration::from_secs(30), "b and c run together", || async {
        (has_pod(cp, ns, "b") && has_pod(cp, ns, "c") && pods.running() == 4).then_some(())
    })
    .await;
    let key = &bed.key("heavy");
    let ledger = read_ledger(s3, bucket, key).await.unwrap();
    assert_eq!(ledger.schema, "jobgate.dev/ledger/v2", "{ledger:?}");
    assert_eq!(ledger.in_use(), 4, "{ledger:?}");
    eventually(Duration::from_secs(60), "d and e done", || async {
        let done = |j: &str| {
            let out = cp.kubectl(&[
                "get",
                "job",
                j,
                "-n",
                ns,
                "-o",
                "jsonpath={.status.succeeded}",
            ]);
            String::from_utf8_lossy(&out.stdout).trim() == "1"
        };
        (done("d") && done("e")).then_some(())
    })
    .await;
    let cg = cg_columns(cp, ns, "heavy");
    assert_eq!(cg.get(1).map(String::as_str), Some("4"), "{cg:?}");
    eprintln!("{}", pods.summary(4));
    assert_eq!(pods.max(), 4, "units in use never reached the limit");
    assert_eq!(pods.time_over(4), Duration::ZERO, "{}", pods.summary(4));
    assert!(!has_pod(cp, ns, "huge"));
    // Back to one unit per holder: schema v1 again, readable by older binaries.
    let ledger = read_ledger(s3, bucket, key).await.unwrap();
    assert_eq!(ledger.schema, "jobgate.dev/ledger/v1", "{ledger:?}");
}
