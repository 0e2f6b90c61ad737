//! `batch/v1` Job as a workload: whether it is finished or admitted, the
//! view of it that the admission decisions take (`WorkloadView`), its
//! suspend switch and its pods. Shared by the passes, the orphan sweep, the
//! job cache and `jobgate status`.

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;

use super::crd::{ADMITTED_AT_ANNOTATION, KUEUE_QUEUE_LABEL};
use super::workload::{Workload, WorkloadView, created_of, priority_of, slots_of};

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

pub fn job_view(job: &Job) -> Option<WorkloadView> {
    let status = job.status.as_ref();
    let count = |f: fn(&k8s_openapi::api::batch::v1::JobStatus) -> Option<i32>| {
        status.and_then(f).unwrap_or(0)
    };
    Some(WorkloadView {
        uid: job.uid()?,
        name: job.name_any(),
        created: created_of(&job.metadata),
        priority: priority_of(job.annotations()),
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
        slots: slots_of(job.annotations()),
        in_kueue: job.labels().contains_key(KUEUE_QUEUE_LABEL),
    })
}

/// The Job controller labels every pod of a Job with the Job's UID; the
/// label stays on pods the Job orphaned.
pub const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

impl Workload for Job {
    fn view(&self) -> Option<WorkloadView> {
        job_view(self)
    }

    fn is_finished(&self) -> bool {
        is_finished(self)
    }

    fn is_admitted(&self) -> bool {
        is_admitted(self)
    }

    fn is_suspended(&self) -> bool {
        self.spec.as_ref().and_then(|s| s.suspend) == Some(true)
    }

    fn suspend_patch(suspend: bool) -> serde_json::Value {
        serde_json::json!({"spec": {"suspend": suspend}})
    }

    fn pods_selector(uids: &[&str]) -> String {
        format!("{CONTROLLER_UID_LABEL} in ({})", uids.join(","))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_job_is_suspended_by_its_spec_and_its_pods_are_found_by_its_uid() {
        let job: Job = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "etl", "uid": "u1", "creationTimestamp": "2026-12-01T00:00:00Z"},
            "spec": {"suspend": true, "template": {}},
        }))
        .unwrap();
        assert!(Workload::is_suspended(&job));
        assert!(!Workload::is_finished(&job));
        let view = Workload::view(&job).unwrap();
        assert_eq!(
            (view.uid.as_str(), view.suspended, view.slots),
            ("u1", true, 1)
        );
        assert_eq!(
            Job::suspend_patch(false),
            serde_json::json!({"spec": {"suspend": false}})
        );
        assert_eq!(
            Job::pods_selector(&["u1", "u2"]),
            "batch.kubernetes.io/controller-uid in (u1,u2)"
        );
    }
}
