//! The Job webhook against a real kube-apiserver: labelled Jobs created
//! without `suspend` come back suspended and are admitted under the limit;
//! unlabelled Jobs never reach the webhook; with the webhook down,
//! unlabelled Jobs are still created and labelled ones follow the
//! configuration's `failurePolicy`. Also CronJobs: kube-controller-manager's
//! cronjob controller creates labelled Jobs, which are gated like any other.
//!
//! The webhook configuration here calls a URL on loopback (the controller
//! runs as a process); the chart's Service-based configuration is covered
//! by tests/helm_chart.rs.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::{Api, ListParams};

use jobgate_testkit::operator::{Bed, ControllerProcess, create_job, eventually};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::testbed::free_port;
use jobgate_testkit::webhook::{Registration, admin_user};

const NS: &str = "batch";
const CONFIG: &str = "jobgate-test";

/// A Job manifest without `suspend`, as a user would write it.
fn plain_job(name: &str, group: Option<&str>) -> String {
    let labels = group
        .map(|g| format!("  labels:\n    jobgate.dev/group: {g}\n"))
        .unwrap_or_default();
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  namespace: {NS}\n{labels}spec:\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 0\n      containers:\n        - name: work\n          image: busybox\n          command: [\"true\"]\n"
    )
}

/// The names of the succeeded Jobs of `group`.
async fn succeeded(jobs: &Api<Job>, group: &str) -> Option<Vec<String>> {
    let selector = format!("jobgate.dev/group={group}");
    let list = jobs
        .list(&ListParams::default().labels(&selector))
        .await
        .ok()?;
    Some(
        list.items
            .into_iter()
            .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
            .filter_map(|j| j.metadata.name)
            .collect(),
    )
}

fn suspend_of(job: &serde_json::Value) -> Option<bool> {
    job["spec"]["suspend"].as_bool()
}

fn metric(text: &str, line_start: &str) -> f64 {
    text.lines()
        .find(|l| l.starts_with(line_start))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

/// The webhook registered as the chart does (for the control plane's admin
/// user, whom the controller runs as), and a controller serving it.
fn registration<'a>(port: u16, failure_policy: &'a str, admin: &'a str) -> Registration<'a> {
    Registration {
        name: CONFIG,
        port,
        failure_policy,
        namespace: None,
        kinds: &[],
        controller_user: Some(admin),
    }
}

fn webhook_controller(bed: &Bed, webhook: &Registration) -> ControllerProcess {
    let mut flags = vec!["--leader-elect=false".to_string()];
    flags.extend(webhook.controller_flags(NS));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    ControllerProcess::start_with(&bed.cp, &bed.s3, "one", NS, true, &flags, "")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn labelled_jobs_are_created_suspended_and_an_outage_blocks_only_them() {
    let bed = Bed::start(NS, true).await;
    let (cp, kube) = (&bed.cp, &bed.kube);
    bed.group("etl", NS, 1);
    // Counted on pods: every Job's but the unlabelled ones, which run
    // outside the limit by design.
    let pods = PodLog::default();
    pods.watch_selected(kube.clone(), "one", NS, "job-name notin (other-0,other-1)");
    let port = free_port();
    let admin = admin_user(cp);
    let webhook = registration(port, "Fail", &admin);
    webhook.apply(cp);
    let mut controller = webhook_controller(&bed, &webhook);
    webhook.ready(cp, &controller).await;

    // A labelled Job written without `suspend`: created suspended, and
    // kubectl shows the webhook's warning.
    let out = cp.kubectl_stdin(
        &["create", "-o", "json", "-f", "-"],
        &plain_job("etl-0", Some("etl")),
    );
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert!(out.status.success(), "{stderr}\n{}", controller.log_text());
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(suspend_of(&created), Some(true), "{created}");
    assert!(stderr.contains("created suspended"), "no warning: {stderr}");
    // The same through the API, with `suspend: false` written out.
    for i in 1..4 {
        let job = create_job(kube, NS, &format!("etl-{i}"), "etl", false).await;
        assert_eq!(job.spec.unwrap().suspend, Some(true));
    }
    // An unlabelled Job is untouched.
    let out = cp.kubectl_stdin(
        &["create", "-o", "json", "-f", "-"],
        &plain_job("other-0", None),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(suspend_of(&created), Some(true), "{created}");

    // All four are admitted one at a time and complete; the ledger drains.
    let jobs: Api<Job> = Api::namespaced(kube.clone(), NS);
    eventually(
        Duration::from_secs(90),
        "four labelled Jobs complete",
        || async { (succeeded(&jobs, "etl").await?.len() == 4).then_some(()) },
    )
    .await;
    bed.ledger_drains("jobgate/batch/etl.json").await;
    assert!(
        pods.max() <= 1,
        "limit 1 exceeded on pods: {}",
        pods.summary(1)
    );

    let metrics = controller.metrics();
    assert_eq!(
        metric(
            &metrics,
            "jobgate_webhook_reviews_total{verdict=\"suspended\"}"
        ),
        4.0,
        "{metrics}"
    );
    // The objectSelector keeps unlabelled Jobs away from the webhook, and
    // the match conditions the controller's own resumes.
    assert_eq!(
        metric(
            &metrics,
            "jobgate_webhook_reviews_total{verdict=\"unchanged\"}"
        ),
        0.0,
        "{metrics}"
    );

    // The webhook down, failurePolicy Fail: unlabelled Jobs are created,
    // labelled ones are refused with the reason.
    controller.kill9();
    let out = cp.kubectl_stdin(&["create", "-f", "-"], &plain_job("other-1", None));
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp.kubectl_stdin(&["create", "-f", "-"], &plain_job("etl-down", Some("etl")));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success(),
        "a labelled Job was created while the webhook was down"
    );
    assert!(stderr.contains("suspend.jobs.jobgate.dev"), "{stderr}");

    // failurePolicy Ignore: the labelled Job is created as written,
    // unsuspended; the controller, once back, adopts it into a slot.
    registration(port, "Ignore", &admin).apply(cp);
    let out = cp.kubectl_stdin(
        &["create", "-o", "json", "-f", "-"],
        &plain_job("etl-down", Some("etl")),
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_ne!(suspend_of(&created), Some(true), "{created}");
    controller.restart();
    eventually(Duration::from_secs(60), "etl-down complete", || async {
        let j = jobs.get("etl-down").await.ok()?;
        (j.status?.succeeded.unwrap_or(0) > 0).then_some(())
    })
    .await;
    assert!(
        pods.max() <= 1,
        "limit 1 exceeded on pods: {}",
        pods.summary(1)
    );
}

/// Two CronJobs whose Jobs carry the group label, every minute, against a
/// limit of 1: the cronjob controller creates them, the webhook suspends
/// them, and they run one at a time and complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cronjob_jobs_are_gated_like_any_job() {
    let bed = Bed::start(NS, true).await;
    let (cp, kube) = (&bed.cp, &bed.kube);
    bed.group("nightly", NS, 1);
    let pods = PodLog::default();
    pods.watch(kube.clone(), "one", NS);
    let admin = admin_user(cp);
    let webhook = registration(free_port(), "Fail", &admin);
    webhook.apply(cp);
    let controller = webhook_controller(&bed, &webhook);
    webhook.ready(cp, &controller).await;

    for name in ["report-a", "report-b"] {
        let out = cp.kubectl_stdin(
            &["apply", "-f", "-"],
            &format!(
                "apiVersion: batch/v1\nkind: CronJob\nmetadata:\n  name: {name}\n  namespace: {NS}\nspec:\n  schedule: \"* * * * *\"\n  concurrencyPolicy: Forbid\n  jobTemplate:\n    metadata:\n      labels:\n        jobgate.dev/group: nightly\n    spec:\n      template:\n        spec:\n          restartPolicy: Never\n          terminationGracePeriodSeconds: 0\n          containers:\n            - name: work\n              image: busybox\n              command: [\"true\"]\n"
            ),
        );
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    // The first tick is at most a minute away.
    let jobs: Api<Job> = Api::namespaced(kube.clone(), NS);
    eventually(
        Duration::from_secs(150),
        "a completed Job from each CronJob",
        || async {
            let done = succeeded(&jobs, "nightly").await?;
            let of = |cron: &str| done.iter().any(|n| n.starts_with(cron));
            (of("report-a-") && of("report-b-")).then_some(())
        },
    )
    .await;
    assert!(
        pods.max() <= 1,
        "limit 1 exceeded on pods: {}",
        pods.summary(1)
    );
    let metrics = controller.metrics();
    assert!(
        metric(
            &metrics,
            "jobgate_webhook_reviews_total{verdict=\"suspended\"}"
        ) >= 2.0,
        "the CronJobs' Jobs did not pass the webhook: {metrics}"
    );
}
