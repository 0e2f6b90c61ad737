//! Who may resume a Job of a group, counted on pods: the binary's shared
//! full cluster (kwok's held pods, which run until their Job is suspended
//! and then take their whole grace period), SeaweedFS, and the controller.
//! Only the controller resumes such a Job: the webhook keeps anyone else's
//! resume suspended (a user's `kubectl patch`, a GitOps tool re-applying
//! `suspend: false`), and without the webhook the controller suspends it
//! again at once, whatever `onLeaseLoss` says.

use std::process::Output;
use std::time::{Duration, Instant};

use serde_json::json;

use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    Bed, ControllerProcess, create_held_job, create_job, eventually, evict_and_take,
};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::testbed::free_port;
use jobgate_testkit::webhook::Registration;

const NS: &str = "resume";
/// The held pods' grace period: how long a suspended Job's pod takes to go.
const GRACE_SECONDS: u32 = 1;

/// Group `group` at limit 1 in the bed's namespace, admitting Jobs whose
/// pods take up to 5 s to stop; `extra` is merged into its spec.
fn limit_one(bed: &Bed, group: &str, extra: serde_json::Value) {
    let mut spec = json!({"leaseSeconds": 20, "maxGracePeriodSeconds": 5});
    if let (Some(spec), Some(extra)) = (spec.as_object_mut(), extra.as_object()) {
        spec.extend(extra.clone());
    }
    bed.group_with(group, 1, spec);
}

/// The webhook registered for the bed's namespace only, with
/// `failure_policy`, and sent the controller's own requests too (the
/// webhook itself must tell them apart); and a controller serving it.
/// Returns the configuration's name, to delete it at the end.
async fn with_webhook(bed: &Bed, failure_policy: &str) -> (ControllerProcess, String) {
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    let name = format!("jobgate-{ns}");
    let webhook = Registration {
        name: &name,
        port: free_port(),
        failure_policy,
        namespace: Some(ns),
        kinds: &[],
        controller_user: None,
    };
    webhook.apply(cp);
    let mut flags = vec!["--leader-elect=false".to_string()];
    flags.extend(webhook.controller_flags(ns));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with(cp, &bed.s3, "one", ns, true, &flags, "");
    webhook.ready(cp, &controller).await;
    (controller, name)
}

/// kubectl in the bed's namespace as someone other than the controller (a
/// user, a dashboard, a GitOps tool): the admin impersonating `user`, in a
/// group that may do anything.
fn kubectl_as(cp: &ControlPlane, user: &str, ns: &str, args: &[&str]) -> Output {
    let mut all = vec!["--as", user, "--as-group", "system:masters", "-n", ns];
    all.extend_from_slice(args);
    cp.kubectl(&all)
}

/// Sets `spec.suspend` of Job `job` as `user`; its standard error (the
/// API server's warnings).
fn set_suspend(cp: &ControlPlane, user: &str, ns: &str, job: &str, suspend: bool) -> String {
    let patch = format!(r#"{{"spec":{{"suspend":{suspend}}}}}"#);
    let out = kubectl_as(
        cp,
        user,
        ns,
        &["patch", &format!("job/{job}"), "--type=merge", "-p", &patch],
    );
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert!(out.status.success(), "kubectl patch {job}: {stderr}");
    stderr
}

fn job_field(cp: &ControlPlane, ns: &str, job: &str, path: &str) -> String {
    let out = cp.kubectl(&[
        "get",
        "-n",
        ns,
        &format!("job/{job}"),
        "-o",
        &format!("jsonpath={path}"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

async fn until_suspend_is(cp: &ControlPlane, ns: &str, job: &str, suspend: bool, within: Duration) {
    let want = suspend.to_string();
    eventually(
        within,
        &format!("{job} with suspend: {suspend}"),
        || async { (job_field(cp, ns, job, "{.spec.suspend}") == want).then_some(()) },
    )
    .await;
}

async fn until_running(pods: &PodLog, n: usize) {
    eventually(
        Duration::from_secs(60),
        &format!("{n} Jobs with live pods"),
        || async { (pods.running() == n).then_some(()) },
    )
    .await;
}

/// A GitOps tool re-applies `suspend: false` to a waiting Job every quarter
/// second for ten seconds: the webhook keeps it suspended each time, and
/// the group never has two Jobs with pods. A Job paused and resumed by a
/// user waits for a slot, and the controller resumes both in turn.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_keeps_resuming_a_waiting_job_never_takes_the_group_over_its_limit() {
    let bed = Bed::shared_held(NS).await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    limit_one(&bed, "gated", json!({}));
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "one", ns);
    let (controller, name) = with_webhook(&bed, "Fail").await;

    create_held_job(&bed.kube, ns, "first", "gated", GRACE_SECONDS, None).await;
    until_running(&pods, 1).await;
    until_suspend_is(cp, ns, "first", false, Duration::from_secs(30)).await;
    create_held_job(&bed.kube, ns, "second", "gated", GRACE_SECONDS, None).await;

    let resumes = 40;
    let mut warnings = Vec::new();
    for _ in 0..resumes {
        warnings.push(set_suspend(cp, "gitops", ns, "second", false));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    assert!(
        pods.max() <= 1,
        "limit 1 exceeded on pods while a client kept resuming: {}\n{}",
        pods.summary(1),
        controller.log_text()
    );
    assert_eq!(job_field(cp, ns, "second", "{.spec.suspend}"), "true");
    // Each time, the client is told why.
    assert!(
        warnings
            .iter()
            .all(|w| w.contains("only jobgate resumes Jobs of ConcurrencyGroup gated")),
        "{warnings:?}"
    );

    // A user pauses the running Job: it stops, its slot goes to the other.
    set_suspend(cp, "alice", ns, "first", true);
    until_suspend_is(cp, ns, "second", false, Duration::from_secs(60)).await;
    until_running(&pods, 1).await;
    // Resumed by the user, it waits for a slot; the controller resumes it
    // once the other Job is gone.
    let warning = set_suspend(cp, "alice", ns, "first", false);
    assert!(warning.contains("kept true"), "no warning: {warning}");
    assert_eq!(job_field(cp, ns, "first", "{.spec.suspend}"), "true");
    cp.kubectl_ok(&["delete", "-n", ns, "job/second", "--wait=false"]);
    until_suspend_is(cp, ns, "first", false, Duration::from_secs(60)).await;
    until_running(&pods, 1).await;
    assert!(
        pods.max() <= 1,
        "limit 1 exceeded on pods: {}\n{}",
        pods.summary(1),
        controller.log_text()
    );
    let kept = controller
        .metrics()
        .lines()
        .find(|l| l.starts_with("jobgate_webhook_reviews_total{verdict=\"kept_suspended\"}"))
        .and_then(|l| l.rsplit(' ').next()?.parse::<u64>().ok());
    assert_eq!(kept, Some(resumes + 1));
    eprintln!("{}", pods.summary(1));
    cp.kubectl(&["delete", "mutatingwebhookconfiguration", &name]);
}

/// Without the webhook (`failurePolicy: Ignore` during an outage, or none
/// installed), under `onLeaseLoss: Keep`: a Job that lost its slot while it
/// ran is kept running over the limit, as documented. A user suspends it to
/// end that; resumed while the slot is still taken, it is suspended again
/// at once, not kept over the limit for the rest of its run as if it had
/// just lost its slot. Its pod counts from the resume until it has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_keep_a_job_suspended_after_losing_its_slot_and_resumed_waits_for_a_slot() {
    let bed = Bed::shared_held(NS).await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    limit_one(&bed, "keep", json!({"onLeaseLoss": "Keep"}));
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "one", ns);
    let controller =
        ControllerProcess::start_with(cp, &bed.s3, "one", ns, true, &["--leader-elect=false"], "");
    create_held_job(&bed.kube, ns, "first", "keep", GRACE_SECONDS, None).await;
    until_suspend_is(cp, ns, "first", false, Duration::from_secs(60)).await;
    until_running(&pods, 1).await;

    // Another cluster finds this one's lease run out and takes the slot:
    // the Job keeps running over the limit, as onLeaseLoss: Keep says.
    let agent = format!("one/{ns}/keep");
    evict_and_take(
        &bed.s3,
        &bed.bucket,
        &bed.key("keep"),
        &agent,
        "west/x/keep",
        "elsewhere",
    )
    .await;
    eventually(
        Duration::from_secs(30),
        "first kept over the limit",
        || async {
            cp.events(ns, "reason=OverLimit")
                .contains("OverLimit")
                .then_some(())
        },
    )
    .await;
    assert_eq!(job_field(cp, ns, "first", "{.spec.suspend}"), "false");

    // A user suspends it; its pod stops.
    set_suspend(cp, "alice", ns, "first", true);
    until_running(&pods, 0).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Resumed with the slot still taken.
    let resumed = Instant::now();
    set_suspend(cp, "alice", ns, "first", false);
    until_suspend_is(cp, ns, "first", true, Duration::from_secs(20)).await;
    let suspended_after = resumed.elapsed();
    until_running(&pods, 0).await;
    // Long enough for a Job kept over the limit to show.
    tokio::time::sleep(Duration::from_secs(5)).await;
    let over = pods.time_over_since(0, resumed);
    eprintln!(
        "resumed by a user with the slot taken: suspended again {suspended_after:?} after; its pod ran {over:?}; {}",
        pods.summary(1)
    );
    // The resume's pod lives from its start until its grace period after
    // the controller's suspension.
    assert!(
        over < Duration::from_secs(5),
        "ran {over:?} after the resume: {}\n{}",
        pods.summary(1),
        controller.log_text()
    );
    assert_eq!(job_field(cp, ns, "first", "{.spec.suspend}"), "true");
}

/// `failurePolicy: Ignore` with the controller down, and with it the
/// webhook: a labelled Job created then starts at once, over the limit,
/// until the controller is back and suspends it. Measured: how long after
/// the controller's restart its pods are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_failure_policy_ignore_a_job_created_during_an_outage_runs_until_the_controller_is_back()
 {
    let bed = Bed::shared_held(NS).await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    limit_one(&bed, "ignored", json!({}));
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "one", ns);
    let (mut controller, name) = with_webhook(&bed, "Ignore").await;
    create_held_job(&bed.kube, ns, "first", "ignored", GRACE_SECONDS, None).await;
    until_running(&pods, 1).await;

    controller.kill9();
    let outage = Instant::now();
    create_job(&bed.kube, ns, "second", "ignored", false).await;
    until_running(&pods, 2).await;
    let started = outage.elapsed();
    tokio::time::sleep(Duration::from_secs(5)).await;
    let back = Instant::now();
    controller.restart();
    until_running(&pods, 1).await;
    let stopped = back.elapsed();
    eprintln!(
        "failurePolicy Ignore: the Job created {started:?} into the outage ran at once; its pods were gone {stopped:?} after the controller's restart; {}",
        pods.summary(1)
    );
    assert_eq!(job_field(cp, ns, "second", "{.spec.suspend}"), "true");
    assert_eq!(job_field(cp, ns, "first", "{.spec.suspend}"), "false");
    assert!(
        stopped < Duration::from_secs(20),
        "{stopped:?}\n{}",
        controller.log_text()
    );
    cp.kubectl(&["delete", "mutatingwebhookconfiguration", &name]);
}

/// A Job of a group that also names a Kueue queue: Kueue suspends and
/// resumes it, so jobgate neither admits it (the group's free slot goes to
/// another Job) nor keeps Kueue's resume from taking effect, and tells it
/// why in a Warning Event.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_in_a_kueue_queue_is_left_to_kueue_and_told_why() {
    let bed = Bed::shared_held(NS).await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    limit_one(&bed, "both", json!({}));
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "one", ns);
    let (controller, name) = with_webhook(&bed, "Fail").await;
    // Created with both labels, as a user would write it.
    let queued: k8s_openapi::api::batch::v1::Job = serde_json::from_value(json!({
        "metadata": {"name": "queued", "labels": {
            "jobgate.dev/group": "both",
            "kueue.x-k8s.io/queue-name": "main",
        }},
        "spec": {
            "suspend": true,
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": GRACE_SECONDS,
                "containers": [{"name": "work", "image": "busybox", "command": ["sleep", "inf"]}],
            }},
        },
    }))
    .unwrap();
    kube::Api::<k8s_openapi::api::batch::v1::Job>::namespaced(bed.kube.clone(), ns)
        .create(&Default::default(), &queued)
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "the ManagedByKueue Event",
        || async {
            let text = cp.events(ns, "reason=ManagedByKueue,involvedObject.name=queued");
            text.contains("Remove one of the two labels")
                .then_some(text)
        },
    )
    .await;
    // The free slot goes to a Job of jobgate's own.
    create_held_job(&bed.kube, ns, "plain", "both", GRACE_SECONDS, None).await;
    until_suspend_is(cp, ns, "plain", false, Duration::from_secs(30)).await;
    assert_eq!(job_field(cp, ns, "queued", "{.spec.suspend}"), "true");
    // Kueue resumes its Job: the webhook lets it, and jobgate leaves it
    // running (Kueue's limit, not the group's, applies to it).
    let warning = set_suspend(
        cp,
        "system:serviceaccount:kueue-system:kueue",
        ns,
        "queued",
        false,
    );
    assert!(!warning.contains("kept true"), "{warning}");
    until_running(&pods, 2).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        job_field(cp, ns, "queued", "{.spec.suspend}"),
        "false",
        "{}",
        controller.log_text()
    );
    cp.kubectl(&["delete", "mutatingwebhookconfiguration", &name]);
}
