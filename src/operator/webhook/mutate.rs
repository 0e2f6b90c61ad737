//! The mutating webhook's decision: labelled Jobs are created suspended, so
//! that nobody has to remember `suspend: true` and no pod starts before the
//! controller has taken a slot.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::json;

use crate::operator::crd::GROUP_LABEL;

/// Where the API server sends Job creations (the chart's webhook
/// configuration names the same path).
pub const PATH: &str = "/mutate-jobs";

/// What the webhook did with one request; also the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A labelled Job created without `suspend: true`: suspended.
    Suspended,
    /// Anything else passes unchanged: other operations and kinds, Jobs
    /// without the label, Jobs already suspended.
    Unchanged,
    /// The request could not be read; the API server applies the
    /// configuration's `failurePolicy`.
    Invalid,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Suspended => "suspended",
            Verdict::Unchanged => "unchanged",
            Verdict::Invalid => "invalid",
        }
    }
}

/// The facts of a request the decision depends on.
#[derive(Debug, Clone, Copy)]
pub struct Request<'a> {
    pub operation: &'a Operation,
    pub group: &'a str,
    pub kind: &'a str,
    /// The Job's `jobgate.dev/group` label.
    pub group_label: Option<&'a str>,
    /// The Job's `spec.suspend` as created.
    pub suspend: Option<bool>,
}

/// Only the creation of a labelled batch/v1 Job is changed. Updates are
/// left alone: suspending or resuming a Job that exists is the
/// controller's decision, made against the ledger. The label's value is
/// not checked: the configuration's `objectSelector` sends every labelled
/// Job here, and a Job naming a group that does not exist waits (suspended)
/// where the controller reports it, instead of running outside any limit.
pub fn decide(req: &Request) -> Verdict {
    let is_job = req.group == "batch" && req.kind == "Job";
    if !matches!(req.operation, Operation::Create) || !is_job || req.group_label.is_none() {
        return Verdict::Unchanged;
    }
    if req.suspend == Some(true) {
        Verdict::Unchanged
    } else {
        Verdict::Suspended
    }
}

/// The response to one admission request, and what was decided.
pub fn respond(req: &AdmissionRequest<DynamicObject>) -> (AdmissionResponse, Verdict) {
    let object = req.object.as_ref();
    let facts = Request {
        operation: &req.operation,
        group: &req.kind.group,
        kind: &req.kind.kind,
        group_label: object.and_then(|o| {
            o.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(GROUP_LABEL))
                .map(String::as_str)
        }),
        suspend: object.and_then(|o| o.data["spec"]["suspend"].as_bool()),
    };
    let verdict = decide(&facts);
    let mut response = AdmissionResponse::from(req);
    if verdict != Verdict::Suspended {
        return (response, verdict);
    }
    // kubectl prints warnings: the user learns why the Job does not start.
    response.warnings = Some(vec![format!(
        "jobgate: created suspended; it starts when ConcurrencyGroup {} has a free slot",
        facts.group_label.unwrap_or_default()
    )]);
    // `add` also replaces a `suspend: false` the Job was created with.
    let patch = serde_json::from_value::<json_patch::Patch>(json!([
        {"op": "add", "path": "/spec/suspend", "value": true}
    ]));
    match patch.map_err(|e| e.to_string()).and_then(|p| {
        response
            .with_patch(p)
            .map_err(|e| format!("serializing the patch: {e}"))
    }) {
        Ok(patched) => (patched, Verdict::Suspended),
        // Denied with the request's uid, so the API server shows this
        // message (a response without the uid is reported as a mismatch).
        Err(e) => (AdmissionResponse::from(req).deny(e), Verdict::Invalid),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    fn job_request(
        operation: Operation,
        label: Option<&str>,
        suspend: Option<bool>,
    ) -> Request<'_> {
        let op: &'static Operation = Box::leak(Box::new(operation));
        Request {
            operation: op,
            group: "batch",
            kind: "Job",
            group_label: label,
            suspend,
        }
    }

    #[test]
    fn a_labelled_job_is_created_suspended() {
        assert_eq!(
            decide(&job_request(Operation::Create, Some("etl"), None)),
            Verdict::Suspended
        );
        assert_eq!(
            decide(&job_request(Operation::Create, Some("etl"), Some(false))),
            Verdict::Suspended
        );
    }

    #[test]
    fn everything_else_passes_unchanged() {
        // Already suspended, no label, an update, another kind.
        assert_eq!(
            decide(&job_request(Operation::Create, Some("etl"), Some(true))),
            Verdict::Unchanged
        );
        assert_eq!(
            decide(&job_request(Operation::Create, None, None)),
            Verdict::Unchanged
        );
        assert_eq!(
            decide(&job_request(Operation::Update, Some("etl"), Some(false))),
            Verdict::Unchanged
        );
        let mut pod = job_request(Operation::Create, Some("etl"), None);
        pod.group = "";
        pod.kind = "Pod";
        assert_eq!(decide(&pod), Verdict::Unchanged);
    }

    fn review(
        labels: serde_json::Value,
        spec: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "batch", "version": "v1", "kind": "Job"},
                "resource": {"group": "batch", "version": "v1", "resource": "jobs"},
                "operation": "CREATE",
                "userInfo": {"username": "alice"},
                "name": "etl-1",
                "namespace": "batch",
                "object": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": {"name": "etl-1", "namespace": "batch", "labels": labels},
                    "spec": spec
                }
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn the_response_carries_a_json_patch_for_labelled_jobs() {
        let req = review(json!({GROUP_LABEL: "etl"}), json!({"template": {}}));
        let (response, verdict) = respond(&req);
        assert_eq!(verdict, Verdict::Suspended);
        let patch_bytes = response.patch.clone();
        assert!(
            response
                .warnings
                .as_ref()
                .is_some_and(|w| w[0].contains("ConcurrencyGroup etl has a free slot"))
        );
        let out = serde_json::to_value(response.into_review()).unwrap();
        let resp = &out["response"];
        assert_eq!(resp["uid"], "705ab4f5-6393-11e8-b7cc-42010a800002");
        assert_eq!(resp["allowed"], true);
        assert_eq!(resp["patchType"], "JSONPatch");
        let patch: serde_json::Value =
            serde_json::from_slice(patch_bytes.as_deref().unwrap()).unwrap();
        assert_eq!(
            patch,
            json!([{"op": "add", "path": "/spec/suspend", "value": true}])
        );
    }

    #[test]
    fn unlabelled_jobs_get_no_patch() {
        let req = review(json!({"app": "etl"}), json!({"template": {}}));
        let (response, verdict) = respond(&req);
        assert_eq!(verdict, Verdict::Unchanged);
        let out = serde_json::to_value(response.into_review()).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }
}
