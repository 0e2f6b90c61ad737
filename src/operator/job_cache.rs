//! The labelled Jobs as the controller's one watch sees them, in memory and
//! pruned to what admission decides on. A pass reads its group's Jobs here
//! instead of listing them: a LIST per pass costs the API server and the
//! controller in proportion to the Jobs waiting, and passes come as often
//! as Jobs change.
//!
//! The cache lags the API server by a watch event, and may lag behind this
//! process's own patches. Decisions that could free a slot whose pods may
//! still run are made again from a LIST (see `reconcile::admit`); grants
//! are compare-and-swaps on the ledger, and Job patches carry the
//! resourceVersion they were decided on, so a stale copy makes a patch
//! fail rather than act twice. Until the first LIST is in, passes list.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

use futures::FutureExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, PodSpec, PodTemplateSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::core::DynamicObject;
use kube::runtime::reflector::Store;
use kube::runtime::watcher;

use super::crd::GROUP_LABEL;
use super::gated_pods;
use super::kinds::KindSpec;
use super::workload::Object;

/// Annotations that can be large and that no decision reads.
const DROPPED_ANNOTATIONS: &[&str] = &["kubectl.kubernetes.io/last-applied-configuration"];

#[derive(Clone)]
pub struct JobCache {
    store: Store<Job>,
    /// The labelled objects of each other kind gated, from a watch each.
    others: Vec<(Arc<KindSpec>, Store<DynamicObject>)>,
    /// The labelled plain Pods, when Pods are gated.
    pods: Option<Store<Pod>>,
}

impl JobCache {
    pub fn new(store: Store<Job>) -> Self {
        JobCache {
            store,
            others: Vec::new(),
            pods: None,
        }
    }

    /// With the watch cache of plain Pods.
    pub fn with_pods(mut self, pods: Store<Pod>) -> Self {
        self.pods = Some(pods);
        self
    }

    /// With the watch caches of other kinds.
    pub fn with_kinds(mut self, others: Vec<(Arc<KindSpec>, Store<DynamicObject>)>) -> Self {
        self.others = others;
        self
    }

    /// Whether the first LIST of Jobs (and of plain Pods, when gated) is
    /// in (never waits: callers list instead).
    pub fn is_ready(&self) -> bool {
        matches!(self.store.wait_until_ready().now_or_never(), Some(Ok(())))
            && self
                .pods
                .as_ref()
                .is_none_or(|pods| matches!(pods.wait_until_ready().now_or_never(), Some(Ok(()))))
    }

    /// The Jobs of group `group` in namespace `ns`.
    pub fn of_group(&self, ns: &str, group: &str) -> Vec<Arc<Job>> {
        self.store
            .state_filter(|job| in_group(&job.metadata, ns, group))
    }

    /// The workloads of every kind of group `group` in namespace `ns`, as
    /// far as the watches have them, and the kinds whose first LIST is not
    /// in (a kind whose CRD is missing never has one).
    pub fn workloads_of_group(&self, ns: &str, group: &str) -> (Vec<Object>, Vec<Arc<KindSpec>>) {
        let mut all: Vec<Object> = self
            .of_group(ns, group)
            .into_iter()
            .map(Object::Job)
            .collect();
        if let Some(pods) = &self.pods {
            all.extend(
                pods.state_filter(|p| {
                    in_group(&p.metadata, ns, group) && !gated_pods::has_controller(p)
                })
                .into_iter()
                .map(Object::Pod),
            );
        }
        let mut not_ready = Vec::new();
        for (kind, store) in &self.others {
            if !matches!(store.wait_until_ready().now_or_never(), Some(Ok(()))) {
                not_ready.push(kind.clone());
                continue;
            }
            all.extend(
                store
                    .state_filter(|o| in_group(&o.metadata, ns, group))
                    .into_iter()
                    .map(|o| Object::Other(kind.clone(), o)),
            );
        }
        (all, not_ready)
    }

    /// Every labelled Job.
    pub fn all(&self) -> Vec<Arc<Job>> {
        self.store.state()
    }
}

fn in_group(meta: &ObjectMeta, ns: &str, group: &str) -> bool {
    meta.namespace.as_deref() == Some(ns)
        && meta
            .labels
            .as_ref()
            .and_then(|l| l.get(GROUP_LABEL))
            .map(String::as_str)
            == Some(group)
}

/// Drops what no decision reads from an object of another kind before it
/// is kept. Its spec stays whole: where its switch, units and grace period
/// are is configuration.
pub fn prune_other(obj: &mut DynamicObject) {
    obj.metadata.managed_fields = None;
    if let Some(annotations) = obj.metadata.annotations.as_mut() {
        for key in DROPPED_ANNOTATIONS {
            annotations.remove(*key);
        }
    }
}

/// The label selector of the plain Pods a group may hold: labelled, and
/// not a Job's (every pod of an admitted Job carries the group label too).
/// Pods other controllers own are left out as they are read.
pub fn plain_pods_selector() -> String {
    format!("{GROUP_LABEL},!{}", super::jobs::CONTROLLER_UID_LABEL)
}

/// Which groups a watch event should reconcile, each as a Job that carries
/// only its namespace and group label (what the controller maps a Job event
/// to a group by), named after the group: a copy of every Job would cost memory in proportion to
/// the Jobs, for a handful of groups. A (re)list reaches the store only at
/// its end (`InitDone`): a pass triggered by one of its pages would read the
/// store from before it. So its pages trigger nothing and its end triggers
/// the group of every Job it replaced (one deleted while the watch was down
/// sends no event of its own) and of every Job it brought, once each.
#[derive(Default)]
pub struct Relist {
    /// The groups of the Jobs in the store when the (re)list began.
    before: BTreeSet<(String, String)>,
}

impl Relist {
    pub fn triggers(&mut self, event: &watcher::Event<Job>, store: &Store<Job>) -> Vec<Job> {
        let groups: BTreeSet<(String, String)> = match event {
            watcher::Event::Apply(job) | watcher::Event::Delete(job) => {
                group_of(job).into_iter().collect()
            }
            watcher::Event::Init => {
                self.before = store.state().iter().filter_map(|j| group_of(j)).collect();
                BTreeSet::new()
            }
            watcher::Event::InitApply(_) => BTreeSet::new(),
            watcher::Event::InitDone => {
                let mut groups = std::mem::take(&mut self.before);
                groups.extend(store.state().iter().filter_map(|j| group_of(j)));
                groups
            }
        };
        groups
            .into_iter()
            .map(|(namespace, group)| Job {
                metadata: ObjectMeta {
                    // kube-runtime names the trigger's source by it (and
                    // panics without one): the group's, as no one Job is.
                    name: Some(group.clone()),
                    namespace: Some(namespace),
                    labels: Some(BTreeMap::from([(GROUP_LABEL.to_string(), group)])),
                    ..Default::default()
                },
                ..Default::default()
            })
            .collect()
    }
}

/// A Job's namespace and group.
fn group_of(job: &Job) -> Option<(String, String)> {
    Some((job.namespace()?, job.labels().get(GROUP_LABEL)?.clone()))
}

/// Drops what no decision reads before a Job is kept: managed fields, the
/// pod template (all but the grace period, which says how long its pods
/// take to stop) and large annotations. Most of a Job's size is there.
pub fn prune(job: &mut Job) {
    job.metadata.managed_fields = None;
    if let Some(annotations) = job.metadata.annotations.as_mut() {
        for key in DROPPED_ANNOTATIONS {
            annotations.remove(*key);
        }
    }
    if let Some(spec) = job.spec.as_mut() {
        let grace = spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds);
        spec.template = PodTemplateSpec {
            metadata: None,
            spec: Some(PodSpec {
                termination_grace_period_seconds: grace,
                ..Default::default()
            }),
        };
        spec.selector = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::jobs::job_view;
    use serde_json::json;

    fn job() -> Job {
        serde_json::from_value(json!({
            "metadata": {
                "name": "etl", "namespace": "team", "uid": "u1",
                "creationTimestamp": "2026-11-27T10:00:00Z",
                "labels": {"jobgate.dev/group": "g"},
                "annotations": {
                    "jobgate.dev/slots": "3",
                    "jobgate.dev/priority": "7",
                    "kubectl.kubernetes.io/last-applied-configuration": "x".repeat(10_000),
                },
                "managedFields": [{"manager": "kubectl", "operation": "Apply"}],
            },
            "spec": {
                "suspend": true,
                "activeDeadlineSeconds": 60,
                "selector": {"matchLabels": {"batch.kubernetes.io/controller-uid": "u1"}},
                "template": {
                    "metadata": {"labels": {"app": "etl"}},
                    "spec": {
                        "restartPolicy": "Never",
                        "terminationGracePeriodSeconds": 45,
                        "containers": [{"name": "w", "image": "busybox", "command": ["sh", "-c", "x".repeat(10_000)]}],
                    },
                },
            },
            "status": {"active": 1, "conditions": [{"type": "Complete", "status": "True"}]},
        }))
        .unwrap()
    }

    fn in_group(name: &str, group: &str) -> Job {
        serde_json::from_value(json!({"metadata": {
            "name": name, "namespace": "team", "uid": name,
            "labels": {"jobgate.dev/group": group},
        }}))
        .unwrap()
    }

    /// The groups triggered, as `namespace/group`.
    fn groups(jobs: Vec<Job>) -> Vec<String> {
        jobs.iter()
            .map(|j| {
                // kube-runtime's controller panics on a trigger without one.
                assert!(j.metadata.name.is_some(), "a trigger without a name");
                let (ns, group) = group_of(j).unwrap();
                format!("{ns}/{group}")
            })
            .collect()
    }

    #[test]
    fn a_relist_triggers_at_its_end_each_group_it_replaced_or_brought_once() {
        let (store, mut writer) = kube::runtime::reflector::store::<Job>();
        let mut relist = Relist::default();
        let mut feed = |event: watcher::Event<Job>| {
            // As `reflect` does: the store first, then the event goes on.
            writer.apply_watcher_event(&event);
            groups(relist.triggers(&event, &store))
        };
        assert!(feed(watcher::Event::Init).is_empty());
        assert!(feed(watcher::Event::InitApply(in_group("a", "g1"))).is_empty());
        assert!(feed(watcher::Event::InitApply(in_group("a2", "g1"))).is_empty());
        assert_eq!(feed(watcher::Event::InitDone), ["team/g1"]);
        assert_eq!(
            feed(watcher::Event::Apply(in_group("b", "g2"))),
            ["team/g2"]
        );
        // The watch restarts; g1's Jobs were deleted meanwhile and c created.
        assert!(feed(watcher::Event::Init).is_empty());
        assert!(feed(watcher::Event::InitApply(in_group("b", "g2"))).is_empty());
        assert!(feed(watcher::Event::InitApply(in_group("c", "g2"))).is_empty());
        assert_eq!(feed(watcher::Event::InitDone), ["team/g1", "team/g2"]);
        let mut left: Vec<String> = store.state().iter().map(|j| j.name_any()).collect();
        left.sort();
        assert_eq!(left, ["b", "c"]);
    }

    #[test]
    fn pruning_keeps_everything_a_decision_reads() {
        let full = job();
        let mut pruned = full.clone();
        prune(&mut pruned);
        assert_eq!(job_view(&pruned), job_view(&full));
        assert_eq!(
            pruned.spec.as_ref().and_then(|s| s.active_deadline_seconds),
            Some(60)
        );
        assert_eq!(pruned.metadata.labels, full.metadata.labels);
        let size = |j: &Job| serde_json::to_vec(j).unwrap().len();
        assert!(
            size(&pruned) < 1_000,
            "pruned to {} bytes from {}",
            size(&pruned),
            size(&full)
        );
    }
}
