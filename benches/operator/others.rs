//! The mixed-kind scenario's other workloads: JobSets and plain Pods of a
//! group, created held and timestamped as they are let run and finish,
//! beside the Jobs `timestamp` follows.

use std::sync::{Arc, Mutex};
use std::time::Instant;

use futures::{StreamExt, TryStreamExt};
use jobgate_testkit::k8s::RUN_FOR_ANNOTATION;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, PostParams};
use kube::core::DynamicObject;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use super::{HOLD_MS, NS, Timeline};

/// [`timestamp`] for JobSets and plain Pods of the groups: admitted when
/// let run (a JobSet's `spec.suspend` false, a Pod's gate gone), finished
/// when a JobSet is Completed or Failed, a Pod Succeeded or Failed.
pub(super) fn timestamp_others(kube: Client, start: Instant, timeline: Arc<Mutex<Timeline>>) {
    let record =
        move |timeline: &Arc<Mutex<Timeline>>, name: String, running: bool, finished: bool| {
            let now = start.elapsed();
            let mut t = timeline.lock().unwrap();
            let was = t.suspended.insert(name.clone(), !running);
            if running && was != Some(false) && !t.admitted.contains_key(&name) {
                t.admitted.insert(name.clone(), now);
            }
            if finished && !t.finished.contains_key(&name) {
                t.finished.insert(name, now);
            }
        };
    let sets = jobsets(&kube);
    let (t, r) = (timeline.clone(), record);
    tokio::spawn(async move {
        let config = watcher::Config::default().labels("jobgate.dev/group");
        let mut events = watcher(sets, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(set)) = events.next().await {
            let running = set.data["spec"]["suspend"] != json!(true);
            let finished = set.data["status"]["conditions"]
                .as_array()
                .is_some_and(|cs| {
                    cs.iter().any(|c| {
                        c["status"] == "True" && (c["type"] == "Completed" || c["type"] == "Failed")
                    })
                });
            r(&t, set.name_any(), running, finished);
        }
    });
    let pods: Api<Pod> = Api::namespaced(kube, NS);
    tokio::spawn(async move {
        let config = watcher::Config::default()
            .labels("jobgate.dev/group,!batch.kubernetes.io/controller-uid");
        let mut events = watcher(pods, config)
            .default_backoff()
            .applied_objects()
            .boxed();
        while let Some(Ok(pod)) = events.next().await {
            let gated = pod
                .spec
                .as_ref()
                .and_then(|s| s.scheduling_gates.as_ref())
                .is_some_and(|g| !g.is_empty());
            let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
            let finished = matches!(phase, Some("Succeeded" | "Failed"));
            record(&timeline, pod.name_any(), !gated, finished);
        }
    });
}

/// The JobSets of the benchmark's namespace.
fn jobsets(kube: &Client) -> Api<DynamicObject> {
    let kind = jobgate::operator::kinds::builtin("jobset").expect("JobSet");
    Api::namespaced_with(kube.clone(), NS, &kind.api_resource())
}

/// Creates the JobSets and Pods of `names` (name, group, is a JobSet),
/// held, 16 at a time; each pod runs for a hold time.
pub(super) async fn create_others(kube: &Client, names: Vec<(String, String, bool)>) {
    const PARALLEL: usize = 16;
    let sets = jobsets(kube);
    let pods: Api<Pod> = Api::namespaced(kube.clone(), NS);
    futures::stream::iter(names)
        .map(|(name, group, jobset)| {
            let (sets, pods) = (sets.clone(), pods.clone());
            async move {
                let hold = HOLD_MS.0 + rand::random::<u64>() % (HOLD_MS.1 - HOLD_MS.0 + 1);
                let pod_spec = json!({
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": 0,
                    "containers": [{"name": "work", "image": "busybox", "command": ["sleep", "inf"]}],
                });
                let annotations = json!({RUN_FOR_ANNOTATION: format!("{hold}ms")});
                let labels = json!({"jobgate.dev/group": group});
                if jobset {
                    // Defaulted as JobSet's webhook would (none runs here).
                    let set: DynamicObject = serde_json::from_value(json!({
                        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
                        "metadata": {"name": name, "labels": labels},
                        "spec": {
                            "suspend": true,
                            "successPolicy": {"operator": "All"},
                            "startupPolicy": {"startupPolicyOrder": "AnyOrder"},
                            "network": {"enableDNSHostnames": true, "publishNotReadyAddresses": true},
                            "replicatedJobs": [{"name": "w", "replicas": 2, "template": {"spec": {
                                "parallelism": 1, "completions": 1, "completionMode": "Indexed", "backoffLimit": 0,
                                "template": {"metadata": {"annotations": annotations}, "spec": pod_spec},
                            }}}],
                        },
                    }))
                    .map_err(|e| e.to_string())?;
                    sets.create(&PostParams::default(), &set).await.map(|_| ()).map_err(|e| e.to_string())
                } else {
                    let mut spec = pod_spec;
                    spec["schedulingGates"] = json!([{"name": "jobgate.dev/slot"}]);
                    let pod: Pod = serde_json::from_value(json!({
                        "metadata": {"name": name, "labels": labels, "annotations": annotations},
                        "spec": spec,
                    }))
                    .map_err(|e| e.to_string())?;
                    pods.create(&PostParams::default(), &pod).await.map(|_| ()).map_err(|e| e.to_string())
                }
            }
        })
        .buffer_unordered(PARALLEL)
        .try_collect::<Vec<()>>()
        .await
        .unwrap_or_else(|e| panic!("creating JobSets and Pods: {e}"));
}
