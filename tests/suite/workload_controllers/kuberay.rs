//! KubeRay.

use jobgate_testkit::workloads::kuberay;

use super::*;

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
