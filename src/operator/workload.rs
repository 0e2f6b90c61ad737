//! The seam between the plan and the kinds of work it admits. The plan
//! speaks of workloads: something with a UID, a suspend switch, units of
//! the limit it takes, a grace period its pods may take to stop, a
//! finished state, and pods found by a label selector. `batch/v1` Job
//! (`jobs.rs`) is the one kind so far; another kind implements `Workload`
//! and leaves the plan as it is.

use kube::Resource;

/// What the controller knows about one workload of the group: all the
/// admission decisions read of it, whatever its kind.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadView {
    /// The holder id in the ledger.
    pub uid: String,
    pub name: String,
    /// Creation time as a sortable RFC 3339 string.
    pub created: String,
    /// `jobgate.dev/priority`; higher goes first.
    pub priority: i32,
    pub suspended: bool,
    /// Carries the admitted-at annotation (this controller let it run).
    pub admitted: bool,
    /// Has a `Complete` or `Failed` condition, or is being deleted.
    pub finished: bool,
    /// Has pods that are not finished.
    pub active_pods: bool,
    /// The pod template's `terminationGracePeriodSeconds` (Kubernetes'
    /// default, 30, when unset): how long its pods may take to stop.
    pub grace_seconds: i64,
    /// Units of the limit it takes (`jobgate.dev/slots`); 0 when the
    /// annotation is not a positive integer.
    pub slots: u32,
    /// Names a Kueue queue: Kueue suspends and resumes it, not jobgate.
    pub in_kueue: bool,
}

impl WorkloadView {
    /// A Job waiting for a slot as created: suspended, never admitted, one
    /// unit, Kubernetes' default grace period. For tests of the decisions.
    #[cfg(test)]
    pub fn waiting(uid: &str, created: &str) -> Self {
        WorkloadView {
            uid: uid.into(),
            name: format!("job-{uid}"),
            created: created.into(),
            priority: 0,
            suspended: true,
            admitted: false,
            finished: false,
            active_pods: false,
            grace_seconds: 30,
            slots: 1,
            in_kueue: false,
        }
    }
}

/// A kind of workload jobgate admits.
pub trait Workload: Resource<DynamicType = ()> + Clone + Send + Sync + 'static {
    /// The view the decisions take; `None` for an object without a UID.
    fn view(&self) -> Option<WorkloadView>;
    /// Done, failed, or being deleted: it will not run again.
    fn is_finished(&self) -> bool;
    /// Carries this controller's admission marks: it was let run.
    fn is_admitted(&self) -> bool;
    fn is_suspended(&self) -> bool;
    /// The part of a merge patch that sets its suspend switch.
    fn suspend_patch(suspend: bool) -> serde_json::Value;
    /// The label selector of the pods of the workloads with these UIDs,
    /// orphaned ones included.
    fn pods_selector(uids: &[&str]) -> String;
}
