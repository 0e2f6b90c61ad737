//! Which held slots still have pods that may run, for every kind: the pure
//! plan of the pod LISTs one pass needs ([`queries`]) and which workloads
//! a query's live pods vouch for ([`vouched`]); then the LISTs themselves.
//!
//! A Job's pods, and those of kinds whose pods carry the workload's UID,
//! are found by UID even once the workload is gone. Kinds whose pods carry
//! its name, or a field's value (a RayJob's cluster name, new after each
//! suspension), are found by every value this process saw for it while it
//! held a slot; a workload deleted before this process ever saw it (it
//! started since) is vouched for by any live pod of its kind whose value
//! is not that of a workload present: its slot may be kept longer than
//! needed, never freed early.

use super::*;
use crate::operator::kinds::{KindSpec, LabelValue};

/// One pod LIST and how to read its answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct PodQuery {
    /// The label that links a pod to its workload.
    pub(super) label: String,
    /// Label value → the workload UID it names.
    pub(super) keys: BTreeMap<String, String>,
    /// Workloads of unknown name: any live pod of the kind whose value is
    /// not in `present` vouches for all of them.
    pub(super) unknown: BTreeSet<String>,
    /// The label values of the workloads present.
    pub(super) present: BTreeSet<String>,
}

impl PodQuery {
    pub(super) fn for_label(label: &str) -> Self {
        PodQuery {
            label: label.to_string(),
            keys: BTreeMap::new(),
            unknown: BTreeSet::new(),
            present: BTreeSet::new(),
        }
    }

    pub(super) fn selector(&self) -> String {
        if !self.unknown.is_empty() {
            return self.label.clone();
        }
        let keys: Vec<&str> = self.keys.keys().map(String::as_str).collect();
        format!("{} in ({})", self.label, keys.join(","))
    }
}

/// The pod LISTs that tell which of `candidates` (UIDs of held slots)
/// have pods that may run: one per pod label concerned. `remembered`:
/// the (label, value) pairs seen earlier for each workload whose pods
/// carry its name or a field's value (`GroupLedger`'s `pod_keys`).
pub(super) fn queries(
    candidates: &[&String],
    objects: &BTreeMap<String, Object>,
    kinds: &[Arc<KindSpec>],
    remembered: &BTreeMap<String, BTreeSet<(String, String)>>,
) -> Vec<PodQuery> {
    // (label, label value if known, UID), grouped by label below.
    let mut wanted: Vec<(String, Option<String>, String)> = Vec::new();
    for uid in candidates {
        let uid: &String = uid;
        let seen = remembered.get(uid).into_iter().flatten();
        match objects.get(uid) {
            Some(Object::Job(_)) => {
                wanted.push((CONTROLLER_UID_LABEL.into(), Some(uid.clone()), uid.clone()))
            }
            // The Pod is its own pod: see `plain_pods_live`.
            Some(Object::Pod(_)) => {}
            Some(Object::Other(kind, obj)) => {
                for (label, key) in kind.pod_keys(obj) {
                    if let Some(key) = key {
                        wanted.push((label.to_string(), Some(key), uid.clone()));
                    }
                }
                // A cluster it made before, whose pods may still stop.
                for (label, key) in seen {
                    wanted.push((label.clone(), Some(key.clone()), uid.clone()));
                }
            }
            None if remembered.contains_key(uid) => {
                for (label, key) in seen {
                    wanted.push((label.clone(), Some(key.clone()), uid.clone()));
                }
                // Its pods that carry its UID, whatever its kind.
                for kind in kinds {
                    for link in kind.pods.iter().filter(|l| l.value == LabelValue::Uid) {
                        wanted.push((link.label.clone(), Some(uid.clone()), uid.clone()));
                    }
                }
            }
            // Gone, and never seen by this process: a Job's pods by its UID,
            // and every kind's pods may be its own.
            None => {
                wanted.push((CONTROLLER_UID_LABEL.into(), Some(uid.clone()), uid.clone()));
                for kind in kinds {
                    for link in &kind.pods {
                        let key = (link.value == LabelValue::Uid).then(|| uid.clone());
                        wanted.push((link.label.clone(), key, uid.clone()));
                    }
                }
            }
        }
    }
    let mut out: Vec<PodQuery> = Vec::new();
    for (label, key, uid) in wanted {
        let i = match out.iter().position(|q| q.label == label) {
            Some(i) => i,
            None => {
                out.push(PodQuery::for_label(&label));
                out.len() - 1
            }
        };
        match key {
            Some(key) => {
                out[i].keys.insert(key, uid);
            }
            None => {
                out[i].unknown.insert(uid);
            }
        }
    }
    for q in out.iter_mut().filter(|q| !q.unknown.is_empty()) {
        for object in objects.values() {
            if let Object::Other(kind, obj) = object {
                for (label, key) in kind.pod_keys(obj) {
                    if label == q.label
                        && let Some(key) = key
                    {
                        q.present.insert(key);
                    }
                }
            }
        }
    }
    out
}

/// Of `candidates`, the plain Pods (gated by jobgate) that may still run.
/// One that is gone from the group's objects has been deleted and is gone
/// from the API server too: the watch removes a Pod only then.
pub(super) fn plain_pods_live(
    candidates: &[&String],
    objects: &BTreeMap<String, Object>,
) -> BTreeSet<String> {
    candidates
        .iter()
        .filter(|uid| {
            matches!(objects.get(**uid), Some(Object::Pod(pod)) if crate::operator::gated_pods::is_live(pod))
        })
        .map(|uid| (*uid).clone())
        .collect()
}

/// The UIDs the live pods of `query` vouch for, given each live pod's
/// value of the query's label.
pub(super) fn vouched<'a>(
    query: &PodQuery,
    live: impl IntoIterator<Item = &'a str>,
) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for value in live {
        if let Some(uid) = query.keys.get(value) {
            out.insert(uid.clone());
        } else if !query.present.contains(value) {
            out.extend(query.unknown.iter().cloned());
        }
    }
    out
}

/// Runs the queries: which UIDs have pods that may still run (not yet
/// Succeeded or Failed: pending, running or terminating).
pub(super) async fn run(ctx: &Context, ns: &str, queries: &[PodQuery]) -> Result<BTreeSet<String>> {
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let mut live = BTreeSet::new();
    for query in queries {
        let pods = timed(
            ctx,
            "list_pods",
            api.list(&ListParams::default().labels(&query.selector())),
        )
        .await
        .map_err(Error::GatherPods)?;
        let values = pods.items.iter().filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        });
        live.extend(vouched(
            query,
            values.filter_map(|p| p.labels().get(&query.label).map(String::as_str)),
        ));
    }
    Ok(live)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::operator::kinds::builtin;

    fn other(kind: &Arc<KindSpec>, name: &str, uid: &str) -> Object {
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": name, "uid": uid, "namespace": "team"},
        }))
        .unwrap();
        Object::Other(kind.clone(), Arc::new(obj))
    }

    fn job(uid: &str) -> Object {
        Object::Job(Arc::new(
            serde_json::from_value(json!({"metadata": {"name": uid, "uid": uid}})).unwrap(),
        ))
    }

    #[test]
    fn each_kind_present_gets_one_query_by_its_own_label() {
        let jobset = Arc::new(builtin("jobset").unwrap());
        let workflow = Arc::new(builtin("workflow").unwrap());
        let kinds = [jobset.clone(), workflow.clone()];
        let objects: BTreeMap<String, Object> = [
            ("j1".to_string(), job("j1")),
            ("s1".to_string(), other(&jobset, "train", "s1")),
            ("w1".to_string(), other(&workflow, "pipe", "w1")),
        ]
        .into();
        let uids = ["j1", "s1", "w1"].map(String::from);
        let candidates: Vec<&String> = uids.iter().collect();
        let qs = queries(&candidates, &objects, &kinds, &BTreeMap::new());
        let selectors: Vec<String> = qs.iter().map(PodQuery::selector).collect();
        assert_eq!(
            selectors,
            [
                "batch.kubernetes.io/controller-uid in (j1)",
                "jobset.sigs.k8s.io/jobset-uid in (s1)",
                "workflows.argoproj.io/workflow in (pipe)",
            ]
        );
        // A pod of the workflow vouches for it by its name.
        assert_eq!(
            vouched(&qs[2], ["pipe"]),
            BTreeSet::from(["w1".to_string()])
        );
        assert!(vouched(&qs[2], ["other"]).is_empty());
    }

    #[test]
    fn a_gone_workload_is_found_by_the_name_remembered_else_by_any_pod_not_of_one_present() {
        let workflow = Arc::new(builtin("workflow").unwrap());
        let kinds = [workflow.clone()];
        let objects: BTreeMap<String, Object> =
            [("w2".to_string(), other(&workflow, "running", "w2"))].into();
        let remembered: BTreeMap<String, BTreeSet<(String, String)>> = [(
            "w1".to_string(),
            BTreeSet::from([(workflow.pods[0].label.clone(), "pipe".to_string())]),
        )]
        .into();
        let uids = ["w1".to_string()];
        let qs = queries(&[&uids[0]], &objects, &kinds, &remembered);
        assert_eq!(qs.len(), 1);
        assert_eq!(qs[0].selector(), "workflows.argoproj.io/workflow in (pipe)");
        // Forgotten (this process started after it was deleted): a Job's
        // pods by its UID, and any workflow pod not of a workflow present.
        let gone = ["w9".to_string()];
        let qs = queries(&[&gone[0]], &objects, &kinds, &BTreeMap::new());
        let selectors: Vec<String> = qs.iter().map(PodQuery::selector).collect();
        assert_eq!(
            selectors,
            [
                "batch.kubernetes.io/controller-uid in (w9)",
                "workflows.argoproj.io/workflow"
            ]
        );
        assert!(vouched(&qs[1], ["running"]).is_empty());
        assert_eq!(
            vouched(&qs[1], ["running", "pipe"]),
            BTreeSet::from(["w9".to_string()])
        );
    }

    #[test]
    fn a_rayjob_is_held_while_any_cluster_it_made_has_pods() {
        let ray = Arc::new(builtin("rayjob").unwrap());
        let obj: DynamicObject = serde_json::from_value(json!({
            "metadata": {"name": "train", "uid": "r1"},
            "status": {"rayClusterName": "train-new"},
        }))
        .unwrap();
        let objects: BTreeMap<String, Object> =
            [("r1".to_string(), Object::Other(ray.clone(), Arc::new(obj)))].into();
        // It was suspended and resumed: its first cluster may still stop.
        let remembered: BTreeMap<String, BTreeSet<(String, String)>> = [(
            "r1".to_string(),
            BTreeSet::from([("ray.io/cluster".to_string(), "train-old".to_string())]),
        )]
        .into();
        let uid = "r1".to_string();
        let qs = queries(&[&uid], &objects, &[ray], &remembered);
        let selectors: Vec<String> = qs.iter().map(PodQuery::selector).collect();
        assert_eq!(
            selectors,
            [
                "ray.io/cluster in (train-new,train-old)",
                "batch.kubernetes.io/job-name in (train)",
            ]
        );
        assert_eq!(
            vouched(&qs[0], ["train-old"]),
            BTreeSet::from([uid.clone()])
        );
    }
}
