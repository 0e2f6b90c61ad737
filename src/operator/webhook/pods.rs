//! The webhook's decision for plain Pods (`gated_pods`): a labelled Pod
//! that no controller owns is created with jobgate's scheduling gate, and
//! only the controller may remove it.

use k8s_openapi::api::core::v1::Pod;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};

use super::mutate::Verdict;
use crate::operator::crd::GROUP_LABEL;
use crate::operator::gated_pods::{self, GATE};

/// What the decision reads of one request.
#[derive(Debug, Clone, Copy)]
pub struct PodRequest<'a> {
    pub operation: &'a Operation,
    pub labelled: bool,
    /// Owned by a controller: its workload holds the slot, not the Pod.
    pub controlled: bool,
    pub gated: bool,
    /// On an update: gated before it.
    pub was_gated: bool,
    pub by_controller: bool,
}

pub fn decide(req: &PodRequest) -> Verdict {
    if !req.labelled || req.controlled {
        return Verdict::Unchanged;
    }
    match req.operation {
        Operation::Create if !req.gated => Verdict::Suspended,
        Operation::Update if req.was_gated && !req.gated && !req.by_controller => Verdict::Refused,
        _ => Verdict::Unchanged,
    }
}

pub fn respond(
    req: &AdmissionRequest<DynamicObject>,
    controller: &str,
) -> (AdmissionResponse, Verdict) {
    let as_pod = |o: &DynamicObject| {
        serde_json::to_value(o)
            .ok()
            .and_then(|v| serde_json::from_value::<Pod>(v).ok())
    };
    let pod = req.object.as_ref().and_then(as_pod);
    let old = req.old_object.as_ref().and_then(as_pod);
    let Some(pod) = pod else {
        return (AdmissionResponse::from(req), Verdict::Unchanged);
    };
    let group = pod
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(GROUP_LABEL))
        .cloned();
    let verdict = decide(&PodRequest {
        operation: &req.operation,
        labelled: group.is_some(),
        controlled: gated_pods::has_controller(&pod),
        gated: gated_pods::is_gated(&pod),
        was_gated: old.as_ref().is_some_and(gated_pods::is_gated),
        by_controller: req.user_info.username.as_deref() == Some(controller),
    });
    let group = group.unwrap_or_default();
    match verdict {
        Verdict::Suspended => {
            let op = gated_pods::gate_op(&serde_json::to_value(&pod).unwrap_or_default());
            let patch = serde_json::from_value::<json_patch::Patch>(serde_json::json!([op]));
            let mut response = AdmissionResponse::from(req);
            response.warnings = Some(vec![format!(
                "jobgate: created with scheduling gate {GATE}; it is scheduled when ConcurrencyGroup {group} has a free slot"
            )]);
            match patch.map_err(|e| e.to_string()).and_then(|p| response.with_patch(p).map_err(|e| e.to_string())) {
                Ok(patched) => (patched, verdict),
                Err(e) => (AdmissionResponse::from(req).deny(e), Verdict::Invalid),
            }
        }
        Verdict::Refused => (
            AdmissionResponse::from(req).deny(format!(
                "jobgate: only jobgate removes the scheduling gate {GATE}, when ConcurrencyGroup {group} has a free slot for this Pod; a gate cannot be put back, so this update is refused"
            )),
            verdict,
        ),
        _ => (AdmissionResponse::from(req), verdict),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(operation: &'static Operation) -> PodRequest<'static> {
        PodRequest {
            operation,
            labelled: true,
            controlled: false,
            gated: false,
            was_gated: false,
            by_controller: false,
        }
    }

    #[test]
    fn a_labelled_plain_pod_is_gated_and_only_the_controller_ungates_it() {
        assert_eq!(decide(&req(&Operation::Create)), Verdict::Suspended);
        let gated = PodRequest {
            gated: true,
            ..req(&Operation::Create)
        };
        assert_eq!(decide(&gated), Verdict::Unchanged);
        let ungated = PodRequest {
            was_gated: true,
            ..req(&Operation::Update)
        };
        assert_eq!(decide(&ungated), Verdict::Refused);
        let by_us = PodRequest {
            by_controller: true,
            ..ungated
        };
        assert_eq!(decide(&by_us), Verdict::Unchanged);
    }

    #[test]
    fn a_jobs_pod_or_an_unlabelled_one_passes() {
        let owned = PodRequest {
            controlled: true,
            ..req(&Operation::Create)
        };
        assert_eq!(decide(&owned), Verdict::Unchanged);
        let unlabelled = PodRequest {
            labelled: false,
            ..req(&Operation::Create)
        };
        assert_eq!(decide(&unlabelled), Verdict::Unchanged);
    }
}
