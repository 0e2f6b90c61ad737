//! `onControllerLoss: FailJobs` on the paths that let a Job run again,
//! counted on pods: the binary's shared full cluster (kwok's held pods, which
//! run until their Job is suspended or fails and then use their whole grace
//! period), SeaweedFS, and the controller. The Job controller fails a Job at
//! its `activeDeadlineSeconds`, counted from `status.startTime`; a controller
//! that dies must leave every Job it let run a deadline within the lease.

use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::BoxStream;
use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use serde_json::json;

use jobgate_testkit::operator::{Bed, ControllerProcess, create_held_job, eventually};
use jobgate_testkit::pods::PodLog;

const NS: &str = "deadlines";
/// The group's `leaseSeconds`: with `maxGracePeriodSeconds` 5 it fences
/// 20 − 5 − 5 = 10 s after its last renewal, and a Job's deadline ends it
/// 2 s after that.
const LEASE: Duration = Duration::from_secs(20);

fn suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// Group `again` at limit 1 under `onControllerLoss: FailJobs` in a
/// namespace of the shared held cluster, its pods watched, and its
/// controller.
async fn fail_jobs_group() -> (Bed, PodLog, ControllerProcess) {
    let bed = Bed::shared_held(NS).await;
    bed.group_with(
        "again",
        1,
        json!({
            "leaseSeconds": LEASE.as_secs(),
            "maxGracePeriodSeconds": 5,
            "onControllerLoss": "FailJobs",
        }),
    );
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "one", &bed.ns);
    let controller = ControllerProcess::start_with(
        &bed.cp,
        &bed.s3,
        "one",
        &bed.ns,
        true,
        &["--leader-elect=false"],
        "",
    );
    (bed, pods, controller)
}

/// Job `again` as the watch sees it, from now on.
fn watch_job(jobs: &Api<Job>) -> BoxStream<'static, Job> {
    watcher(
        jobs.clone(),
        watcher::Config::default().fields("metadata.name=again"),
    )
    .applied_objects()
    .filter_map(|e| async move { e.ok() })
    .boxed()
}

/// The first version of the Job that `wanted` holds for, within 60 s.
async fn first(events: &mut BoxStream<'static, Job>, mut wanted: impl FnMut(&Job) -> bool) -> Job {
    tokio::time::timeout(Duration::from_secs(60), async {
        while let Some(job) = events.next().await {
            if wanted(&job) {
                return job;
            }
        }
        panic!("the watch ended")
    })
    .await
    .unwrap_or_else(|_| panic!("not seen within 60 s"))
}

/// With its controller dead since `killed`: Job `again` must run, then be
/// failed at its deadline, its pods stopped within the lease.
async fn stops_within_the_lease(bed: &Bed, pods: &PodLog, killed: Instant, deadline: Option<i64>) {
    eventually(Duration::from_secs(30), "the Job runs", || async {
        (pods.running() == 1).then_some(())
    })
    .await;
    eventually(
        LEASE + Duration::from_secs(40),
        "the Job's pods stop",
        || async { (pods.running() == 0).then_some(()) },
    )
    .await;
    let stopped = killed.elapsed();
    let jobs: Api<Job> = Api::namespaced(bed.kube.clone(), &bed.ns);
    // The Failed condition comes once the pods are gone.
    let failed = eventually(Duration::from_secs(30), "the Job failed", || async {
        let job = jobs.get("again").await.ok()?;
        job.status?
            .conditions?
            .into_iter()
            .find(|c| c.type_ == "Failed" && c.status == "True")
            .map(|c| c.reason)
    })
    .await;
    eprintln!(
        "admitted with activeDeadlineSeconds {deadline:?}; its pods stopped {stopped:?} after the controller's death (lease {LEASE:?}); failed: {failed:?}"
    );
    assert!(
        stopped < LEASE,
        "the Job's pods ran {stopped:?} after its controller died, past the lease of {LEASE:?}"
    );
    assert_eq!(failed.as_deref(), Some("DeadlineExceeded"));
}

/// A Job that ran for a while, was suspended by a user and admitted again,
/// is resumed by the Job controller with its clock restarted: its deadline
/// must count from that resume. The controller is SIGKILLed the moment the
/// Job is unsuspended, before any later pass can move the deadline: the
/// Job's pods must stop within the lease. (Before, the deadline was counted
/// from the first start, so the Job ran on for its earlier run time more.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_job_admitted_again_stops_within_the_lease_when_its_controller_dies() {
    let (bed, pods, mut controller) = fail_jobs_group().await;
    let ns = bed.ns.as_str();
    create_held_job(&bed.kube, ns, "again", "again", 1, None).await;
    eventually(Duration::from_secs(60), "the Job runs", || async {
        (pods.running() == 1).then_some(())
    })
    .await;
    // An earlier run longer than the lease: a deadline counted from it
    // would let the second run outlive the lease.
    tokio::time::sleep(Duration::from_secs(25)).await;

    // Suspended by a user, its slot freed once its pod is gone, and then
    // admitted again (the slot is free): the moment the controller
    // unsuspends it, the controller dies.
    let jobs: Api<Job> = Api::namespaced(bed.kube.clone(), ns);
    let mut events = watch_job(&jobs);
    let out = bed.cp.kubectl(&[
        "patch",
        "-n",
        ns,
        "job/again",
        "--type=merge",
        "-p",
        r#"{"spec":{"suspend":true}}"#,
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut was_suspended = false;
    let resumed = first(&mut events, |job| {
        was_suspended |= suspended(job);
        was_suspended && !suspended(job)
    })
    .await;
    controller.kill9();
    let killed = Instant::now();
    let deadline = resumed
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds);
    assert!(deadline.is_some(), "admitted again without a deadline");
    stops_within_the_lease(&bed, &pods, killed, deadline).await;
}

/// A Job created running (no webhook here) while a slot is free is adopted:
/// the patch that marks it admitted must carry its deadline, so that it is
/// covered if the controller dies before its next pass. The controller is
/// SIGKILLed the moment the Job is marked admitted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_adopted_job_stops_within_the_lease_when_its_controller_dies() {
    let (bed, pods, mut controller) = fail_jobs_group().await;
    let ns = bed.ns.as_str();
    let jobs: Api<Job> = Api::namespaced(bed.kube.clone(), ns);
    let mut events = watch_job(&jobs);
    let job = format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata: {{name: again, namespace: {ns}, labels: {{jobgate.dev/group: again}}}}\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      terminationGracePeriodSeconds: 1\n      containers: [{{name: work, image: busybox, command: [sleep, inf]}}]\n"
    );
    let out = bed.cp.kubectl_stdin(&["apply", "-f", "-"], &job);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let adopted = first(&mut events, |job| {
        job.metadata
            .annotations
            .as_ref()
            .is_some_and(|a| a.contains_key("jobgate.dev/admitted-at"))
    })
    .await;
    controller.kill9();
    let killed = Instant::now();
    let deadline = adopted
        .spec
        .as_ref()
        .and_then(|s| s.active_deadline_seconds);
    assert!(deadline.is_some(), "adopted without a deadline");
    stops_within_the_lease(&bed, &pods, killed, deadline).await;
}
