//! JobSet (`sigs.k8s.io/jobset`).

use jobgate_testkit::workloads::jobset;

use super::*;

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
