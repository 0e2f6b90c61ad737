//! Plain Pods as workloads, held back by a scheduling gate rather than a
//! suspend switch: the webhook adds the gate `jobgate.dev/slot` to a
//! labelled Pod as it is created, and the controller removes it when the
//! Pod takes a slot. A gate can only be removed, never added back (the API
//! server refuses it), so nothing else can ungate a Pod the controller has
//! not, and a Pod whose slot is lost cannot be held again: it is deleted.
//!
//! Only Pods no controller owns: a Job's, a JobSet's or a Workflow's pods
//! carry the group label too (the Job template gets it when admitted), and
//! their workload is what holds the slot.

use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use serde_json::{Value, json};

use super::crd::{ADMITTED_AT_ANNOTATION, KUEUE_QUEUE_LABEL};
use super::workload::{WorkloadView, created_of, priority_of, slots_of};

/// The scheduling gate that holds a labelled Pod until it has a slot.
pub const GATE: &str = "jobgate.dev/slot";

/// Kubernetes' `terminationGracePeriodSeconds` when a pod spec sets none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// Owned by a controller (a Job, a ReplicaSet...): not a workload of its
/// own.
pub fn has_controller(pod: &Pod) -> bool {
    pod.owner_references()
        .iter()
        .any(|o| o.controller == Some(true))
}

/// Still held by jobgate's gate.
pub fn is_gated(pod: &Pod) -> bool {
    pod.spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == GATE))
}

/// Done, failed, or being deleted: it will not run again (its containers
/// may still be stopping; its slot waits for that, see `is_live`).
pub fn is_finished(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_some() || matches!(phase(pod), Some("Succeeded" | "Failed"))
}

/// May still run: it exists and is neither Succeeded nor Failed.
pub fn is_live(pod: &Pod) -> bool {
    !matches!(phase(pod), Some("Succeeded" | "Failed"))
}

fn phase(pod: &Pod) -> Option<&str> {
    pod.status.as_ref().and_then(|s| s.phase.as_deref())
}

pub fn view(pod: &Pod) -> Option<WorkloadView> {
    let annotations = pod.annotations();
    Some(WorkloadView {
        uid: pod.uid()?,
        name: pod.name_any(),
        created: created_of(&pod.metadata),
        priority: priority_of(annotations),
        suspended: is_gated(pod),
        admitted: annotations.contains_key(ADMITTED_AT_ANNOTATION),
        finished: is_finished(pod),
        // Counted from the Pod itself (`reconcile::pods`), as for other
        // kinds.
        active_pods: false,
        grace_seconds: pod
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_SECONDS),
        slots: slots_of(annotations),
        in_kueue: pod.labels().contains_key(KUEUE_QUEUE_LABEL),
    })
}

/// The strategic merge patch that removes the gate (and leaves any other
/// gate where it is).
pub fn ungate_patch() -> Value {
    json!({"spec": {"schedulingGates": [{"$patch": "delete", "name": GATE}]}})
}

/// The webhook's JSON patch operation that adds the gate to `pod` (as
/// JSON) at its creation.
pub fn gate_op(pod: &Value) -> Value {
    match pod["spec"]["schedulingGates"].as_array() {
        Some(_) => json!({"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": GATE}}),
        None => json!({"op": "add", "path": "/spec/schedulingGates", "value": [{"name": GATE}]}),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(value: Value) -> Pod {
        serde_json::from_value(value).unwrap()
    }

    #[test]
    fn a_gated_pod_waits_and_a_finished_or_deleted_one_is_done() {
        let gated = pod(json!({
            "metadata": {"name": "p", "uid": "p1", "annotations": {"jobgate.dev/slots": "2"}},
            "spec": {"containers": [], "schedulingGates": [{"name": "other"}, {"name": GATE}],
                     "terminationGracePeriodSeconds": 5},
        }));
        let view = view(&gated).unwrap();
        assert!(view.suspended && !view.finished);
        assert_eq!((view.slots, view.grace_seconds), (2, 5));
        assert!(is_live(&gated));
        let done = pod(json!({"metadata": {"name": "p", "uid": "p1"},
            "spec": {"containers": []}, "status": {"phase": "Succeeded"}}));
        assert!(is_finished(&done) && !is_live(&done) && !is_gated(&done));
        let mut deleted = pod(json!({"metadata": {"name": "p", "uid": "p1"},
            "spec": {"containers": []}, "status": {"phase": "Running"}}));
        deleted.metadata.deletion_timestamp =
            Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
                "2026-12-01T00:00:00Z".parse().unwrap(),
            ));
        // Being deleted: finished, but its containers may still run.
        assert!(is_finished(&deleted) && is_live(&deleted));
    }

    #[test]
    fn the_gate_is_added_beside_others_and_removed_alone() {
        assert_eq!(
            gate_op(&json!({"spec": {}})),
            json!({"op": "add", "path": "/spec/schedulingGates", "value": [{"name": GATE}]})
        );
        assert_eq!(
            gate_op(&json!({"spec": {"schedulingGates": [{"name": "x"}]}})),
            json!({"op": "add", "path": "/spec/schedulingGates/-", "value": {"name": GATE}})
        );
        assert_eq!(
            ungate_patch()["spec"]["schedulingGates"][0]["$patch"],
            "delete"
        );
    }

    #[test]
    fn pods_a_controller_owns_are_not_workloads_of_their_own() {
        let owned = pod(json!({"metadata": {"name": "p", "ownerReferences": [
            {"apiVersion": "batch/v1", "kind": "Job", "name": "j", "uid": "j1", "controller": true}]}}));
        assert!(has_controller(&owned));
        let plain = pod(json!({"metadata": {"name": "p"}}));
        assert!(!has_controller(&plain));
    }
}
