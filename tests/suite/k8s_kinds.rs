//! Kinds of work other than Jobs, gated end to end and counted on pods,
//! on the binary's shared full cluster with held pods (each runs for its
//! `jobgate.test/run-for`, then succeeds): plain Pods behind a scheduling
//! gate, and a kind jobgate has no description of (`BatchRun`, the tests'
//! own, with its own controller) described as an administrator would.

use std::time::Duration;

use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use serde_json::json;

use jobgate_testkit::batchrun;
use jobgate_testkit::k8s::{ControlPlane, RUN_FOR_ANNOTATION};
use jobgate_testkit::operator::{Bed, ControllerProcess, eventually};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::testbed::free_port;
use jobgate_testkit::webhook::Registration;

/// The webhook registered for the bed's namespace, holding back Jobs and
/// `kinds` (API group, plural), and a controller serving it that gates
/// `workload_kinds` too. Returns the configuration's name, to delete it.
async fn with_webhook(
    bed: &Bed,
    workload_kinds: &str,
    kinds: &[(&str, &str)],
) -> (ControllerProcess, String) {
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
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
    let flags: Vec<&str> = flags.iter().map(String::as_str).collect();
    let controller = ControllerProcess::start_with(cp, &bed.s3, "one", ns, true, &flags, "");
    webhook.ready(cp, &controller).await;
    (controller, name)
}

fn field(cp: &ControlPlane, ns: &str, object: &str, path: &str) -> String {
    let out = cp.kubectl(&["get", "-n", ns, object, "-o", &format!("jsonpath={path}")]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// A plain Pod of `group` running for `run_for`.
async fn create_pod(bed: &Bed, name: &str, group: &str, run_for: &str) {
    let pod: k8s_openapi::api::core::v1::Pod = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"jobgate.dev/group": group},
                     "annotations": {RUN_FOR_ANNOTATION: run_for}},
        "spec": {"restartPolicy": "Never", "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "work", "image": "busybox"}]},
    }))
    .unwrap();
    let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(bed.kube.clone(), &bed.ns);
    api.create(&PostParams::default(), &pod).await.unwrap();
}

/// Plain Pods of a group wait behind jobgate's scheduling gate, two at a
/// time at limit 2, counted on the pods themselves. Nobody but the
/// controller can remove the gate: the webhook refuses a user's attempt.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn plain_pods_wait_behind_a_scheduling_gate_two_at_a_time() {
    let bed = Bed::shared_held("kinds-pods").await;
    let (cp, ns) = (&*bed.cp, bed.ns.as_str());
    bed.group_with(
        "gated",
        2,
        json!({"leaseSeconds": 20, "maxGracePeriodSeconds": 5}),
    );
    let pods = PodLog::per_pod();
    pods.watch_selected(bed.kube.clone(), "one", ns, "jobgate.dev/group=gated");
    let (controller, config) = with_webhook(&bed, "pod", &[("", "pods")]).await;

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
async fn a_kind_described_by_its_administrator_is_gated_by_units_counted_on_pods() {
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
    let (controller, config) = with_webhook(
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
