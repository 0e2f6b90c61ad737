//! A kind of work of the tests' own, with no built-in description in
//! jobgate: `BatchRun` (`example.jobgate.dev/v1`), and a small controller
//! for it that runs beside the control plane as any workload controller
//! does. It shows the description an administrator writes for a kind
//! jobgate does not know (`--workload-kinds FILE`), end to end.
//!
//! The kind differs from the built-in ones where a description can: its
//! switch is nested (`spec.control.hold`, which the webhook must add with
//! its parent), its pods carry its name (not its UID), it finishes by a
//! phase, and its units and its pods' grace period come from fields
//! (`spec.width`, `spec.gracePeriodSeconds`). The controller
//! runs `spec.width` pods while it is not held, each running for
//! `spec.runFor` (a Go duration, carried out by kwok's held stages),
//! deletes them when it is held again, and sets `status.phase: Done` once
//! they have all succeeded.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::k8s::{ControlPlane, RUN_FOR_ANNOTATION};

/// The label its pods carry: the BatchRun's name.
pub const RUN_LABEL: &str = "example.jobgate.dev/run";

/// The description jobgate is given for it, as an administrator writes it.
pub const DESCRIPTION: &str = r#"- group: example.jobgate.dev
  version: v1
  kind: BatchRun
  plural: batchruns
  suspend: {path: spec.control.hold}
  finished: {path: status.phase, values: [Done, Failed]}
  pods: {label: example.jobgate.dev/run, value: name}
  units: {path: spec.width}
  gracePeriodPath: spec.gracePeriodSeconds
"#;

const CRD: &str = r#"apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: batchruns.example.jobgate.dev
spec:
  group: example.jobgate.dev
  scope: Namespaced
  names: {plural: batchruns, singular: batchrun, kind: BatchRun}
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          x-kubernetes-preserve-unknown-fields: true
"#;

pub fn api_resource() -> ApiResource {
    let gvk = GroupVersionKind::gvk("example.jobgate.dev", "v1", "BatchRun");
    ApiResource::from_gvk_with_plural(&gvk, "batchruns")
}

/// Installs the CRD and waits until it is served.
pub fn install(cp: &ControlPlane) {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], CRD);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    cp.wait_for("the BatchRun CRD", Duration::from_secs(30), |cp| {
        cp.kubectl(&[
            "wait",
            "--for=condition=Established",
            "--timeout=5s",
            "crd/batchruns.example.jobgate.dev",
        ])
        .status
        .success()
    });
}

/// A BatchRun of group `group`, `width` pods wide, created as a user
/// would (not held: the webhook holds it).
pub fn object(name: &str, group: &str, width: u32, run_for: &str) -> DynamicObject {
    serde_json::from_value(json!({
        "apiVersion": "example.jobgate.dev/v1",
        "kind": "BatchRun",
        "metadata": {"name": name, "labels": {"jobgate.dev/group": group}},
        "spec": {"width": width, "runFor": run_for, "gracePeriodSeconds": 1},
    }))
    .expect("a BatchRun")
}

/// Runs the controller in the background until the task is dropped with
/// the runtime: one pass over namespace `ns` every 200 ms.
pub fn run(client: Client, ns: &str) -> tokio::task::JoinHandle<()> {
    let runs: Api<DynamicObject> = Api::namespaced_with(client.clone(), ns, &api_resource());
    let pods: Api<Pod> = Api::namespaced(client, ns);
    tokio::spawn(async move {
        loop {
            if let Err(e) = pass(&runs, &pods).await {
                eprintln!("batchrun controller: {e}");
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    })
}

async fn pass(runs: &Api<DynamicObject>, pods: &Api<Pod>) -> Result<(), kube::Error> {
    let all_pods = pods.list(&ListParams::default().labels(RUN_LABEL)).await?;
    let mut by_run: BTreeMap<String, Vec<&Pod>> = BTreeMap::new();
    for pod in &all_pods.items {
        if let Some(run) = pod.labels().get(RUN_LABEL) {
            by_run.entry(run.clone()).or_default().push(pod);
        }
    }
    for run in runs.list(&ListParams::default()).await?.items {
        let name = run.name_any();
        let held = run.data["spec"]["control"]["hold"] == json!(true);
        let done = run.data["status"]["phase"] == json!("Done");
        let mine = by_run.remove(&name).unwrap_or_default();
        if done || run.metadata.deletion_timestamp.is_some() {
            continue;
        }
        if held {
            // Suspended: its pods go.
            for pod in mine
                .iter()
                .filter(|p| p.metadata.deletion_timestamp.is_none())
            {
                let _ = pods.delete(&pod.name_any(), &DeleteParams::default()).await;
            }
            continue;
        }
        let succeeded = mine
            .iter()
            .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Succeeded"))
            .count();
        let width = run.data["spec"]["width"].as_u64().unwrap_or(1) as usize;
        if succeeded >= width {
            let patch = json!({"status": {"phase": "Done"}});
            runs.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
                .await?;
            continue;
        }
        if mine.is_empty() {
            let run_for = run.data["spec"]["runFor"]
                .as_str()
                .unwrap_or("1s")
                .to_string();
            for i in 0..width {
                let pod: Pod = serde_json::from_value(json!({
                    "metadata": {
                        "name": format!("{name}-{i}"),
                        "labels": {RUN_LABEL: name},
                        // Its share of the run's units, for the pod-level
                        // checker (`PodLog` weighs a workload by it).
                        "annotations": {RUN_FOR_ANNOTATION: run_for, "jobgate.dev/slots": width.to_string()},
                        "ownerReferences": [{"apiVersion": "example.jobgate.dev/v1", "kind": "BatchRun",
                            "name": name, "uid": run.uid(), "controller": true}],
                    },
                    "spec": {"restartPolicy": "Never",
                             "terminationGracePeriodSeconds": run.data["spec"]["gracePeriodSeconds"].as_i64().unwrap_or(30),
                             "containers": [{"name": "work", "image": "busybox"}]},
                }))
                .expect("a pod");
                match pods.create(&PostParams::default(), &pod).await {
                    Ok(_) => {}
                    Err(kube::Error::Api(e)) if e.code == 409 => {}
                    Err(e) => return Err(e),
                }
            }
        }
    }
    Ok(())
}
