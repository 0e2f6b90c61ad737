//! The mutating webhook's decision: labelled Jobs are created suspended, so
//! that nobody has to remember `suspend: true` and no pod starts before the
//! controller has taken a slot; and only the controller resumes them, so
//! that a user, a UI or a GitOps tool setting `suspend: false` cannot start
//! pods the group has no slot for.

use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, Operation};
use serde_json::json;

use std::sync::Arc;

use crate::operator::crd::{
    ADMITTED_AT_ANNOTATION, GROUP_LABEL, KUEUE_QUEUE_LABEL, TOKEN_ANNOTATION,
};
use crate::operator::kinds::KindSpec;

/// Where the API server sends Job creations (the chart's webhook
/// configuration names the same path).
pub const PATH: &str = "/mutate-jobs";

/// What the webhook did with one request; also the metric's label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// A labelled Job created without `suspend: true`: suspended.
    Suspended,
    /// Someone other than the controller resumed a suspended labelled Job:
    /// `suspend` kept true and its admission annotations dropped, so that
    /// it waits for a slot like a new Job (or is resumed at once by the
    /// controller if it still holds one).
    KeptSuspended,
    /// Anything else passes unchanged: other operations and kinds, Jobs
    /// without the label, Jobs already suspended, the controller's own
    /// updates.
    Unchanged,
    /// The request could not be read; the API server applies the
    /// configuration's `failurePolicy`.
    Invalid,
    /// Someone other than the controller removed jobgate's scheduling
    /// gate from a plain Pod: denied, since a gate cannot be put back.
    Refused,
}

impl Verdict {
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Suspended => "suspended",
            Verdict::KeptSuspended => "kept_suspended",
            Verdict::Unchanged => "unchanged",
            Verdict::Invalid => "invalid",
            Verdict::Refused => "refused",
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
    /// The Job's `spec.suspend` as created or updated.
    pub suspend: Option<bool>,
    /// On an update: `spec.suspend` before it.
    pub old_suspend: Option<bool>,
    /// The request comes from this controller's own identity.
    pub by_controller: bool,
    /// The Job names a Kueue queue: Kueue resumes it, and the controller
    /// leaves it alone (see `admission::Decision::in_kueue`).
    pub in_kueue: bool,
    /// Of a kind `--workload-kinds` describes: held back as Jobs are, by
    /// its own switch (`suspend` and `old_suspend` then say whether it is
    /// held).
    pub described: bool,
}

/// Resuming a Job of a group is the controller's decision, made against
/// the ledger: so a labelled batch/v1 Job is created suspended, and an
/// update by anyone else that would resume it keeps it suspended.
/// Suspending is left to anyone: it only lowers what runs. The label's
/// value is not checked: the configuration's `objectSelector` sends every
/// labelled Job here, and a Job naming a group that does not exist waits
/// (suspended) where the controller reports it, instead of running outside
/// any limit. A Job that also names a Kueue queue is Kueue's to resume.
/// A running Job labelled by an update is not suspended here:
/// the controller adopts it if a slot is free and suspends it otherwise,
/// rather than this restarting its pods when a slot was free.
pub fn decide(req: &Request) -> Verdict {
    let is_job = req.group == "batch" && req.kind == "Job";
    if !(is_job || req.described) || req.group_label.is_none() {
        return Verdict::Unchanged;
    }
    let suspended = req.suspend == Some(true);
    match req.operation {
        Operation::Create if !suspended => Verdict::Suspended,
        Operation::Update
            if req.old_suspend == Some(true)
                && !suspended
                && !req.by_controller
                && !req.in_kueue =>
        {
            Verdict::KeptSuspended
        }
        _ => Verdict::Unchanged,
    }
}

/// The response to one admission request, and what was decided.
/// `controller` is the user name the controller's requests carry.
pub fn respond(
    req: &AdmissionRequest<DynamicObject>,
    controller: &str,
    kinds: &[Arc<KindSpec>],
    gate_pods: bool,
) -> (AdmissionResponse, Verdict) {
    if gate_pods && req.kind.group.is_empty() && req.kind.kind == "Pod" {
        return super::pods::respond(req, controller);
    }
    let object = req.object.as_ref();
    let described = kinds
        .iter()
        .find(|k| k.group == req.kind.group && k.kind == req.kind.kind);
    let held = |o: &DynamicObject| match described {
        Some(kind) => Some(kind.is_suspended(o)),
        None => o.data["spec"]["suspend"].as_bool(),
    };
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
        suspend: object.and_then(held),
        old_suspend: req.old_object.as_ref().and_then(held),
        by_controller: req.user_info.username.as_deref() == Some(controller),
        in_kueue: object
            .and_then(|o| o.metadata.labels.as_ref())
            .is_some_and(|l| l.contains_key(KUEUE_QUEUE_LABEL)),
        described: described.is_some(),
    };
    let verdict = decide(&facts);
    let mut response = AdmissionResponse::from(req);
    let group = facts.group_label.unwrap_or_default();
    // `add` also replaces a `suspend: false` the Job came with.
    let mut ops = match (described, object) {
        (Some(kind), Some(o)) => vec![hold_op(kind, &o.data)],
        _ => vec![json!({"op": "add", "path": "/spec/suspend", "value": true})],
    };
    // kubectl prints warnings: the user learns why the Job does not start.
    let warning = match verdict {
        Verdict::Suspended => format!(
            "jobgate: created suspended; it starts when ConcurrencyGroup {group} has a free slot"
        ),
        Verdict::KeptSuspended => {
            // Without them the controller takes the Job for one waiting
            // (or, if its slot is still held, for one to resume), never for
            // one that was let run and may go on running.
            let annotations = object.and_then(|o| o.metadata.annotations.as_ref());
            for key in [ADMITTED_AT_ANNOTATION, TOKEN_ANNOTATION] {
                if annotations.is_some_and(|a| a.contains_key(key)) {
                    let path = format!("/metadata/annotations/{}", key.replace('/', "~1"));
                    ops.push(json!({"op": "remove", "path": path}));
                }
            }
            format!(
                "jobgate: spec.suspend kept true; only jobgate resumes Jobs of ConcurrencyGroup {group}, and this one starts when the group has a free slot"
            )
        }
        Verdict::Unchanged | Verdict::Invalid | Verdict::Refused => return (response, verdict),
    };
    response.warnings = Some(vec![warning]);
    let patch = serde_json::from_value::<json_patch::Patch>(serde_json::Value::Array(ops));
    match patch.map_err(|e| e.to_string()).and_then(|p| {
        response
            .with_patch(p)
            .map_err(|e| format!("serializing the patch: {e}"))
    }) {
        Ok(patched) => (patched, verdict),
        // Denied with the request's uid, so the API server shows this
        // message (a response without the uid is reported as a mismatch).
        Err(e) => (AdmissionResponse::from(req).deny(e), Verdict::Invalid),
    }
}

/// The JSON patch operation that sets `kind`'s switch to held in
/// `object`: an `add` at the first part of its path that is missing,
/// carrying the rest (JSON patch cannot add below a missing object).
fn hold_op(kind: &KindSpec, object: &serde_json::Value) -> serde_json::Value {
    let path: Vec<&str> = kind.suspend.path.split('.').collect();
    let mut at = object;
    let mut depth = 0;
    while depth + 1 < path.len() {
        match at.get(path[depth]) {
            Some(next) if next.is_object() => {
                at = next;
                depth += 1;
            }
            _ => break,
        }
    }
    let mut value = kind.held();
    for key in path[depth + 1..].iter().rev() {
        value = json!({ *key: value });
    }
    let pointer: String = path[..=depth]
        .iter()
        .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
        .collect();
    json!({"op": "add", "path": pointer, "value": value})
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::admission::AdmissionReview;

    const CONTROLLER: &str = "system:serviceaccount:jobgate:jobgate";

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
            old_suspend: None,
            by_controller: false,
            in_kueue: false,
            described: false,
        }
    }

    /// An update of a labelled Job from `old` to `new` `spec.suspend`.
    fn update(old: Option<bool>, new: Option<bool>, by_controller: bool) -> Verdict {
        decide(&Request {
            old_suspend: old,
            by_controller,
            ..job_request(Operation::Update, Some("etl"), new)
        })
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
        assert_eq!(update(Some(false), Some(false), false), Verdict::Unchanged);
        let mut pod = job_request(Operation::Create, Some("etl"), None);
        pod.group = "";
        pod.kind = "Pod";
        assert_eq!(decide(&pod), Verdict::Unchanged);
    }

    #[test]
    fn only_the_controller_resumes_a_labelled_job() {
        // A user, a UI or a GitOps tool: kept suspended, however it says so.
        assert_eq!(
            update(Some(true), Some(false), false),
            Verdict::KeptSuspended
        );
        assert_eq!(update(Some(true), None, false), Verdict::KeptSuspended);
        // The controller resumes it.
        assert_eq!(update(Some(true), Some(false), true), Verdict::Unchanged);
        // Anyone may suspend, and leave a suspended Job suspended.
        assert_eq!(update(Some(false), Some(true), false), Verdict::Unchanged);
        assert_eq!(update(Some(true), Some(true), false), Verdict::Unchanged);
        // A running Job labelled by an update: the controller adopts it or
        // suspends it, against the ledger.
        assert_eq!(update(None, Some(false), false), Verdict::Unchanged);
        // The label removed by the update: no longer the group's Job.
        let unlabelled = Request {
            old_suspend: Some(true),
            ..job_request(Operation::Update, None, Some(false))
        };
        assert_eq!(decide(&unlabelled), Verdict::Unchanged);
        // A Job in a Kueue queue: Kueue resumes it.
        let kueue = Request {
            old_suspend: Some(true),
            in_kueue: true,
            ..job_request(Operation::Update, Some("etl"), Some(false))
        };
        assert_eq!(decide(&kueue), Verdict::Unchanged);
    }

    fn review(
        labels: serde_json::Value,
        spec: serde_json::Value,
    ) -> AdmissionRequest<DynamicObject> {
        review_of("CREATE", "alice", json!({"labels": labels}), spec, None)
    }

    fn review_of(
        operation: &str,
        user: &str,
        metadata: serde_json::Value,
        spec: serde_json::Value,
        old_spec: Option<serde_json::Value>,
    ) -> AdmissionRequest<DynamicObject> {
        let mut meta = json!({"name": "etl-1", "namespace": "batch"});
        for (k, v) in metadata.as_object().unwrap() {
            meta[k] = v.clone();
        }
        let old = old_spec.map(
            |spec| json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": meta, "spec": spec}),
        );
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "705ab4f5-6393-11e8-b7cc-42010a800002",
                "kind": {"group": "batch", "version": "v1", "kind": "Job"},
                "resource": {"group": "batch", "version": "v1", "resource": "jobs"},
                "operation": operation,
                "userInfo": {"username": user},
                "name": "etl-1",
                "namespace": "batch",
                "object": {
                    "apiVersion": "batch/v1",
                    "kind": "Job",
                    "metadata": meta,
                    "spec": spec
                },
                "oldObject": old
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    #[test]
    fn the_response_carries_a_json_patch_for_labelled_jobs() {
        let req = review(json!({GROUP_LABEL: "etl"}), json!({"template": {}}));
        let (response, verdict) = respond(&req, CONTROLLER, &[], false);
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

    /// A labelled object of another kind, created (`old` is `None`) or
    /// updated, through the whole review.
    fn other_kind(
        group: &str,
        kind: &str,
        spec: serde_json::Value,
        old: Option<serde_json::Value>,
        user: &str,
    ) -> AdmissionRequest<DynamicObject> {
        let object = |spec: serde_json::Value| {
            json!({"apiVersion": format!("{group}/v1"), "kind": kind,
                   "metadata": {"name": "w", "labels": {GROUP_LABEL: "g"},
                                "annotations": {ADMITTED_AT_ANNOTATION: "2026-12-01T00:00:00Z"}},
                   "spec": spec})
        };
        let review: AdmissionReview<DynamicObject> = serde_json::from_value(json!({
            "apiVersion": "admission.k8s.io/v1",
            "kind": "AdmissionReview",
            "request": {
                "uid": "u", "name": "w", "namespace": "team",
                "kind": {"group": group, "version": "v1", "kind": kind},
                "resource": {"group": group, "version": "v1", "resource": "things"},
                "operation": if old.is_some() { "UPDATE" } else { "CREATE" },
                "userInfo": {"username": user},
                "object": object(spec),
                "oldObject": old.map(object),
            }
        }))
        .unwrap();
        review.try_into().unwrap()
    }

    fn patch_of(response: AdmissionResponse) -> serde_json::Value {
        serde_json::from_slice(response.patch.as_deref().unwrap()).unwrap()
    }

    #[test]
    fn a_described_kind_is_held_by_its_own_switch_wherever_it_is() {
        let jobset = Arc::new(crate::operator::kinds::builtin("jobset").unwrap());
        let mut training = (*jobset).clone();
        training.group = "kubeflow.org".into();
        training.kind = "PyTorchJob".into();
        training.suspend.path = "spec.runPolicy.suspend".into();
        let mut tekton = (*jobset).clone();
        tekton.group = "tekton.dev".into();
        tekton.kind = "PipelineRun".into();
        tekton.suspend.path = "spec.status".into();
        tekton.suspend.held_value = Some(json!("PipelineRunPending"));
        let kinds = [jobset, Arc::new(training), Arc::new(tekton)];

        let req = other_kind(
            "jobset.x-k8s.io",
            "JobSet",
            json!({"suspend": false}),
            None,
            "alice",
        );
        let (response, verdict) = respond(&req, CONTROLLER, &kinds, false);
        assert_eq!(verdict, Verdict::Suspended);
        assert_eq!(
            patch_of(response),
            json!([{"op": "add", "path": "/spec/suspend", "value": true}])
        );

        // No runPolicy yet: added whole, as a JSON patch cannot add below it.
        let req = other_kind("kubeflow.org", "PyTorchJob", json!({}), None, "alice");
        let (response, _) = respond(&req, CONTROLLER, &kinds, false);
        assert_eq!(
            patch_of(response),
            json!([{"op": "add", "path": "/spec/runPolicy", "value": {"suspend": true}}])
        );

        // Held by a value; someone else's update that clears it is undone,
        // and the admission marks go.
        let held = json!({"status": "PipelineRunPending"});
        let req = other_kind(
            "tekton.dev",
            "PipelineRun",
            json!({}),
            Some(held.clone()),
            "alice",
        );
        let (response, verdict) = respond(&req, CONTROLLER, &kinds, false);
        assert_eq!(verdict, Verdict::KeptSuspended);
        let patch = patch_of(response);
        assert_eq!(
            patch[0],
            json!({"op": "add", "path": "/spec/status", "value": "PipelineRunPending"})
        );
        assert_eq!(patch[1]["op"], "remove");
        // The controller's own resume passes.
        let req = other_kind(
            "tekton.dev",
            "PipelineRun",
            json!({}),
            Some(held),
            CONTROLLER,
        );
        assert_eq!(
            respond(&req, CONTROLLER, &kinds, false).1,
            Verdict::Unchanged
        );
        // A kind not described passes unchanged.
        let req = other_kind("x.io", "Thing", json!({}), None, "alice");
        assert_eq!(
            respond(&req, CONTROLLER, &kinds, false).1,
            Verdict::Unchanged
        );
    }

    #[test]
    fn unlabelled_jobs_get_no_patch() {
        let req = review(json!({"app": "etl"}), json!({"template": {}}));
        let (response, verdict) = respond(&req, CONTROLLER, &[], false);
        assert_eq!(verdict, Verdict::Unchanged);
        let out = serde_json::to_value(response.into_review()).unwrap();
        assert_eq!(out["response"]["allowed"], true);
        assert!(out["response"].get("patch").is_none());
    }

    #[test]
    fn a_resume_by_someone_else_keeps_suspend_and_drops_the_admission() {
        let metadata = json!({
            "labels": {GROUP_LABEL: "etl"},
            "annotations": {ADMITTED_AT_ANNOTATION: "2026-12-06T00:00:00Z", TOKEN_ANNOTATION: "7", "team": "data"},
        });
        let resume = |user: &str| {
            review_of(
                "UPDATE",
                user,
                metadata.clone(),
                json!({"suspend": false, "template": {}}),
                Some(json!({"suspend": true, "template": {}})),
            )
        };
        let (response, verdict) = respond(&resume("argocd"), CONTROLLER, &[], false);
        assert_eq!(verdict, Verdict::KeptSuspended);
        assert!(
            response
                .warnings
                .as_ref()
                .is_some_and(|w| w[0].contains("only jobgate resumes Jobs of ConcurrencyGroup etl"))
        );
        let patch: serde_json::Value =
            serde_json::from_slice(response.patch.as_deref().unwrap()).unwrap();
        assert_eq!(
            patch,
            json!([
                {"op": "add", "path": "/spec/suspend", "value": true},
                {"op": "remove", "path": "/metadata/annotations/jobgate.dev~1admitted-at"},
                {"op": "remove", "path": "/metadata/annotations/jobgate.dev~1fencing-token"},
            ])
        );
        // The patch applies to the Job as updated, and leaves the rest.
        let mut job = json!({"metadata": metadata, "spec": {"suspend": false}});
        json_patch::patch(
            &mut job,
            &serde_json::from_value::<json_patch::Patch>(patch).unwrap(),
        )
        .unwrap();
        assert_eq!(
            job,
            json!({"metadata": {"labels": {GROUP_LABEL: "etl"}, "annotations": {"team": "data"}}, "spec": {"suspend": true}})
        );

        let (response, verdict) = respond(&resume(CONTROLLER), CONTROLLER, &[], false);
        assert_eq!(verdict, Verdict::Unchanged);
        assert!(response.patch.is_none());
    }
}
