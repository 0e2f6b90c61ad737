//! Labelled Jobs whose group does not exist. They would otherwise wait,
//! suspended, without a word: each gets one Warning Event, and
//! `jobgate_jobs_without_group` counts them by namespace and group name.

use std::collections::{BTreeMap, BTreeSet, HashSet};

use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};

use super::crd::{ConcurrencyGroup, GROUP_LABEL};
use super::metrics::{GroupLabels, Metrics};
use super::reconcile::Context;

/// What the sweep needs of one labelled Job.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Labelled {
    pub namespace: String,
    pub group: String,
    pub uid: String,
    pub finished: bool,
}

/// The unfinished Jobs of each (namespace, group) that does not exist.
pub fn without_group(
    jobs: &[Labelled],
    groups: &HashSet<(String, String)>,
) -> BTreeMap<(String, String), Vec<String>> {
    let mut out: BTreeMap<(String, String), Vec<String>> = BTreeMap::new();
    for j in jobs.iter().filter(|j| !j.finished) {
        let key = (j.namespace.clone(), j.group.clone());
        if !groups.contains(&key) {
            out.entry(key).or_default().push(j.uid.clone());
        }
    }
    out
}

/// Whether the last sweep counted `group` as missing.
pub fn counted_missing(metrics: &Metrics, group: &ObjectRef<ConcurrencyGroup>) -> bool {
    let labels = GroupLabels {
        namespace: group.namespace.clone().unwrap_or_default(),
        group: group.name.clone(),
    };
    metrics.jobs_without_group.get(&labels).is_some()
}

/// One sweep: lists the groups and the labelled Jobs, sets the metric, and
/// warns each newly found Job once (`told` holds the UIDs warned).
pub async fn sweep(
    ctx: &Context,
    existing: &HashSet<(String, String)>,
    told: &mut BTreeSet<String>,
) {
    if !ctx.jobs.is_ready() {
        return;
    }
    let listed = ctx.jobs.all();
    let views: Vec<Labelled> = listed
        .iter()
        .filter_map(|j| {
            Some(Labelled {
                namespace: j.namespace()?,
                group: j.labels().get(GROUP_LABEL)?.clone(),
                uid: j.uid()?,
                finished: super::jobs::is_finished(j),
            })
        })
        .collect();
    let missing = without_group(&views, existing);
    ctx.metrics.jobs_without_group.clear();
    for ((namespace, group), uids) in &missing {
        let labels = GroupLabels {
            namespace: namespace.clone(),
            group: group.clone(),
        };
        ctx.metrics
            .jobs_without_group
            .get_or_create(&labels)
            .set(uids.len() as i64);
    }
    let waiting: BTreeSet<&String> = missing.values().flatten().collect();
    told.retain(|uid| waiting.contains(uid));
    for job in &listed {
        let Some(uid) = job.uid() else { continue };
        if !waiting.contains(&uid) || !told.insert(uid) {
            continue;
        }
        let group = job.labels().get(GROUP_LABEL).cloned().unwrap_or_default();
        let ns = job.namespace().unwrap_or_default();
        let event = Event {
            type_: EventType::Warning,
            reason: "GroupNotFound".into(),
            note: Some(format!(
                "ConcurrencyGroup {group:?} does not exist in namespace {ns}: this Job waits until it is created. Create it, or fix the Job's jobgate.dev/group label (kubectl get cg -n {ns} lists the groups)"
            )),
            action: "Admit".into(),
            secondary: None,
        };
        ctx.recorder.publish(&event, &job.object_ref(&()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(ns: &str, group: &str, uid: &str, finished: bool) -> Labelled {
        Labelled {
            namespace: ns.into(),
            group: group.into(),
            uid: uid.into(),
            finished,
        }
    }

    #[test]
    fn unfinished_jobs_of_missing_groups_are_counted_by_namespace_and_group() {
        let groups: HashSet<(String, String)> = [("a".to_string(), "etl".to_string())].into();
        let jobs = [
            job("a", "etl", "1", false),
            job("a", "typo", "2", false),
            job("a", "typo", "3", false),
            job("a", "typo", "4", true),
            job("b", "etl", "5", false),
        ];
        let missing = without_group(&jobs, &groups);
        assert_eq!(
            missing,
            BTreeMap::from([
                (("a".into(), "typo".into()), vec!["2".into(), "3".into()]),
                (("b".into(), "etl".into()), vec!["5".into()]),
            ]),
            "a group is only found in its own namespace"
        );
    }
}
