//! The workload controllers of the test bed (`jobgate_testkit::workloads`):
//! JobSet, Argo Workflows and KubeRay, each started once on the binary's
//! shared held cluster (kube-controller-manager, kube-scheduler, kwok's
//! held pods) and used in a namespace of each test's own, each shown to act
//! on an object of its kind. Each test also pins down what a gate for that
//! kind would rely on, on the pods the controller really created: the
//! label that ties every pod to its object, what `spec.suspend` does to a
//! running object and to one created suspended, and which status says the
//! object is finished. What they find is printed (`--nocapture`) as well as
//! asserted.

use std::time::{Duration, Instant};

use serde_json::Value;

use jobgate_testkit::k8s::{ControlPlane, RUN_FOR_ANNOTATION};
use jobgate_testkit::workloads::{self, argo, jobset, kuberay};

/// A namespace name of the test's own on the shared cluster.
fn unique(prefix: &str) -> String {
    format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff)
}

/// Pods of `ns` that `selector` picks, as JSON.
fn pods(cp: &ControlPlane, ns: &str, selector: &str) -> Vec<Value> {
    list(cp, "pods", ns, selector)
}

fn list(cp: &ControlPlane, kind: &str, ns: &str, selector: &str) -> Vec<Value> {
    let mut args = vec!["get", kind, "-n", ns, "-o", "json"];
    if !selector.is_empty() {
        args.extend(["-l", selector]);
    }
    let out = cp.kubectl_ok(&args);
    let list: Value = serde_json::from_str(&out).unwrap();
    list["items"].as_array().cloned().unwrap_or_default()
}

fn get(cp: &ControlPlane, kind: &str, ns: &str, name: &str) -> Value {
    let out = cp.kubectl_ok(&["get", kind, name, "-n", ns, "-o", "json"]);
    serde_json::from_str(&out).unwrap()
}

fn apply(cp: &ControlPlane, yaml: &str) {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(
        out.status.success(),
        "{}\n{yaml}",
        String::from_utf8_lossy(&out.stderr)
    );
}

fn patch(cp: &ControlPlane, kind: &str, ns: &str, name: &str, merge: &str) {
    cp.kubectl_ok(&["patch", kind, name, "-n", ns, "--type=merge", "-p", merge]);
}

fn name(obj: &Value) -> &str {
    obj["metadata"]["name"].as_str().unwrap_or_default()
}

fn names(objs: &[Value]) -> Vec<String> {
    let mut names: Vec<String> = objs.iter().map(|o| name(o).to_string()).collect();
    names.sort();
    names
}

/// Pods that are not being deleted.
fn live(objs: &[Value]) -> Vec<Value> {
    objs.iter()
        .filter(|p| p["metadata"]["deletionTimestamp"].is_null())
        .cloned()
        .collect()
}

fn phase(pod: &Value) -> &str {
    pod["status"]["phase"].as_str().unwrap_or_default()
}

/// Whether `obj` has a condition of type `kind` with status True.
fn condition_true(obj: &Value, kind: &str) -> bool {
    obj["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

/// Asserts that every pod in `pods` has label `key` set to `value`.
fn assert_label(pods: &[Value], key: &str, value: &str) {
    assert!(!pods.is_empty());
    for pod in pods {
        assert_eq!(
            pod["metadata"]["labels"][key].as_str(),
            Some(value),
            "pod {} labels: {}",
            name(pod),
            pod["metadata"]["labels"]
        );
    }
}

/// Waits while `check` returns `None`, panicking after `timeout` with the
/// cluster's state, the controller's log tail and `what`.
fn until<T>(
    cp: &ControlPlane,
    controller: &jobgate_testkit::workloads::Handle,
    what: &str,
    timeout: Duration,
    mut check: impl FnMut() -> Option<T>,
) -> T {
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(v) = check() {
            return v;
        }
        controller.assert_alive();
        cp.assert_alive();
        if Instant::now() > deadline {
            let state = cp.kubectl(&["get", "all", "-A", "-o", "wide"]);
            panic!(
                "timed out after {timeout:?} waiting for {what}\n{}\n--- kube-controller-manager log ---\n{}\n--- controller log ---\n{}",
                String::from_utf8_lossy(&state.stdout),
                cp.log_tail("kube-controller-manager", 30),
                controller.log_tail(40)
            );
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// Asserts that nothing in `ns` matching `selector` is a pod for
/// `duration`.
fn assert_no_pods_for(cp: &ControlPlane, ns: &str, selector: &str, duration: Duration) {
    let end = Instant::now() + duration;
    while Instant::now() < end {
        let found = pods(cp, ns, selector);
        assert!(found.is_empty(), "pods {:?} for {selector}", names(&found));
        std::thread::sleep(Duration::from_millis(250));
    }
}

// ---------------------------------------------------------------- JobSet

/// A JobSet of two replicated Jobs, one pod each, written as JobSet's
/// defaulting webhook would leave it (no webhook is registered: see
/// `workloads::jobset::start`). `run_for`: how long each pod "runs" under
/// kwok's held stages (for good without it).
fn jobset_yaml(ns: &str, name: &str, suspend: bool, run_for: Option<&str>) -> String {
    let annotations = match run_for {
        Some(d) => format!("annotations: {{{RUN_FOR_ANNOTATION}: \"{d}\"}}"),
        None => "annotations: {}".into(),
    };
    format!(
        r#"apiVersion: jobset.x-k8s.io/v1alpha2
kind: JobSet
metadata: {{name: {name}, namespace: {ns}}}
spec:
  suspend: {suspend}
  successPolicy: {{operator: All}}
  startupPolicy: {{startupPolicyOrder: AnyOrder}}
  network: {{enableDNSHostnames: true, publishNotReadyAddresses: true}}
  replicatedJobs:
  - name: workers
    replicas: 2
    template:
      spec:
        parallelism: 1
        completions: 1
        completionMode: Indexed
        backoffLimit: 0
        template:
          metadata:
            {annotations}
          spec:
            restartPolicy: Never
            terminationGracePeriodSeconds: 2
            containers:
            - name: main
              image: busybox
              command: ["sleep", "3600"]
"#
    )
}

#[test]
fn jobset_creates_jobs_and_pods_suspends_them_and_completes() {
    // Held pods: a pod runs for its run-for annotation (for good without
    // one) and a deleted one stays Terminating for its grace period, so a
    // JobSet can be suspended while its pods run.
    let cp = jobgate_testkit::shared::held_cluster();
    let started = Instant::now();
    let controller = workloads::shared::jobset();
    eprintln!(
        "jobset: started (CRDs, controller ready, garbage collector following) in {:?}",
        started.elapsed()
    );
    let ns = &unique("jobsets");
    cp.kubectl_ok(&["create", "namespace", ns]);

    // It acts: child Jobs, then their pods, then Completed when they end.
    apply(cp, &jobset_yaml(ns, "done", false, Some("3s")));
    let uid = get(cp, "jobset", ns, "done")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let selector = format!("{}=done", jobset::NAME_LABEL);
    let jobs = until(
        cp,
        controller,
        "the JobSet's two Jobs",
        Duration::from_secs(60),
        || {
            let jobs = list(cp, "jobs", ns, &selector);
            (jobs.len() == 2).then_some(jobs)
        },
    );
    assert_eq!(names(&jobs), ["done-workers-0", "done-workers-1"]);
    let running = until(
        cp,
        controller,
        "two running pods",
        Duration::from_secs(60),
        || {
            let p = pods(cp, ns, &selector);
            (p.len() == 2 && p.iter().all(|p| phase(p) == "Running")).then_some(p)
        },
    );
    // (1) Every pod names its JobSet and carries its UID.
    assert_label(&running, jobset::NAME_LABEL, "done");
    assert_label(&running, jobset::UID_LABEL, &uid);
    eprintln!("jobset: pod labels: {}", running[0]["metadata"]["labels"]);
    // (3) Completed once every pod has succeeded.
    let started = Instant::now();
    let done = until(
        cp,
        controller,
        "JobSet condition Completed",
        Duration::from_secs(60),
        || {
            let js = get(cp, "jobset", ns, "done");
            condition_true(&js, "Completed").then_some(js)
        },
    );
    eprintln!(
        "jobset: Completed {:?} after both pods were seen Running (each runs 3 s); terminalState={} conditions={}",
        started.elapsed(),
        done["status"]["terminalState"],
        done["status"]["conditions"]
    );
    assert_eq!(done["status"]["terminalState"], "Completed");

    // (2) Suspending a running JobSet suspends its Jobs, whose pods the Job
    // controller deletes; resuming starts new pods.
    apply(cp, &jobset_yaml(ns, "held", false, None));
    let selector = format!("{}=held", jobset::NAME_LABEL);
    let before = until(
        cp,
        controller,
        "two running pods",
        Duration::from_secs(60),
        || {
            let p = pods(cp, ns, &selector);
            (p.len() == 2 && p.iter().all(|p| phase(p) == "Running")).then_some(p)
        },
    );
    let suspended_at = Instant::now();
    patch(cp, "jobset", ns, "held", r#"{"spec":{"suspend":true}}"#);
    // When each happens, watched together: every pod being deleted, the
    // condition Suspended, every pod gone.
    let (mut deleting, mut suspended, mut gone) = (None, None, None);
    until(
        cp,
        controller,
        "pods gone and JobSet Suspended",
        Duration::from_secs(60),
        || {
            let p = pods(cp, ns, &selector);
            let now = Some(suspended_at.elapsed());
            if deleting.is_none() && live(&p).is_empty() {
                deleting = now;
            }
            if gone.is_none() && p.is_empty() {
                gone = now;
            }
            if suspended.is_none() && condition_true(&get(cp, "jobset", ns, "held"), "Suspended") {
                suspended = now;
            }
            (gone.is_some() && suspended.is_some()).then_some(())
        },
    );
    let (deleting, suspended, gone) = (deleting.unwrap(), suspended.unwrap(), gone.unwrap());
    let jobs = list(cp, "jobs", ns, &selector);
    assert_eq!(jobs.len(), 2, "the Jobs stay, suspended");
    assert!(jobs.iter().all(|j| j["spec"]["suspend"] == true));
    eprintln!(
        "jobset: suspend on a running JobSet: its Jobs suspended; every pod deleting after {deleting:?}, condition Suspended after {suspended:?}, every pod gone after {gone:?} (grace period 2 s)"
    );
    patch(cp, "jobset", ns, "held", r#"{"spec":{"suspend":false}}"#);
    let resumed_at = Instant::now();
    let after = until(
        cp,
        controller,
        "new running pods",
        Duration::from_secs(60),
        || {
            let p = pods(cp, ns, &selector);
            (p.len() == 2 && p.iter().all(|p| phase(p) == "Running")).then_some(p)
        },
    );
    assert!(names(&after).iter().all(|n| !names(&before).contains(n)));
    eprintln!(
        "jobset: resumed: two new pods running after {:?}",
        resumed_at.elapsed()
    );

    // (4) Created suspended: Jobs are created, suspended, and no pod.
    apply(cp, &jobset_yaml(ns, "parked", true, None));
    let selector = format!("{}=parked", jobset::NAME_LABEL);
    until(
        cp,
        controller,
        "suspended Jobs",
        Duration::from_secs(60),
        || {
            let jobs = list(cp, "jobs", ns, &selector);
            (jobs.len() == 2 && jobs.iter().all(|j| j["spec"]["suspend"] == true)).then_some(())
        },
    );
    assert_no_pods_for(cp, ns, &selector, Duration::from_secs(5));
    let parked = get(cp, "jobset", ns, "parked");
    assert!(condition_true(&parked, "Suspended"), "{}", parked["status"]);
    eprintln!("jobset: created suspended: two suspended Jobs, no pod in 5 s, condition Suspended");
}

// ---------------------------------------------------------- Argo Workflows

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

// ----------------------------------------------------------------- KubeRay

/// A RayJob in K8sJobMode with a head and one worker.
/// `shutdown_after_finish`: `spec.shutdownAfterJobFinishes`, which KubeRay
/// requires for `suspend`. `submitter_runs_for`: how long the submitter
/// Job's pod "runs" under kwok's held stages (for good without it).
fn rayjob_yaml(
    ns: &str,
    name: &str,
    suspend: bool,
    shutdown_after_finish: bool,
    submitter_runs_for: Option<&str>,
) -> String {
    let annotations = match submitter_runs_for {
        Some(d) => format!("annotations: {{{RUN_FOR_ANNOTATION}: \"{d}\"}}"),
        None => "annotations: {}".into(),
    };
    format!(
        r#"apiVersion: ray.io/v1
kind: RayJob
metadata: {{name: {name}, namespace: {ns}}}
spec:
  suspend: {suspend}
  shutdownAfterJobFinishes: {shutdown_after_finish}
  submissionMode: K8sJobMode
  entrypoint: python -c "print(1)"
  submitterPodTemplate:
    metadata:
      {annotations}
    spec:
      restartPolicy: Never
      terminationGracePeriodSeconds: 2
      containers:
      - name: ray-job-submitter
        image: rayproject/ray:2.46.0
  rayClusterSpec:
    headGroupSpec:
      rayStartParams: {{}}
      template:
        spec:
          terminationGracePeriodSeconds: 2
          containers:
          - name: ray-head
            image: rayproject/ray:2.46.0
    workerGroupSpecs:
    - groupName: small
      replicas: 1
      minReplicas: 1
      maxReplicas: 1
      rayStartParams: {{}}
      template:
        spec:
          terminationGracePeriodSeconds: 2
          containers:
          - name: ray-worker
            image: rayproject/ray:2.46.0
"#
    )
}

fn rayjob_status(cp: &ControlPlane, ns: &str, name: &str) -> Value {
    get(cp, "rayjob", ns, name)["status"].clone()
}

/// The pods of RayJob `name`: those of its RayCluster `cluster` (head and
/// workers) and its submitter Job's (named after the RayJob). No one label
/// picks both.
fn rayjob_pods(cp: &ControlPlane, ns: &str, name: &str, cluster: &str) -> (Vec<Value>, Vec<Value>) {
    (
        pods(cp, ns, &format!("{}={cluster}", kuberay::CLUSTER_LABEL)),
        pods(cp, ns, &format!("batch.kubernetes.io/job-name={name}")),
    )
}

/// Waits until RayJob `name` has a RayCluster whose head and worker run and
/// a submitter pod that runs; returns the cluster's name and the pods.
fn rayjob_running(
    cp: &ControlPlane,
    controller: &jobgate_testkit::workloads::Handle,
    ns: &str,
    name: &str,
) -> (String, Vec<Value>, Value) {
    let cluster = until(
        cp,
        controller,
        "the RayJob's RayCluster",
        Duration::from_secs(60),
        || {
            rayjob_status(cp, ns, name)["rayClusterName"]
                .as_str()
                .filter(|c| !c.is_empty())
                .map(str::to_string)
        },
    );
    until(
        cp,
        controller,
        "head, worker and submitter running",
        Duration::from_secs(60),
        || {
            let (cluster_pods, submitter) = rayjob_pods(cp, ns, name, &cluster);
            let running = |p: &[Value]| p.iter().all(|p| phase(p) == "Running");
            (cluster_pods.len() == 2
                && submitter.len() == 1
                && running(&cluster_pods)
                && running(&submitter))
            .then(|| (cluster.clone(), cluster_pods, submitter[0].clone()))
        },
    )
}

#[test]
fn kuberay_rayjob_creates_its_cluster_and_submitter_and_suspends() {
    // Held pods: the submitter Job's pod runs until its run-for annotation
    // says (for good without it); head and worker pods, which no Job owns,
    // run for good either way.
    let cp = jobgate_testkit::shared::held_cluster();
    let started = Instant::now();
    let controller = workloads::shared::kuberay();
    eprintln!(
        "kuberay: started (CRDs, controller ready, garbage collector following) in {:?}",
        started.elapsed()
    );
    let ns = &unique("rayjobs");
    cp.kubectl_ok(&["create", "namespace", ns]);

    apply(cp, &rayjob_yaml(ns, "held", false, true, None));
    let uid = get(cp, "rayjob", ns, "held")["metadata"]["uid"]
        .as_str()
        .unwrap()
        .to_string();
    let (cluster, cluster_pods, submitter) = rayjob_running(cp, controller, ns, "held");
    for pod in cluster_pods.iter().chain([&submitter]) {
        eprintln!(
            "kuberay: pod {} labels: {}",
            name(pod),
            pod["metadata"]["labels"]
        );
    }
    // (1) No label on the pods names the RayJob or has its UID. Head and
    // worker name their RayCluster (the RayJob's name and a random
    // suffix); the RayCluster carries the origin labels and is owned by
    // the RayJob. The submitter pod has only the Job controller's labels:
    // its Job is named after the RayJob and owned by it.
    assert_label(&cluster_pods, kuberay::CLUSTER_LABEL, &cluster);
    for pod in cluster_pods.iter().chain([&submitter]) {
        let labels = &pod["metadata"]["labels"];
        assert!(labels[kuberay::ORIGIN_NAME_LABEL].is_null(), "{labels}");
        assert!(
            !labels
                .as_object()
                .unwrap()
                .values()
                .any(|v| v == uid.as_str()),
            "{labels}"
        );
    }
    assert_eq!(
        submitter["metadata"]["labels"]["batch.kubernetes.io/job-name"],
        "held"
    );
    let raycluster = get(cp, "raycluster", ns, &cluster);
    assert_eq!(
        raycluster["metadata"]["labels"][kuberay::ORIGIN_NAME_LABEL],
        "held"
    );
    assert_eq!(
        raycluster["metadata"]["labels"][kuberay::ORIGIN_KIND_LABEL],
        "RayJob"
    );
    assert_eq!(
        raycluster["metadata"]["ownerReferences"][0]["uid"],
        uid.as_str()
    );
    let job = get(cp, "job", ns, "held");
    assert_eq!(
        job["metadata"]["labels"][kuberay::ORIGIN_NAME_LABEL],
        "held"
    );
    assert_eq!(job["metadata"]["ownerReferences"][0]["uid"], uid.as_str());
    eprintln!(
        "kuberay: RayCluster {cluster} labels: {}",
        raycluster["metadata"]["labels"]
    );
    let status = until(
        cp,
        controller,
        "RayJob Running",
        Duration::from_secs(30),
        || {
            let s = rayjob_status(cp, ns, "held");
            (s["jobDeploymentStatus"] == "Running").then_some(s)
        },
    );
    std::thread::sleep(Duration::from_secs(5));
    let status_later = rayjob_status(cp, ns, "held");
    eprintln!(
        "kuberay: with the submitter running: jobDeploymentStatus={} jobStatus={} (5 s later {} {})",
        status["jobDeploymentStatus"],
        status["jobStatus"],
        status_later["jobDeploymentStatus"],
        status_later["jobStatus"],
    );
    assert_eq!(status_later["jobDeploymentStatus"], "Running");

    // (2) Suspending a running RayJob deletes its RayCluster and submitter
    // Job, and with them every pod; resuming creates a new RayCluster.
    let suspended_at = Instant::now();
    patch(cp, "rayjob", ns, "held", r#"{"spec":{"suspend":true}}"#);
    // When each happens, watched together: every pod being deleted, the
    // status Suspended, every pod gone.
    let (mut deleting, mut suspended, mut gone) = (None, None, None);
    until(
        cp,
        controller,
        "pods gone and RayJob Suspended",
        Duration::from_secs(60),
        || {
            let (c, s) = rayjob_pods(cp, ns, "held", &cluster);
            let now = Some(suspended_at.elapsed());
            if deleting.is_none() && live(&c).is_empty() && live(&s).is_empty() {
                deleting = now;
            }
            if gone.is_none() && c.is_empty() && s.is_empty() {
                gone = now;
            }
            if suspended.is_none()
                && rayjob_status(cp, ns, "held")["jobDeploymentStatus"] == "Suspended"
            {
                suspended = now;
            }
            (gone.is_some() && suspended.is_some()).then_some(())
        },
    );
    let (deleting, suspended, gone) = (deleting.unwrap(), suspended.unwrap(), gone.unwrap());
    assert!(list(cp, "rayclusters", ns, "").is_empty());
    assert!(list(cp, "jobs", ns, "").is_empty());
    eprintln!(
        "kuberay: suspend on a running RayJob: RayCluster and submitter Job deleted; every pod deleting after {deleting:?}, status Suspended after {suspended:?}, every pod gone after {gone:?} (grace period 2 s)"
    );
    patch(cp, "rayjob", ns, "held", r#"{"spec":{"suspend":false}}"#);
    let resumed_at = Instant::now();
    let (new_cluster, _, _) = rayjob_running(cp, controller, ns, "held");
    assert_ne!(new_cluster, cluster);
    eprintln!(
        "kuberay: resumed: new RayCluster {new_cluster} (was {cluster}), head, worker and submitter running after {:?}",
        resumed_at.elapsed()
    );

    // KubeRay refuses to suspend a RayJob that keeps its cluster after the
    // job (shutdownAfterJobFinishes false): the RayJob turns
    // ValidationFailed, and its pods keep running.
    apply(cp, &rayjob_yaml(ns, "keeps", false, false, None));
    let (keeps_cluster, _, _) = rayjob_running(cp, controller, ns, "keeps");
    patch(cp, "rayjob", ns, "keeps", r#"{"spec":{"suspend":true}}"#);
    let status = until(
        cp,
        controller,
        "RayJob keeps ValidationFailed",
        Duration::from_secs(30),
        || {
            let s = rayjob_status(cp, ns, "keeps");
            (s["jobDeploymentStatus"] == "ValidationFailed").then_some(s)
        },
    );
    std::thread::sleep(Duration::from_secs(3));
    let (c, s) = rayjob_pods(cp, ns, "keeps", &keeps_cluster);
    assert_eq!((live(&c).len(), live(&s).len()), (2, 1));
    eprintln!(
        "kuberay: suspend with shutdownAfterJobFinishes false: jobDeploymentStatus={} message={}; its three pods still running 3 s later",
        status["jobDeploymentStatus"], status["message"]
    );

    // (4) Created suspended: no RayCluster, no submitter, no pod.
    apply(cp, &rayjob_yaml(ns, "parked", true, true, None));
    until(
        cp,
        controller,
        "RayJob parked Suspended",
        Duration::from_secs(30),
        || (rayjob_status(cp, ns, "parked")["jobDeploymentStatus"] == "Suspended").then_some(()),
    );
    let end = Instant::now() + Duration::from_secs(5);
    while Instant::now() < end {
        let clusters = list(
            cp,
            "rayclusters",
            ns,
            &format!("{}=parked", kuberay::ORIGIN_NAME_LABEL),
        );
        assert!(clusters.is_empty(), "{:?}", names(&clusters));
        assert!(pods(cp, ns, "batch.kubernetes.io/job-name=parked").is_empty());
        std::thread::sleep(Duration::from_millis(250));
    }
    eprintln!(
        "kuberay: created suspended: status Suspended, no RayCluster and no submitter in 5 s"
    );

    // (3) A RayJob is finished when its jobDeploymentStatus is Complete or
    // Failed. Under kwok there is no Ray dashboard to follow the Ray job:
    // through the API server's service proxy the operator's questions find
    // no endpoints (404, "job does not exist"), so once the submitter's pod
    // ends the RayJob fails.
    apply(cp, &rayjob_yaml(ns, "short", false, true, Some("1s")));
    let started = Instant::now();
    let status = until(
        cp,
        controller,
        "RayJob short finished",
        Duration::from_secs(120),
        || {
            let s = rayjob_status(cp, ns, "short");
            matches!(
                s["jobDeploymentStatus"].as_str(),
                Some("Complete" | "Failed")
            )
            .then_some(s)
        },
    );
    eprintln!(
        "kuberay: submitter pod ending after 1 s: jobDeploymentStatus={} jobStatus={} reason={} message={} after {:?}",
        status["jobDeploymentStatus"],
        status["jobStatus"],
        status["reason"],
        status["message"],
        started.elapsed()
    );
    assert_eq!(status["jobDeploymentStatus"], "Failed");
}
