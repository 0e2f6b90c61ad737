//! Kinds of work other than Jobs, gated end to end and counted on pods,
//! on the binary's shared full cluster with held pods (each runs for its
//! `jobgate.test/run-for`, then succeeds): JobSets and Argo Workflows with
//! their real controllers (`testkit::workloads`), plain Pods behind a
//! scheduling gate, and a kind jobgate has no description of (`BatchRun`,
//! the tests' own, with its own controller) described as an administrator
//! would. Each is counted on pods while its controller is killed
//! (SIGKILL) and restarted in the middle (`crash`).

use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use serde_json::json;

use jobgate_testkit::batchrun;
use jobgate_testkit::k8s::{ControlPlane, RUN_FOR_ANNOTATION};
use jobgate_testkit::operator::{Bed, ControllerProcess, create_job, eventually};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::testbed::free_port;
use jobgate_testkit::webhook::Registration;
use jobgate_testkit::workloads;

mod cut;

/// The webhook registered for the bed's namespace, holding back Jobs and
/// `kinds` (API group, plural), and a controller serving it that gates
/// `workload_kinds` too. Returns the configuration's name, to delete it.
async fn with_webhook(
    bed: &Bed,
    workload_kinds: &str,
    kinds: &[(&str, &str)],
) -> (ControllerProcess, String) {
    with_webhook_as(bed, &bed.ns, "one", workload_kinds, kinds, &[]).await
}

/// [`with_webhook`] for namespace `ns`, as cluster `cluster`, with `extra`
/// flags.
async fn with_webhook_as(
    bed: &Bed,
    ns: &str,
    cluster: &str,
    workload_kinds: &str,
    kinds: &[(&str, &str)],
    extra: &[&str],
) -> (ControllerProcess, String) {
    let cp = &*bed.cp;
    let name = format!("jobgate-{ns}");
    let webhook = Registration {
        name: &name,
        port: free_port(),
        failure_policy: "Fail",
        namespace: Some(ns),
        controller_user: None,
        kinds,
    };
    webhook.apply(cp);
    let mut flags = vec![
        "--leader-elect=false".to_string(),
        format!("--workload-kinds={workload_kinds}"),
    ];
    flags.extend(webhook.controller_flags(ns));
    flags.extend(extra.iter().map(|f| f.to_string()));
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with(cp, &bed.s3, cluster, ns, true, &flags, "");
    webhook.ready(cp, &controller).await;
    (controller, name)
}

/// SIGKILL, and a new process a moment later: what a crash and a
/// Deployment's restart do.
async fn crash(controller: &mut ControllerProcess) {
    controller.kill9();
    tokio::time::sleep(Duration::from_secs(2)).await;
    controller.restart();
}

fn field(cp: &ControlPlane, ns: &str, object: &str, path: &str) -> String {
    let out = cp.kubectl(&["get", "-n", ns, object, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain Pod of `group` running for `run_for`.
async fn create_pod(bed: &Bed, name: &str, group: &str, run_for: &str) {
    create_pod_in(bed, &bed.ns, name, group, run_for).await;
}

async fn create_pod_in(bed: &Bed, ns: &str, name: &str, group: &str, run_for: &str) {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"jobgate.dev/group": group},
                     "annotations": {RUN_FOR_ANNOTATION: run_for}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "work", "image": "busybox"}]},
    }))
    .unwrap();
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(bed.kube.clone(), ns);
    api.create(&PostParams::default(), &pod).await.unwrap();
}

/// Plain Pods of a group wait behind jobgate's scheduling gate, two at a
/// time at limit 2, counted on the pods themselves. Nobody but the
/// controller can remove the gate: the webhook refuses a user's attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pods_wait_behind_a_scheduling_gate_two_at_a_time_through_a_crash() {
    let bed = Bed::shared_held("kinds-pods").await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    bed.group_with(
        "gated",
        2,
        json!({"leaseSeconds": 20, "maxGracePeriodSeconds": 5}),
    );
    let pods = PodLog::per_pod();
    pods.watch_selected(bed.kube.clone(), "one", ns, "jobgate.dev/group=gated");
    let (mut controller, config) = with_webhook(&bed, "pod", &[("", "pods")]).await;

    create_pod(&bed, "long-a", "gated", "6s").await;
    create_pod(&bed, "long-b", "gated", "6s").await;
    eventually(Duration::from_secs(60), "two Pods running", || async {
        (pods.running() == 2).then_some(())
    })
    .await;
    let names: Vec<String> = (0..4).map(|i| format!("short-{i}")).collect();
    for name in &names {
        create_pod(&bed, name, "gated", "1s").await;
    }
    // Held while both slots are taken, by the gate the webhook added.
    let gates = field(cp, ns, "pod/short-3", "{.spec.schedulingGates[*].name}");
    assert_eq!(gates, "jobgate.dev/slot", "short-3 is not gated");
    let ungate = cp.kubectl(&[
        "--as",
        "alice",
        "--as-group",
        "system:masters",
        "-n",
        ns,
        "patch",
        "pod/short-3",
        "--type=json",
        "-p",
        r#"[{"op":"remove","path":"/spec/schedulingGates/0"}]"#,
    ]);
    let refused = String::from_utf8_lossy(&ungate.stderr).into_owned();
    assert!(
        !ungate.status.success(),
        "a user removed the gate: {refused}"
    );
    assert!(
        refused.contains("only jobgate removes the scheduling gate"),
        "{refused}"
    );
    crash(&mut controller).await;

    eventually(Duration::from_secs(90), "every Pod Succeeded", || async {
        let phases = field(cp, ns, "pods", "{.items[*].status.phase}");
        (phases
            .split_whitespace()
            .filter(|p| *p == "Succeeded")
            .count()
            == 6)
            .then_some(())
    })
    .await;
    assert!(pods.max() <= 2, "over the limit: {}", pods.summary(2));
    assert_eq!(pods.max(), 2, "never used the limit: {}", pods.summary(2));
    bed.ledger_drains(&bed.key("gated")).await;
    let log = controller.log_text();
    assert!(!log.contains("panicked"), "the controller panicked: {log}");
    cp.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &config]);
}

/// A kind jobgate has no description of, described by its administrator
/// (`batchrun::DESCRIPTION`: a nested switch, pods found by name, units
/// from a field): created held by the webhook, run a few at a time within
/// a limit of 3 units, counted on its pods, and every slot given back.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_described_by_its_administrator_is_gated_by_units_through_a_crash() {
    let bed = Bed::shared_held("kinds-custom").await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    batchrun::install(cp);
    let _runs = batchrun::run(bed.kube.clone(), ns);
    bed.group_with(
        "runs",
        3,
        json!({"leaseSeconds": 20, "maxGracePeriodSeconds": 5}),
    );
    let description = bed.cp.dir.path().join(format!("kinds-{ns}.yaml"));
    std::fs::write(&description, batchrun::DESCRIPTION).unwrap();
    let pods = PodLog::by_label(batchrun::RUN_LABEL);
    pods.watch(bed.kube.clone(), "one", ns);
    let (mut controller, config) = with_webhook(
        &bed,
        &description.display().to_string(),
        &[("example.jobgate.dev", "batchruns")],
    )
    .await;

    let api: Api<DynamicObject> =
        Api::namespaced_with(bed.kube.clone(), ns, &batchrun::api_resource());
    let widths = [2, 1, 2, 1, 3, 1];
    for (i, width) in widths.iter().enumerate() {
        let run = batchrun::object(&format!("run-{i}"), "runs", *width, "2s");
        api.create(&PostParams::default(), &run).await.unwrap();
    }
    // The webhook added the switch with its parent, which the run lacked;
    // the last one waits (the first ones take the 3 units).
    let held = field(cp, ns, "batchrun/run-5", "{.spec.control.hold}");
    assert_eq!(held, "true", "run-5 was created without being held");
    crash(&mut controller).await;
    eventually(Duration::from_secs(120), "every BatchRun Done", || async {
        let phases = field(cp, ns, "batchruns", "{.items[*].status.phase}");
        (phases.split_whitespace().filter(|p| *p == "Done").count() == widths.len()).then_some(())
    })
    .await;
    assert!(pods.max() <= 3, "over the limit: {}", pods.summary(3));
    assert!(
        pods.max() >= 2,
        "never ran two at once: {}",
        pods.summary(3)
    );
    bed.ledger_drains(&bed.key("runs")).await;
    let log = controller.log_text();
    assert!(!log.contains("panicked"), "the controller panicked: {log}");
    cp.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &config]);
}

/// The workload controllers run once per test binary on the shared held
/// cluster, beside everything else on it: each watches its own kind only.
fn shared_controller(which: &str, _cp: &'static ControlPlane) {
    match which {
        "jobset" => workloads::shared::jobset(),
        "kuberay" => workloads::shared::kuberay(),
        _ => workloads::shared::argo(),
    };
}

/// A JobSet of `group` with two replicated Jobs of one pod each, running
/// for `run_for`, defaulted as JobSet's own webhook would leave it (none
/// is registered: see `workloads::jobset::start`), created as a user would.
fn jobset(name: &str, group: &str, run_for: &str) -> serde_json::Value {
    json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": name, "labels": {"jobgate.dev/group": group}},
        "spec": {
            "successPolicy": {"operator": "All"},
            "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
            "network": {"enableDNSHostnames": true, "publishNotReadyAddresses": true},
            "replicatedJobs": [{"name": "workers", "replicas": 2, "template": {"spec": {
                "parallelism": 1, "completions": 1, "completionMode": "Indexed", "backoffLimit": 0,
                "template": {
                    "metadata": {"annotations": {RUN_FOR_ANNOTATION: run_for}},
                    "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                             "containers": [{"name": "main", "image": "busybox", "command": ["true"]}]},
                },
            }}}],
        },
    })
}

/// JobSets of a group at limit 2, counted on their pods (both Jobs' pods
/// of a JobSet count as one): created held by the webhook, admitted two at
/// a time, and the limit holds through a SIGKILL of the controller in the
/// middle. A JobSet's child Jobs are the JobSet's: jobgate does not gate
/// them as Jobs of their own.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jobsets_are_admitted_two_at_a_time_through_a_crash() {
    let bed = Bed::shared_held("kinds-jobset").await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    shared_controller("jobset", jobgate_testkit::shared::held_cluster());
    bed.group_with(
        "sets",
        2,
        json!({"leaseSeconds": 20, "maxGracePeriodSeconds": 5}),
    );
    let pods = PodLog::by_label(workloads::jobset::UID_LABEL);
    pods.watch(bed.kube.clone(), "one", ns);
    let (mut controller, config) =
        with_webhook(&bed, "jobset", &[("jobset.x-k8s.io", "jobsets")]).await;

    let api: Api<DynamicObject> = Api::namespaced_with(
        bed.kube.clone(),
        ns,
        &jobgate::operator::kinds::builtin("jobset")
            .unwrap()
            .api_resource(),
    );
    let names: Vec<String> = (0..5).map(|i| format!("set-{i}")).collect();
    for name in &names {
        let set: DynamicObject = serde_json::from_value(jobset(name, "sets", "4s")).unwrap();
        api.create(&PostParams::default(), &set).await.unwrap();
    }
    assert_eq!(field(cp, ns, "jobset/set-4", "{.spec.suspend}"), "true");
    eventually(Duration::from_secs(60), "two JobSets running", || async {
        (pods.running() == 2).then_some(())
    })
    .await;
    crash(&mut controller).await;
    eventually(
        Duration::from_secs(150),
        "every JobSet Completed",
        || async {
            let done = names
                .iter()
                .filter(|n| {
                    field(
                        cp,
                        ns,
                        &format!("jobset/{n}"),
                        r#"{.status.conditions[?(@.type=="Completed")].status}"#,
                    ) == "True"
                })
                .count();
            (done == names.len()).then_some(())
        },
    )
    .await;
    assert!(pods.max() <= 2, "over the limit: {}", pods.summary(2));
    assert_eq!(pods.max(), 2, "never used the limit: {}", pods.summary(2));
    // The child Jobs were never held back as Jobs of the group.
    let child_suspended = field(
        cp,
        ns,
        "jobs",
        "{.items[*].metadata.annotations.jobgate\\.dev/admitted-at}",
    );
    assert!(
        child_suspended.is_empty(),
        "child Jobs were admitted as Jobs: {child_suspended}"
    );
    bed.ledger_drains(&bed.key("sets")).await;
    let log = controller.log_text();
    assert!(!log.contains("panicked"), "the controller panicked: {log}");
    cp.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &config]);
}

/// Argo Workflows of a group at limit 1, counted on their pods: each
/// admitted in turn, its steps run (this test plays argoexec and the
/// kubelet: `workloads::argo::finish_pod`), and the next admitted only once
/// the last step's pod has stopped.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn argo_workflows_run_one_at_a_time_through_a_crash() {
    let bed = Bed::shared_held("kinds-argo").await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    shared_controller("argo", jobgate_testkit::shared::held_cluster());
    bed.group_with(
        "flows",
        1,
        json!({"leaseSeconds": 60, "maxGracePeriodSeconds": 35}),
    );
    let pods = PodLog::by_label(workloads::argo::WORKFLOW_LABEL);
    pods.watch(bed.kube.clone(), "one", ns);
    let (mut controller, config) =
        with_webhook(&bed, "workflow", &[("argoproj.io", "workflows")]).await;
    let names: Vec<String> = (0..3).map(|i| format!("flow-{i}")).collect();
    for name in &names {
        let flow = format!(
            r#"{{"apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
               "metadata": {{"name": "{name}", "namespace": "{ns}", "labels": {{"jobgate.dev/group": "flows"}}}},
               "spec": {{"entrypoint": "main", "templates": [
                 {{"name": "main", "steps": [[{{"name": "one", "template": "step"}}], [{{"name": "two", "template": "step"}}]]}},
                 {{"name": "step", "container": {{"image": "busybox", "command": ["true"]}}}}]}}}}"#
        );
        let out = cp.kubectl_stdin(&["create", "-f", "-"], &flow);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(field(cp, ns, "workflow/flow-2", "{.spec.suspend}"), "true");
    crash(&mut controller).await;
    // Each step's pod, once running, finishes after a moment.
    eventually(
        Duration::from_secs(300),
        "every Workflow Succeeded",
        || async {
            let running = field(
                cp,
                ns,
                "pods",
                r#"{range .items[?(@.status.phase=="Running")]}{.metadata.name}{" "}{end}"#,
            );
            for pod in running.split_whitespace() {
                tokio::time::sleep(Duration::from_millis(500)).await;
                workloads::argo::finish_pod(cp, ns, pod);
            }
            let phases = field(cp, ns, "workflows", "{.items[*].status.phase}");
            (phases
                .split_whitespace()
                .filter(|p| *p == "Succeeded")
                .count()
                == names.len())
            .then_some(())
        },
    )
    .await;
    assert!(pods.max() <= 1, "over the limit: {}", pods.summary(1));
    assert_eq!(pods.max(), 1, "nothing ran: {}", pods.summary(1));
    bed.ledger_drains(&bed.key("flows")).await;
    let log = controller.log_text();
    assert!(!log.contains("panicked"), "the controller panicked: {log}");
    cp.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &config]);
}

/// A kind gated but not installed in the cluster (no CRD serves it) is
/// reported once, in the group's KindsInstalled condition and an Event,
/// and does not stop the group from admitting its Jobs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kind_not_installed_is_reported_and_the_others_are_still_gated() {
    let bed = Bed::shared_held("kinds-missing").await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    bed.group_with(
        "mixed",
        1,
        json!({"leaseSeconds": 20, "maxGracePeriodSeconds": 5}),
    );
    let description = bed.cp.dir.path().join(format!("kinds-{ns}.yaml"));
    std::fs::write(
        &description,
        "- {group: nowhere.example, version: v1, kind: Missing, plural: missings, suspend: {path: spec.suspend}, finished: {conditions: [Done]}, pods: {label: nowhere.example/owner}}\n",
    )
    .unwrap();
    let (controller, config) = with_webhook(
        &bed,
        &description.display().to_string(),
        &[("nowhere.example", "missings")],
    )
    .await;
    create_job(&bed.kube, ns, "etl", "mixed", true).await;
    eventually(Duration::from_secs(60), "the Job admitted", || async {
        (field(cp, ns, "job/etl", "{.spec.suspend}") == "false").then_some(())
    })
    .await;
    let condition = r#"{.status.conditions[?(@.type=="KindsInstalled")]}"#;
    let reported = eventually(Duration::from_secs(60), "KindsInstalled False", || async {
        let c = field(cp, ns, "concurrencygroup/mixed", condition);
        c.contains(r#""status":"False""#).then_some(c)
    })
    .await;
    assert!(
        reported
            .contains("not installed in this cluster (no CRD serves it): Missing.nowhere.example;"),
        "{reported}"
    );
    eventually(
        Duration::from_secs(30),
        "a KindNotInstalled Event",
        || async {
            let events = cp.events(ns, "reason=KindNotInstalled");
            events.contains("Missing.nowhere.example").then_some(())
        },
    )
    .await;
    let log = controller.log_text();
    assert_eq!(
        log.matches("this kind is not installed").count(),
        1,
        "said more than once: {log}"
    );
    cp.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &config]);
}

/// A RayJob of `group` whose submitter runs for `run_for`: a head and one
/// worker (which run until the cluster is deleted), torn down once the job
/// ends. Under kwok there is no Ray dashboard, so KubeRay marks it Failed
/// ("AppFailed") once its submitter ends: finished either way.
fn rayjob(ns: &str, name: &str, group: &str, run_for: &str) -> String {
    let pod = |container: &str| {
        format!(
            r#"{{"spec": {{"terminationGracePeriodSeconds": 1, "containers": [{{"name": "{container}", "image": "rayproject/ray:2.46.0"}}]}}}}"#
        )
    };
    format!(
        r#"{{"apiVersion": "ray.io/v1", "kind": "RayJob",
          "metadata": {{"name": "{name}", "namespace": "{ns}", "labels": {{"jobgate.dev/group": "{group}"}}}},
          "spec": {{"shutdownAfterJobFinishes": true, "submissionMode": "K8sJobMode",
            "entrypoint": "python -c 'print(1)'",
            "submitterPodTemplate": {{"metadata": {{"annotations": {{"{RUN_FOR_ANNOTATION}": "{run_for}"}}}},
              "spec": {{"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                "containers": [{{"name": "ray-job-submitter", "image": "rayproject/ray:2.46.0"}}]}}}},
            "rayClusterSpec": {{"headGroupSpec": {{"rayStartParams": {{}}, "template": {head}}},
              "workerGroupSpecs": [{{"groupName": "small", "replicas": 1, "minReplicas": 1, "maxReplicas": 1,
                "rayStartParams": {{}}, "template": {worker}}}]}}}}}}"#,
        head = pod("ray-head"),
        worker = pod("ray-worker"),
    )
}

/// The pod checker for RayJobs `names`: a pod belongs to the RayJob its
/// cluster (`<rayjob>-<suffix>`) or its submitter Job (named after it) is
/// named after, so that all of a RayJob's pods count as one workload.
fn rayjob_pods(names: Vec<String>) -> PodLog {
    PodLog::keyed_by(move |pod| {
        let labels = pod.metadata.labels.as_ref()?;
        let owner = labels
            .get("ray.io/cluster")
            .and_then(|c| c.rsplit_once('-').map(|(name, _)| name.to_string()))
            .or_else(|| labels.get("batch.kubernetes.io/job-name").cloned())?;
        names.contains(&owner).then_some(owner)
    })
}

/// RayJobs of a group at limit 1, counted on all their pods (the Ray
/// cluster's head and worker, and the submitter's: one workload): each
/// admitted in turn, and the next only once the last one's cluster has
/// been torn down and its pods are gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rayjobs_run_one_at_a_time_counted_on_all_their_pods_through_a_crash() {
    let bed = Bed::shared_held("kinds-ray").await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    shared_controller("kuberay", jobgate_testkit::shared::held_cluster());
    bed.group_with(
        "rays",
        1,
        json!({"leaseSeconds": 20, "maxGracePeriodSeconds": 5}),
    );
    let names: Vec<String> = (0..3).map(|i| format!("ray-{i}")).collect();
    let pods = rayjob_pods(names.clone());
    pods.watch_selected(bed.kube.clone(), "one", ns, "");
    let (mut controller, config) = with_webhook(&bed, "rayjob", &[("ray.io", "rayjobs")]).await;
    for name in &names {
        let out = cp.kubectl_stdin(&["create", "-f", "-"], &rayjob(ns, name, "rays", "3s"));
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    assert_eq!(field(cp, ns, "rayjob/ray-2", "{.spec.suspend}"), "true");
    crash(&mut controller).await;
    eventually(
        Duration::from_secs(300),
        "every RayJob finished",
        || async {
            let done = field(cp, ns, "rayjobs", "{.items[*].status.jobDeploymentStatus}");
            let finished = done
                .split_whitespace()
                .filter(|s| matches!(*s, "Complete" | "Failed"))
                .count();
            (finished == names.len()).then_some(())
        },
    )
    .await;
    assert!(pods.max() <= 1, "over the limit: {}", pods.summary(1));
    assert_eq!(pods.max(), 1, "nothing ran: {}", pods.summary(1));
    bed.ledger_drains(&bed.key("rays")).await;
    let log = controller.log_text();
    assert!(!log.contains("panicked"), "the controller panicked: {log}");
    cp.kubectl_ok(&["delete", "mutatingwebhookconfiguration", &config]);
}
