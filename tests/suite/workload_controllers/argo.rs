//! Argo Workflows.

use jobgate_testkit::workloads::argo;

use super::*;

/// A Workflow of two steps, each one container (with a command, so the
/// controller needs no registry: see `workloads::argo::start`).
fn workflow_yaml(ns: &str, name: &str, suspend: bool) -> String {
    format!(
        r#"apiVersion: argoproj.io/v1alpha1
kind: Workflow
metadata: {{name: {name}, namespace: {ns}}}
spec:
  suspend: {suspend}
  entrypoint: main
  templates:
  - name: main
    steps:
    - - name: one
        template: step
    - - name: two
        template: step
  - name: step
    container:
      image: busybox
      command: ["sh", "-c", "true"]
"#
    )
}

fn workflow_phase(cp: &ControlPlane, ns: &str, name: &str) -> String {
    get(cp, "workflow", ns, name)["status"]["phase"]
        .as_str()
        .unwrap_or_default()
        .to_string()
}

#[test]
fn argo_workflow_runs_its_pods_and_succeeds_when_each_pod_reports() {
    let cp = jobgate_testkit::shared::held_cluster();
    let started = Instant::now();
    let controller = workloads::shared::argo();
    eprintln!(
        "argo: started (CRDs, controller ready, garbage collector following) in {:?}",
        started.elapsed()
    );
    let ns = &unique("workflows");
    cp.kubectl_ok(&["create", "namespace", ns]);

    apply(cp, &workflow_yaml(ns, "flow", false));
    let uid = get(cp, "workflow", ns, "flow")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let selector = format!("{}=flow", argo::WORKFLOW_LABEL);
    let first = until(
        cp,
        controller,
        "the first step's pod running",
        Duration::from_secs(60),
        || {
            let p = pods(cp, ns, &selector);
            (p.len() == 1 && phase(&p[0]) == "Running").then(|| p[0].clone())
        },
    );
    // (1) The pod names its Workflow; its owner reference has the UID.
    assert_label(std::slice::from_ref(&first), argo::WORKFLOW_LABEL, "flow");
    let owner = &first["metadata"]["ownerReferences"][0];
    assert_eq!(
        (owner["kind"].as_str(), owner["uid"].as_str()),
        (Some("Workflow"), Some(uid.as_str()))
    );
    eprintln!(
        "argo: pod labels: {}; owner: {} {}; containers: {:?}",
        first["metadata"]["labels"],
        owner["kind"],
        owner["uid"],
        first["spec"]["containers"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| c["name"].as_str().unwrap_or_default())
            .collect::<Vec<_>>()
    );
    // Under kwok alone the pod runs for good: nothing ends a pod that no
    // Job owns, so the Workflow stays Running.
    std::thread::sleep(Duration::from_secs(3));
    assert_eq!(phase(&pods(cp, ns, &selector)[0]), "Running");
    assert_eq!(workflow_phase(cp, ns, "flow"), "Running");

    // (2) Suspending a running Workflow leaves its running pod alone and
    // creates no further pod: the next step waits for the resume.
    patch(cp, "workflow", ns, "flow", r#"{"spec":{"suspend":true}}"#);
    std::thread::sleep(Duration::from_secs(2));
    argo::finish_pod(cp, ns, name(&first));
    until(
        cp,
        controller,
        "the first step Succeeded",
        Duration::from_secs(30),
        || {
            let wf = get(cp, "workflow", ns, "flow");
            wf["status"]["nodes"]
                .as_object()
                .into_iter()
                .flat_map(|nodes| nodes.values())
                .any(|n| n["displayName"] == "one" && n["phase"] == "Succeeded")
                .then_some(())
        },
    );
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let p = pods(cp, ns, &selector);
        assert_eq!(
            names(&p),
            [name(&first)],
            "a pod deleted or added while suspended"
        );
        std::thread::sleep(Duration::from_millis(250));
    }
    assert_eq!(workflow_phase(cp, ns, "flow"), "Running");
    eprintln!(
        "argo: suspend on a running Workflow: its running pod is not deleted; no next pod in 5 s after the step ended; phase stays Running"
    );
    patch(cp, "workflow", ns, "flow", r#"{"spec":{"suspend":false}}"#);
    let resumed_at = Instant::now();
    let second = until(
        cp,
        controller,
        "the second step's pod",
        Duration::from_secs(30),
        || {
            live(&pods(cp, ns, &selector))
                .into_iter()
                .find(|p| name(p) != name(&first) && phase(p) == "Running")
        },
    );
    eprintln!(
        "argo: resumed: next pod running after {:?}",
        resumed_at.elapsed()
    );

    // (3) Succeeded once each pod has ended and its task result reports.
    argo::finish_pod(cp, ns, name(&second));
    let started = Instant::now();
    let wf = until(
        cp,
        controller,
        "Workflow Succeeded",
        Duration::from_secs(60),
        || {
            let wf = get(cp, "workflow", ns, "flow");
            (wf["status"]["phase"] == "Succeeded").then_some(wf)
        },
    );
    eprintln!(
        "argo: Succeeded {:?} after the last pod; finishedAt={} completed label={} conditions={}",
        started.elapsed(),
        wf["status"]["finishedAt"],
        wf["metadata"]["labels"]["workflows.argoproj.io/completed"],
        wf["status"]["conditions"]
    );
    assert!(wf["status"]["finishedAt"].is_string());
    assert_eq!(
        wf["metadata"]["labels"]["workflows.argoproj.io/completed"],
        "true"
    );

    // Nor does shutdown delete them: the Workflow fails at once and the
    // controller signals each container through `pods/exec` (argoexec
    // kill), which under kwok reaches no kubelet; the pod runs on.
    apply(cp, &workflow_yaml(ns, "stopped", false));
    let selector = format!("{}=stopped", argo::WORKFLOW_LABEL);
    until(
        cp,
        controller,
        "a running pod",
        Duration::from_secs(60),
        || {
            let p = pods(cp, ns, &selector);
            (p.len() == 1 && phase(&p[0]) == "Running").then_some(())
        },
    );
    let stopped_at = Instant::now();
    patch(
        cp,
        "workflow",
        ns,
        "stopped",
        r#"{"spec":{"shutdown":"Terminate"}}"#,
    );
    let stopped = until(
        cp,
        controller,
        "Workflow finished",
        Duration::from_secs(30),
        || {
            let wf = get(cp, "workflow", ns, "stopped");
            matches!(wf["status"]["phase"].as_str(), Some("Failed" | "Error")).then_some(wf)
        },
    );
    let finished = stopped_at.elapsed();
    until(
        cp,
        controller,
        "the containers signalled",
        Duration::from_secs(30),
        || {
            let log = controller.log_text();
            (log.contains("action=terminateContainers") && log.contains("podName=stopped-step"))
                .then_some(())
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let p = live(&pods(cp, ns, &selector));
    assert!(p.len() == 1 && phase(&p[0]) == "Running", "{:?}", names(&p));
    eprintln!(
        "argo: spec.shutdown Terminate on a running Workflow: phase {} ({}) after {finished:?}; its pod not deleted (containers signalled through pods/exec, which kwok does not serve), still Running 3 s later",
        stopped["status"]["phase"], stopped["status"]["message"],
    );

    // (4) Created suspended: no pod.
    apply(cp, &workflow_yaml(ns, "parked", true));
    until(
        cp,
        controller,
        "the suspended Workflow seen",
        Duration::from_secs(30),
        || (!workflow_phase(cp, ns, "parked").is_empty()).then_some(()),
    );
    assert_no_pods_for(
        cp,
        ns,
        &format!("{}=parked", argo::WORKFLOW_LABEL),
        Duration::from_secs(5),
    );
    eprintln!(
        "argo: created suspended: phase {}, no pod in 5 s",
        workflow_phase(cp, ns, "parked")
    );
}
