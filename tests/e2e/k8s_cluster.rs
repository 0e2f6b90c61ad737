//! The full test cluster runs ordinary Jobs to completion: the upstream Job
//! controller creates the pods, the scheduler binds them to a kwok node, and
//! kwok takes them through Running to Succeeded. The operator's tests build
//! on exactly this, so it is checked on its own first.

use jobgate_testkit::k8s::ControlPlane;
use serde_json::Value;
use std::time::{Duration, Instant};

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn job(name: &str, completions: u32, parallelism: u32, suspend: bool) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  completions: {completions}
  parallelism: {parallelism}
  suspend: {suspend}
  template:
    spec:
      restartPolicy: Never
      containers:
      - name: work
        image: busybox
        command: [\"sh\", \"-c\", \"exit 0\"]
"
    )
}

fn get_json(cp: &ControlPlane, args: &[&str]) -> Value {
    let mut full = args.to_vec();
    full.extend(["-o", "json"]);
    let out = cp.kubectl(&full);
    assert!(out.status.success(), "kubectl get {args:?}: {}", text(&out));
    serde_json::from_slice(&out.stdout).unwrap()
}

fn has_condition(job: &Value, kind: &str) -> bool {
    job["status"]["conditions"]
        .as_array()
        .into_iter()
        .flatten()
        .any(|c| c["type"] == kind && c["status"] == "True")
}

fn pods_of(cp: &ControlPlane, job: &str) -> Vec<Value> {
    let selector = format!("batch.kubernetes.io/job-name={job}");
    let list = get_json(cp, &["get", "pods", "-l", &selector]);
    list["items"].as_array().cloned().unwrap_or_default()
}

fn wait_complete(cp: &ControlPlane, name: &str, completions: u64) {
    cp.wait_for(
        &format!("job {name} Complete with {completions} succeeded"),
        Duration::from_secs(90),
        |cp| {
            let job = get_json(cp, &["get", "job", name]);
            has_condition(&job, "Complete") && job["status"]["succeeded"] == completions
        },
    );
    let pods = pods_of(cp, name);
    assert_eq!(pods.len() as u64, completions, "{pods:#?}");
    for pod in &pods {
        assert_eq!(pod["status"]["phase"], "Succeeded", "{pod:#?}");
        assert_eq!(pod["spec"]["nodeName"], "kwok-node-0", "{pod:#?}");
    }
}

#[test]
fn jobs_run_to_completion_and_suspended_jobs_wait() {
    let started = Instant::now();
    let cp = ControlPlane::start_full();
    let up = started.elapsed();

    // Both at once: the running Job shows the controller is live, which is
    // what makes "the suspended one has no pods" mean something.
    for (name, suspend) in [("plain", false), ("held", true)] {
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &job(name, 2, 1, suspend));
        assert!(out.status.success(), "{}", text(&out));
    }
    wait_complete(&cp, "plain", 2);
    let ran = started.elapsed();

    cp.wait_for(
        "job held to report Suspended",
        Duration::from_secs(30),
        |cp| has_condition(&get_json(cp, &["get", "job", "held"]), "Suspended"),
    );
    // The controller has seen the Job; give it time to (wrongly) act on it.
    std::thread::sleep(Duration::from_secs(3));
    let held = get_json(&cp, &["get", "job", "held"]);
    assert_eq!(pods_of(&cp, "held").len(), 0, "{held:#?}");
    assert_eq!(
        held["status"]["active"].as_u64().unwrap_or(0),
        0,
        "{held:#?}"
    );

    let out = cp.kubectl(&[
        "patch",
        "job",
        "held",
        "-p",
        r#"{"spec":{"suspend":false}}"#,
    ]);
    assert!(out.status.success(), "{}", text(&out));
    wait_complete(&cp, "held", 2);

    eprintln!(
        "start_full {up:.1?}, first job done at {ran:.1?}, all done at {:.1?}",
        started.elapsed()
    );
}
