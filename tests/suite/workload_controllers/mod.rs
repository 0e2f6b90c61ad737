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
use jobgate_testkit::workloads;

mod argo;
mod jobset;
mod kuberay;

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
