//! What the controller reads of a `batch/v1` Job: whether it is finished or
//! admitted, and the view of it that the admission decisions take
//! (`admission::JobView`). Shared by the passes, the orphan sweep, the job
//! cache and `jobgate status`.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use super::admission::JobView;
use super::crd::{
    ADMITTED_AT_ANNOTATION, KUEUE_QUEUE_LABEL, PRIORITY_ANNOTATION, SLOTS_ANNOTATION,
};

/// Kubernetes' `terminationGracePeriodSeconds` when a pod spec sets none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

pub fn is_finished(job: &Job) -> bool {
    job.metadata.deletion_timestamp.is_some()
        || job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            })
}

pub fn is_admitted(job: &Job) -> bool {
    job.annotations().contains_key(ADMITTED_AT_ANNOTATION)
}

pub fn job_view(job: &Job) -> Option<JobView> {
    let status = job.status.as_ref();
    let count = |f: fn(&k8s_openapi::api::batch::v1::JobStatus) -> Option<i32>| {
        status.and_then(f).unwrap_or(0)
    };
    Some(JobView {
        uid: job.uid()?,
        name: job.name_any(),
        created: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        priority: job
            .annotations()
            .get(PRIORITY_ANNOTATION)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0),
        suspended: job.spec.as_ref().and_then(|s| s.suspend) == Some(true),
        admitted: is_admitted(job),
        finished: is_finished(job),
        active_pods: count(|s| s.active) > 0 || count(|s| s.terminating) > 0,
        grace_seconds: job
            .spec
            .as_ref()
            .and_then(|s| s.template.spec.as_ref())
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(DEFAULT_GRACE_SECONDS),
        slots: job
            .annotations()
            .get(SLOTS_ANNOTATION)
            .map_or(Some(1), |n| n.trim().parse().ok())
            .unwrap_or(0),
        in_kueue: job.labels().contains_key(KUEUE_QUEUE_LABEL),
    })
}
