//! Kinds of work other than `batch/v1` Job, described by data rather than
//! code: where the switch that holds one back is, how it is finished, how
//! its pods are found and how many units of the limit it takes. The
//! built-in kinds (JobSet, Argo Workflow, RayJob) are such descriptions;
//! an administrator describes any other kind the same way
//! (`--workload-kinds`). Everything here is pure: the controller and the
//! webhook carry it out.

use std::collections::BTreeMap;

use kube::ResourceExt;
use kube::core::{ApiResource, DynamicObject, GroupVersionKind};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::crd::{ADMITTED_AT_ANNOTATION, KUEUE_QUEUE_LABEL};
use super::workload::{WorkloadView, created_of, priority_of, slots_of};

/// Kubernetes' `terminationGracePeriodSeconds` when a pod spec sets none.
const DEFAULT_GRACE_SECONDS: i64 = 30;

/// One kind of workload, as the configuration describes it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct KindSpec {
    /// API group, empty for the core group.
    pub group: String,
    pub version: String,
    pub kind: String,
    /// The resource's plural name, as in its URL.
    pub plural: String,
    pub suspend: Suspend,
    pub finished: Finished,
    /// How its pods are found: one link, or several when its pods differ
    /// (a RayJob's cluster pods and its submitter's).
    #[serde(with = "one_or_many")]
    pub pods: Vec<PodLink>,
    /// Units of the limit each one takes; without this, its
    /// `jobgate.dev/slots` annotation, or 1, as for Jobs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub units: Option<Units>,
    /// Dotted paths (separated by commas) of its pods'
    /// `terminationGracePeriodSeconds`, for the group's
    /// `maxGracePeriodSeconds` check: the longest counts, and a `*` takes
    /// every item of a list. Without it, Kubernetes' default of 30 s.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub grace_period_path: Option<String>,
}

/// The switch that keeps it from running.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Suspend {
    /// Dotted path, such as `spec.suspend` or `spec.runPolicy.suspend`.
    pub path: String,
    /// Without it the field is a boolean, true while held. With it, the
    /// field holds this value while held (Tekton's `spec.status:
    /// PipelineRunPending`) and is removed to let it run.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub held_value: Option<Value>,
}

/// When it will not run again. One of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Finished {
    /// Finished once a `status.conditions` entry of one of these types is
    /// `True`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub conditions: Vec<String>,
    /// Finished once the field at this dotted path holds one of `values`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<String>,
}

/// How (some of) its pods are found: a label they carry, whose value is
/// the workload's UID or name, or the value of one of its fields (`path`,
/// such as the name of a cluster it made).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct PodLink {
    pub label: String,
    #[serde(default)]
    pub value: LabelValue,
    /// With `value: path`: the dotted path of the field whose value the
    /// label holds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// `pods:` as one link or a list of them.
mod one_or_many {
    use super::PodLink;
    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum OneOrMany {
        One(PodLink),
        Many(Vec<PodLink>),
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<PodLink>, D::Error> {
        Ok(match OneOrMany::deserialize(d)? {
            OneOrMany::One(link) => vec![link],
            OneOrMany::Many(links) => links,
        })
    }

    pub fn serialize<S: Serializer>(links: &[PodLink], s: S) -> Result<S::Ok, S::Error> {
        links.serialize(s)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub enum LabelValue {
    #[default]
    Uid,
    Name,
    /// The value at the link's `path`.
    Path,
}

/// Units of the limit: a constant, or read from a field. One of the two.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct Units {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub constant: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub path: Option<String>,
}

/// A description that cannot work, in one sentence.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("workload kind {kind}: {problem}")]
pub struct InvalidKind {
    pub kind: String,
    pub problem: String,
}

impl KindSpec {
    /// `Kind.group`, as kubectl names a kind: `JobSet.jobset.x-k8s.io`.
    pub fn id(&self) -> String {
        match self.group.as_str() {
            "" => self.kind.clone(),
            group => format!("{}.{group}", self.kind),
        }
    }

    pub fn api_resource(&self) -> ApiResource {
        let gvk = GroupVersionKind::gvk(&self.group, &self.version, &self.kind);
        ApiResource::from_gvk_with_plural(&gvk, &self.plural)
    }

    /// Checks what deserializing cannot: one sentence naming the field.
    pub fn validate(&self) -> Result<(), InvalidKind> {
        let problem = |p: &str| InvalidKind {
            kind: self.id(),
            problem: p.to_string(),
        };
        if self.kind.is_empty() || self.version.is_empty() || self.plural.is_empty() {
            return Err(problem("kind, version and plural must all be given"));
        }
        if self.group == "batch" && self.kind == "Job" {
            return Err(problem(
                "batch/v1 Jobs are always gated; leave them out of --workload-kinds",
            ));
        }
        if self.group.is_empty() && self.kind == "Pod" {
            return Err(problem(
                "Pods have no suspend switch; they are not a kind to describe here",
            ));
        }
        if bad_path(&self.suspend.path) {
            return Err(problem(
                "suspend.path must be a dotted path such as spec.suspend",
            ));
        }
        let f = &self.finished;
        match (f.conditions.is_empty(), &f.path) {
            (false, None) if f.values.is_empty() => {}
            (true, Some(path)) if !bad_path(path) && !f.values.is_empty() => {}
            _ => {
                return Err(problem(
                    "finished needs either conditions (a list of condition types) or a path with values",
                ));
            }
        }
        if self.pods.is_empty() || self.pods.iter().any(|l| l.label.trim().is_empty()) {
            return Err(problem("pods.label must name the label its pods carry"));
        }
        for link in &self.pods {
            match (link.value, &link.path) {
                (LabelValue::Path, Some(path)) if !bad_path(path) => {}
                (LabelValue::Path, _) => {
                    return Err(problem(
                        "pods with value: path needs the path of the field the label holds",
                    ));
                }
                (_, Some(_)) => return Err(problem("pods.path is read only with value: path")),
                _ => {}
            }
        }
        if let Some(u) = &self.units {
            match (u.constant, &u.path) {
                (Some(n), None) if n > 0 => {}
                (None, Some(path)) if !bad_path(path) => {}
                _ => return Err(problem("units needs either a positive constant or a path")),
            }
        }
        if self
            .grace_period_path
            .as_deref()
            .is_some_and(|paths| paths.split(',').any(|p| bad_path(p.trim())))
        {
            return Err(problem(
                "gracePeriodPath must be a dotted path (a * takes every item of a list)",
            ));
        }
        Ok(())
    }

    pub fn is_suspended(&self, obj: &DynamicObject) -> bool {
        let at = get(&obj.data, &self.suspend.path);
        match &self.suspend.held_value {
            None => at == Some(&Value::Bool(true)),
            Some(held) => at == Some(held),
        }
    }

    /// Done, failed, or being deleted: it will not run again.
    pub fn is_finished(&self, obj: &DynamicObject) -> bool {
        if obj.metadata.deletion_timestamp.is_some() {
            return true;
        }
        let f = &self.finished;
        if let Some(path) = &f.path {
            return get(&obj.data, path)
                .and_then(Value::as_str)
                .is_some_and(|v| f.values.iter().any(|want| want == v));
        }
        obj.data["status"]["conditions"]
            .as_array()
            .is_some_and(|cs| {
                cs.iter().any(|c| {
                    c["status"] == "True"
                        && c["type"]
                            .as_str()
                            .is_some_and(|t| f.conditions.iter().any(|want| want == t))
                })
            })
    }

    /// The view the admission decisions take; `None` without a UID. Its
    /// pods are counted by listing them (`active_pods` stays false: no
    /// status of these kinds counts them the same way), which every pass
    /// that could free its slot does.
    pub fn view(&self, obj: &DynamicObject) -> Option<WorkloadView> {
        let annotations = obj.annotations();
        Some(WorkloadView {
            uid: obj.uid()?,
            name: obj.name_any(),
            created: created_of(&obj.metadata),
            priority: priority_of(annotations),
            suspended: self.is_suspended(obj),
            admitted: annotations.contains_key(ADMITTED_AT_ANNOTATION),
            finished: self.is_finished(obj),
            active_pods: false,
            // The longest of its pods' (a `*` in the path takes every
            // item of a list), each defaulting as Kubernetes does.
            grace_seconds: match self.grace_period_path.as_deref() {
                Some(paths) => paths
                    .split(',')
                    .flat_map(|p| get_all(&obj.data, p.trim()))
                    .map(|v| v.as_i64().unwrap_or(DEFAULT_GRACE_SECONDS))
                    .max()
                    .unwrap_or(DEFAULT_GRACE_SECONDS),
                None => DEFAULT_GRACE_SECONDS,
            },
            slots: self.units_of(obj, annotations),
            in_kueue: obj.labels().contains_key(KUEUE_QUEUE_LABEL),
        })
    }

    /// 0 when what names the units is not a positive integer (the plan
    /// refuses it with an Event, as for Jobs).
    fn units_of(&self, obj: &DynamicObject, annotations: &BTreeMap<String, String>) -> u32 {
        match &self.units {
            Some(Units {
                constant: Some(n), ..
            }) => *n,
            Some(Units {
                path: Some(path), ..
            }) => get(&obj.data, path)
                .and_then(Value::as_u64)
                .and_then(|n| u32::try_from(n).ok())
                .unwrap_or(0),
            _ => slots_of(annotations),
        }
    }

    /// The merge patch that holds it (`true`) or lets it run.
    pub fn suspend_patch(&self, suspend: bool) -> Value {
        let value = match (&self.suspend.held_value, suspend) {
            (None, s) => Value::Bool(s),
            (Some(held), true) => held.clone(),
            // A merge patch's null removes the field.
            (Some(_), false) => Value::Null,
        };
        nest(&self.suspend.path, value)
    }

    /// The JSON pointer of the switch, for the webhook's JSON patch.
    pub fn suspend_pointer(&self) -> String {
        pointer(&self.suspend.path)
    }

    /// The value the webhook sets to hold it.
    pub fn held(&self) -> Value {
        self.suspend.held_value.clone().unwrap_or(Value::Bool(true))
    }

    /// For each of its pod links, the label and what it holds for `obj`
    /// (`None` where the field it names is not set).
    pub fn pod_keys(&self, obj: &DynamicObject) -> Vec<(&str, Option<String>)> {
        self.pods
            .iter()
            .map(|link| {
                let key = match link.value {
                    LabelValue::Uid => obj.uid(),
                    LabelValue::Name => obj.metadata.name.clone(),
                    LabelValue::Path => link
                        .path
                        .as_deref()
                        .and_then(|p| get(&obj.data, p))
                        .and_then(Value::as_str)
                        .filter(|v| !v.is_empty())
                        .map(String::from),
                };
                (link.label.as_str(), key)
            })
            .collect()
    }
}

fn link(label: &str, value: LabelValue, path: Option<&str>) -> PodLink {
    PodLink {
        label: label.into(),
        value,
        path: path.map(String::from),
    }
}

/// The descriptions jobgate ships, by the name `--workload-kinds` takes.
pub fn builtin(name: &str) -> Option<KindSpec> {
    let spec = |group: &str, version: &str, kind: &str, plural: &str| KindSpec {
        group: group.into(),
        version: version.into(),
        kind: kind.into(),
        plural: plural.into(),
        suspend: Suspend {
            path: "spec.suspend".into(),
            held_value: None,
        },
        finished: Finished::default(),
        pods: Vec::new(),
        units: None,
        grace_period_path: None,
    };
    match name.to_ascii_lowercase().as_str() {
        // The JobSet controller labels its Jobs and their pods with the
        // JobSet's UID (`jobset.sigs.k8s.io/jobset-uid`), and suspends a
        // suspended JobSet's Jobs, whose pods then go.
        "jobset" => Some(KindSpec {
            grace_period_path: Some(
                "spec.replicatedJobs.*.template.spec.template.spec.terminationGracePeriodSeconds"
                    .into(),
            ),
            finished: Finished {
                conditions: vec!["Completed".into(), "Failed".into()],
                ..Finished::default()
            },
            pods: vec![link("jobset.sigs.k8s.io/jobset-uid", LabelValue::Uid, None)],
            ..spec("jobset.x-k8s.io", "v1alpha2", "JobSet", "jobsets")
        }),
        // Argo labels each pod of a workflow with the workflow's name.
        "workflow" => Some(KindSpec {
            finished: Finished {
                path: Some("status.phase".into()),
                values: vec!["Succeeded".into(), "Failed".into(), "Error".into()],
                ..Finished::default()
            },
            pods: vec![link(
                "workflows.argoproj.io/workflow",
                LabelValue::Name,
                None,
            )],
            ..spec("argoproj.io", "v1alpha1", "Workflow", "workflows")
        }),
        // No label on a RayJob's pods names it: the pods of the Ray
        // cluster it makes carry the cluster's name (`ray.io/cluster`,
        // which its status names, and which is new after each suspension:
        // the controller remembers every one it saw), and the pod of its
        // submitter Job (named after the RayJob) the Job's name.
        "rayjob" => Some(KindSpec {
            finished: Finished {
                path: Some("status.jobDeploymentStatus".into()),
                values: vec!["Complete".into(), "Failed".into()],
                ..Finished::default()
            },
            pods: vec![
                link(
                    "ray.io/cluster",
                    LabelValue::Path,
                    Some("status.rayClusterName"),
                ),
                link("batch.kubernetes.io/job-name", LabelValue::Name, None),
            ],
            // Its head's, its workers' and its submitter's pods.
            grace_period_path: Some(
                "spec.rayClusterSpec.headGroupSpec.template.spec.terminationGracePeriodSeconds, \
                 spec.rayClusterSpec.workerGroupSpecs.*.template.spec.terminationGracePeriodSeconds, \
                 spec.submitterPodTemplate.spec.terminationGracePeriodSeconds"
                    .into(),
            ),
            ..spec("ray.io", "v1", "RayJob", "rayjobs")
        }),
        _ => None,
    }
}

/// The names `--workload-kinds` knows: `builtin`'s and plain Pods.
pub const BUILTIN_NAMES: &[&str] = &["jobset", "workflow", "rayjob", "pod"];

/// What `--workload-kinds` gates besides Jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Gated {
    /// Kinds with a suspend switch, described.
    pub kinds: Vec<KindSpec>,
    /// Plain Pods, through a scheduling gate (`gated_pods`).
    pub pods: bool,
}

/// What is gated besides Jobs, as the controller and the webhook share it.
#[derive(Debug, Clone, Default)]
pub struct Gating {
    pub kinds: std::sync::Arc<Vec<std::sync::Arc<KindSpec>>>,
    pub pods: bool,
}

/// The kinds `--workload-kinds` names: built-in names, `pod`, or files
/// holding a YAML list of descriptions. One sentence for what cannot be
/// used.
pub fn parse(
    entries: &[String],
    read: impl Fn(&str) -> std::io::Result<String>,
) -> Result<Gated, String> {
    let mut kinds: Vec<KindSpec> = Vec::new();
    let mut pods = false;
    for entry in entries.iter().flat_map(|e| e.split(',')).map(str::trim) {
        if entry.is_empty() {
            continue;
        }
        if matches!(entry.to_ascii_lowercase().as_str(), "pod" | "pods") {
            pods = true;
            continue;
        }
        let found = match builtin(entry) {
            Some(kind) => vec![kind],
            None if entry.contains('/') || entry.ends_with(".yaml") || entry.ends_with(".json") => {
                let text = read(entry)
                    .map_err(|e| format!("cannot read the workload kinds file {entry}: {e}"))?;
                serde_yaml::from_str::<Vec<KindSpec>>(&text).map_err(|e| {
                    format!(
                        "the workload kinds file {entry} is not a list of kind descriptions: {e}"
                    )
                })?
            }
            None => {
                return Err(format!(
                    "unknown workload kind {entry:?}: give one of {} or the path of a YAML file describing kinds",
                    BUILTIN_NAMES.join(", ")
                ));
            }
        };
        for kind in found {
            kind.validate().map_err(|e| e.to_string())?;
            if kinds.iter().any(|k| k.id() == kind.id()) {
                return Err(format!("workload kind {} is named twice", kind.id()));
            }
            kinds.push(kind);
        }
    }
    Ok(Gated { kinds, pods })
}

fn bad_path(path: &str) -> bool {
    path.is_empty() || path.split('.').any(str::is_empty)
}

/// The value at a dotted path; a number steps into a list.
pub fn get<'a>(data: &'a Value, path: &str) -> Option<&'a Value> {
    path.split('.').try_fold(data, |v, key| match v {
        Value::Array(items) => items.get(key.parse::<usize>().ok()?),
        _ => v.get(key),
    })
}

/// Every value at a dotted path in which `*` stands for each item of a
/// list (or each value of an object); a missing field is `null`, so that
/// an item that leaves it unset still counts (as the default).
pub fn get_all<'a>(data: &'a Value, path: &str) -> Vec<&'a Value> {
    static NULL: Value = Value::Null;
    let mut at: Vec<&Value> = vec![data];
    for key in path.split('.') {
        at = at
            .into_iter()
            .flat_map(|v| -> Vec<&Value> {
                match (key, v) {
                    ("*", Value::Array(items)) => items.iter().collect(),
                    ("*", Value::Object(map)) => map.values().collect(),
                    (_, Value::Array(items)) => key
                        .parse::<usize>()
                        .ok()
                        .and_then(|i| items.get(i))
                        .into_iter()
                        .collect(),
                    (_, Value::Null) => vec![&NULL],
                    _ => vec![v.get(key).unwrap_or(&NULL)],
                }
            })
            .collect();
    }
    at
}

/// `{"a": {"b": value}}` for `a.b`.
fn nest(path: &str, value: Value) -> Value {
    path.rsplit('.')
        .fold(value, |inner, key| json!({ key: inner }))
}

/// `/a/b` for `a.b`, escaped as RFC 6901 says.
fn pointer(path: &str) -> String {
    path.split('.')
        .map(|k| format!("/{}", k.replace('~', "~0").replace('/', "~1")))
        .collect()
}

#[cfg(test)]
mod tests;
