//! The seam between the plan and the kinds of work it admits. The plan
//! speaks of workloads: something with a UID, a suspend switch, units of
//! the limit it takes, a grace period its pods may take to stop, a
//! finished state, and pods found by a label selector. `batch/v1` Job
//! (`jobs.rs`) is typed; every other kind is described by data
//! (`kinds.rs`), and a pass holds either as an [`Object`].

use std::collections::BTreeMap;
use std::sync::Arc;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{ObjectReference, Pod};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use kube::api::Patch;
use kube::core::{ApiResource, DynamicObject};

use super::crd::{ADMITTED_AT_ANNOTATION, PRIORITY_ANNOTATION, SLOTS_ANNOTATION};
use super::gated_pods;
use super::kinds::KindSpec;

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

/// `jobgate.dev/priority`; 0 when absent or not a number. The same for
/// every kind.
pub fn priority_of(annotations: &BTreeMap<String, String>) -> i32 {
    annotations
        .get(PRIORITY_ANNOTATION)
        .and_then(|p| p.trim().parse().ok())
        .unwrap_or(0)
}

/// `jobgate.dev/slots`: 1 when absent, 0 when not a positive integer (the
/// plan refuses it).
pub fn slots_of(annotations: &BTreeMap<String, String>) -> u32 {
    annotations
        .get(SLOTS_ANNOTATION)
        .map_or(Some(1), |n| n.trim().parse().ok())
        .unwrap_or(0)
}

/// Its creation time as a sortable RFC 3339 string.
pub fn created_of(meta: &ObjectMeta) -> String {
    meta.creation_timestamp
        .as_ref()
        .map(|t| t.0.to_string())
        .unwrap_or_default()
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

/// One workload of a group, of whichever kind: a `batch/v1` Job, typed
/// (its deadlines and pod template are the Job path's own), or an object
/// of a kind described by a [`KindSpec`].
#[derive(Debug, Clone)]
pub enum Object {
    Job(Arc<Job>),
    Other(Arc<KindSpec>, Arc<DynamicObject>),
    /// A plain Pod held by a scheduling gate (`gated_pods`).
    Pod(Arc<Pod>),
}

impl Object {
    pub fn meta(&self) -> &ObjectMeta {
        match self {
            Object::Job(job) => &job.metadata,
            Object::Other(_, obj) => &obj.metadata,
            Object::Pod(pod) => &pod.metadata,
        }
    }

    pub fn uid(&self) -> Option<String> {
        self.meta().uid.clone()
    }

    pub fn name_any(&self) -> String {
        self.meta().name.clone().unwrap_or_default()
    }

    pub fn annotations(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.meta().annotations.as_ref().unwrap_or(&EMPTY)
    }

    pub fn labels(&self) -> &BTreeMap<String, String> {
        static EMPTY: BTreeMap<String, String> = BTreeMap::new();
        self.meta().labels.as_ref().unwrap_or(&EMPTY)
    }

    pub fn view(&self) -> Option<WorkloadView> {
        match self {
            Object::Job(job) => Workload::view(job.as_ref()),
            Object::Other(kind, obj) => kind.view(obj),
            Object::Pod(pod) => gated_pods::view(pod),
        }
    }

    pub fn is_finished(&self) -> bool {
        match self {
            Object::Job(job) => Workload::is_finished(job.as_ref()),
            Object::Other(kind, obj) => kind.is_finished(obj),
            Object::Pod(pod) => gated_pods::is_finished(pod),
        }
    }

    pub fn is_admitted(&self) -> bool {
        self.annotations().contains_key(ADMITTED_AT_ANNOTATION)
    }

    pub fn is_suspended(&self) -> bool {
        match self {
            Object::Job(job) => Workload::is_suspended(job.as_ref()),
            Object::Other(kind, obj) => kind.is_suspended(obj),
            Object::Pod(pod) => gated_pods::is_gated(pod),
        }
    }

    /// The patch that sets its suspend switch (see [`Object::patch`]). A
    /// Pod's gate can only be removed: held again, it is deleted instead
    /// (`reconcile::patch::suspend`), so `suspend` asks nothing of it.
    pub fn suspend_patch(&self, suspend: bool) -> serde_json::Value {
        match self {
            Object::Job(_) => Job::suspend_patch(suspend),
            Object::Other(kind, _) => kind.suspend_patch(suspend),
            Object::Pod(_) if suspend => serde_json::json!({}),
            Object::Pod(_) => gated_pods::ungate_patch(),
        }
    }

    /// `value` as the patch request for its kind: a strategic merge patch
    /// for a Pod (which removes one gate from its list), a merge patch for
    /// the rest.
    pub fn patch(&self, value: serde_json::Value) -> Patch<serde_json::Value> {
        match self {
            Object::Pod(_) => Patch::Strategic(value),
            _ => Patch::Merge(value),
        }
    }

    /// The Job, for what only Jobs have (deadlines, a pod template the
    /// controller labels).
    pub fn as_job(&self) -> Option<&Job> {
        match self {
            Object::Job(job) => Some(job),
            Object::Other(..) | Object::Pod(_) => None,
        }
    }

    /// Its kind as people name it: `Job`, `JobSet`.
    pub fn kind_name(&self) -> &str {
        match self {
            Object::Job(_) => "Job",
            Object::Other(kind, _) => &kind.kind,
            Object::Pod(_) => "Pod",
        }
    }

    /// Its API resource, for requests made through `DynamicObject`.
    pub fn api_resource(&self) -> ApiResource {
        match self {
            Object::Job(_) => ApiResource::erase::<Job>(&()),
            Object::Other(kind, _) => kind.api_resource(),
            Object::Pod(_) => ApiResource::erase::<Pod>(&()),
        }
    }

    /// The reference an Event about it names.
    pub fn object_ref(&self) -> ObjectReference {
        let ar = self.api_resource();
        let meta = self.meta();
        ObjectReference {
            api_version: Some(ar.api_version),
            kind: Some(ar.kind),
            name: meta.name.clone(),
            namespace: meta.namespace.clone(),
            uid: meta.uid.clone(),
            resource_version: meta.resource_version.clone(),
            ..Default::default()
        }
    }

    /// The same object as read again (by a GET through `DynamicObject`).
    pub fn with(&self, fresh: DynamicObject) -> Option<Object> {
        Some(match self {
            Object::Job(_) => Object::Job(Arc::new(fresh.try_parse().ok()?)),
            Object::Other(kind, _) => Object::Other(kind.clone(), Arc::new(fresh)),
            Object::Pod(_) => Object::Pod(Arc::new(fresh.try_parse().ok()?)),
        })
    }
}
