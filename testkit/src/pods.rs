//! The pod-level limit checker: what the promise is about. It watches the
//! pods of Jobs in one namespace of any number of clusters and counts, at
//! every change, the Jobs that have a pod that may still run (pending,
//! running or terminating: not yet Succeeded or Failed, and not yet gone).
//! Ledger entries and Job flags are not looked at.
//!
//! Pods are grouped by the `batch.kubernetes.io/controller-uid` label the
//! Job controller puts on them; it stays on pods whose Job was deleted or
//! orphaned them, so their work still counts.
//!
//! A Job counts as the units its pods' `jobgate.dev/slots` annotation says
//! (1 without it), so weighted Jobs are checked against the limit in units;
//! tests put the annotation on the pod template as well as on the Job.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::Api;
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};

const JOB_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";
const SLOTS_ANNOTATION: &str = "jobgate.dev/slots";
/// The scheduling gate jobgate holds plain Pods with.
const JOBGATE_GATE: &str = "jobgate.dev/slot";

/// (cluster, Job UID)
type JobKey = (String, String);

#[derive(Default)]
struct State {
    /// Live pods (by pod UID) of each Job.
    live: BTreeMap<JobKey, BTreeSet<String>>,
    /// During a watcher's (re)list: the cluster's live pods seen so far,
    /// swapped in whole when the list is done, so pods deleted while the
    /// watch was down do not stay counted.
    relisting: BTreeMap<String, BTreeMap<JobKey, BTreeSet<String>>>,
    /// Every change of the count: when, and the count from then on.
    timeline: Vec<(Instant, usize)>,
    /// Units each Job takes, from its pods' annotation.
    weights: BTreeMap<JobKey, usize>,
}

impl State {
    fn count(&self) -> usize {
        self.live
            .keys()
            .map(|k| self.weights.get(k).copied().unwrap_or(1))
            .sum()
    }

    fn record(&mut self) {
        let n = self.count();
        if self.timeline.last().map(|(_, c)| *c) != Some(n) {
            self.timeline.push((Instant::now(), n));
        }
    }
}

/// May this pod still run? Anything not Succeeded or Failed: pending,
/// running, or being deleted but not yet gone; except a pod still held by
/// jobgate's scheduling gate, which no scheduler places until the gate is
/// removed, and which only jobgate removes (as a suspended Job has no pods).
fn may_run(pod: &Pod) -> bool {
    let phase = pod.status.as_ref().and_then(|s| s.phase.as_deref());
    let gated = pod
        .spec
        .as_ref()
        .and_then(|s| s.scheduling_gates.as_ref())
        .is_some_and(|gates| gates.iter().any(|g| g.name == JOBGATE_GATE));
    !matches!(phase, Some("Succeeded" | "Failed")) && !gated
}

/// What names the workload a pod belongs to.
#[derive(Clone)]
enum Key {
    /// The value of this label (a Job's UID, a JobSet's...).
    Label(Arc<str>),
    /// Each pod is a workload of its own (plain Pods).
    PerPod,
    /// Worked out from the pod (a RayJob's, whose pods differ).
    By(KeyFn),
}

type KeyFn = Arc<dyn Fn(&Pod) -> Option<String> + Send + Sync>;

fn keyed(key: &Key, cluster: &str, pod: &Pod) -> Option<(JobKey, String)> {
    let job = match key {
        Key::Label(label) => pod.labels().get(&**label)?.clone(),
        Key::PerPod => pod.uid()?,
        Key::By(f) => f(pod)?,
    };
    Some(((cluster.to_string(), job), pod.uid()?))
}

fn apply(map: &mut BTreeMap<JobKey, BTreeSet<String>>, label: &Key, cluster: &str, pod: &Pod) {
    let Some((job, uid)) = keyed(label, cluster, pod) else {
        return;
    };
    if may_run(pod) {
        map.entry(job).or_default().insert(uid);
    } else {
        remove(map, job, &uid);
    }
}

fn remove(map: &mut BTreeMap<JobKey, BTreeSet<String>>, job: JobKey, uid: &str) {
    if let Some(pods) = map.get_mut(&job) {
        pods.remove(uid);
        if pods.is_empty() {
            map.remove(&job);
        }
    }
}

/// Counts Jobs with pods that may still run, across clusters, over time.
#[derive(Clone)]
pub struct PodLog {
    state: Arc<Mutex<State>>,
    /// What names the workload a pod belongs to.
    key: Key,
}

impl Default for PodLog {
    fn default() -> Self {
        PodLog::by_label(JOB_UID_LABEL)
    }
}

impl PodLog {
    /// Counts workloads of another kind: pods are grouped by the value of
    /// `label` (a JobSet's `jobset.sigs.k8s.io/jobset-uid`, an Argo
    /// Workflow's `workflows.argoproj.io/workflow`).
    pub fn by_label(label: &str) -> Self {
        PodLog {
            state: Arc::default(),
            key: Key::Label(label.into()),
        }
    }

    /// Counts workloads whose pods `key` names (`None`: not one of them);
    /// watch the namespace's pods with [`watch_selected`](Self::watch_selected).
    pub fn keyed_by(key: impl Fn(&Pod) -> Option<String> + Send + Sync + 'static) -> Self {
        PodLog {
            state: Arc::default(),
            key: Key::By(Arc::new(key)),
        }
    }

    /// Counts plain Pods, each its own workload; watch them with
    /// [`watch_selected`](Self::watch_selected) and a selector.
    pub fn per_pod() -> Self {
        PodLog {
            state: Arc::default(),
            key: Key::PerPod,
        }
    }

    /// Starts watching the Job pods of namespace `ns` in `cluster`.
    pub fn watch(&self, client: Client, cluster: &str, ns: &str) {
        self.watch_selected(client, cluster, ns, "");
    }

    /// [`watch`](Self::watch) limited to the pods `selector` (a label
    /// selector) picks, to leave out Jobs outside the limit under test.
    pub fn watch_selected(&self, client: Client, cluster: &str, ns: &str, selector: &str) {
        let api: Api<Pod> = Api::namespaced(client, ns);
        let labels = match (&self.key, selector.is_empty()) {
            (Key::Label(label), true) => label.to_string(),
            (Key::Label(label), false) => format!("{label},{selector}"),
            (_, _) => selector.to_string(),
        };
        let config = watcher::Config::default().labels(&labels);
        let cluster = cluster.to_string();
        let log = self.clone();
        tokio::spawn(async move {
            let mut events = watcher(api, config).default_backoff().boxed();
            while let Some(event) = events.next().await {
                let Ok(event) = event else { continue };
                log.on_event(&cluster, event);
            }
        });
    }

    fn on_event(&self, cluster: &str, event: watcher::Event<Pod>) {
        let mut s = self.state.lock().unwrap();
        let pod = match &event {
            watcher::Event::Apply(pod) | watcher::Event::InitApply(pod) => Some(pod),
            _ => None,
        };
        let label = &self.key;
        if let Some(pod) = pod
            && let Some((job, _)) = keyed(label, cluster, pod)
        {
            let units = pod
                .annotations()
                .get(SLOTS_ANNOTATION)
                .and_then(|n| n.parse().ok())
                .unwrap_or(1);
            s.weights.insert(job, units);
        }
        match event {
            watcher::Event::Apply(pod) => apply(&mut s.live, label, cluster, &pod),
            watcher::Event::Delete(pod) => {
                if let Some((job, uid)) = keyed(label, cluster, &pod) {
                    remove(&mut s.live, job, &uid);
                }
            }
            watcher::Event::Init => {
                s.relisting.insert(cluster.to_string(), BTreeMap::new());
            }
            watcher::Event::InitApply(pod) => {
                let staged = s.relisting.entry(cluster.to_string()).or_default();
                apply(staged, label, cluster, &pod);
            }
            watcher::Event::InitDone => {
                let staged = s.relisting.remove(cluster).unwrap_or_default();
                s.live.retain(|(c, _), _| c != cluster);
                s.live.extend(staged);
            }
        }
        s.record();
    }

    /// Jobs with a pod that may still run now, in all clusters.
    pub fn running(&self) -> usize {
        self.state.lock().unwrap().count()
    }

    /// The same, in one cluster.
    pub fn running_in(&self, cluster: &str) -> usize {
        let s = self.state.lock().unwrap();
        s.live.keys().filter(|(c, _)| c == cluster).count()
    }

    /// The most seen at once.
    pub fn max(&self) -> usize {
        let s = self.state.lock().unwrap();
        s.timeline.iter().map(|(_, n)| *n).max().unwrap_or(0)
    }

    /// Every rise of the count after `since` that took it above `limit`:
    /// the counts reached. Empty when no Job got a pod over the limit then
    /// (Jobs already running above it may stop at their own pace).
    pub fn rises_above(&self, limit: usize, since: Instant) -> Vec<usize> {
        let s = self.state.lock().unwrap();
        s.timeline
            .windows(2)
            .filter(|w| w[1].0 >= since && w[1].1 > w[0].1 && w[1].1 > limit)
            .map(|w| w[1].1)
            .collect()
    }

    /// How long, in total, more than `limit` Jobs had pods that may run.
    pub fn time_over(&self, limit: usize) -> Duration {
        let s = self.state.lock().unwrap();
        time_over(&s.timeline, limit, Instant::now())
    }

    /// The same, counting only from `since`.
    pub fn time_over_since(&self, limit: usize, since: Instant) -> Duration {
        let s = self.state.lock().unwrap();
        // The count in force at `since`, then every change after it.
        let before = s.timeline.iter().rev().find(|(t, _)| *t <= since);
        let clipped: Vec<(Instant, usize)> = before
            .map(|(_, n)| (since, *n))
            .into_iter()
            .chain(s.timeline.iter().copied().filter(|(t, _)| *t > since))
            .collect();
        time_over(&clipped, limit, Instant::now())
    }

    /// One line for test output: the peak, the time spent over `limit`,
    /// and every change of the count (ms after the first: count).
    pub fn summary(&self, limit: usize) -> String {
        let changes = {
            let s = self.state.lock().unwrap();
            let start = s.timeline.first().map(|(t, _)| *t);
            s.timeline
                .iter()
                .map(|(t, n)| {
                    let ms = start.map_or(0, |s| t.duration_since(s).as_millis());
                    format!("{ms}:{n}")
                })
                .collect::<Vec<_>>()
                .join(" ")
        };
        format!(
            "pods: peak {} Jobs with live pods at limit {limit}, {:?} over it (changes {changes})",
            self.max(),
            self.time_over(limit)
        )
    }
}

/// The total time the count stood above `limit` in `timeline` (changes in
/// time order), counting the last stretch up to `now`.
fn time_over(timeline: &[(Instant, usize)], limit: usize, now: Instant) -> Duration {
    let mut total = Duration::ZERO;
    for (i, (at, n)) in timeline.iter().enumerate() {
        if *n > limit {
            let until = timeline.get(i + 1).map(|(t, _)| *t).unwrap_or(now);
            total += until.saturating_duration_since(*at);
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::PodStatus;
    use kube::api::ObjectMeta;

    fn pod(uid: &str, job: &str, phase: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                uid: Some(uid.into()),
                labels: Some([(JOB_UID_LABEL.to_string(), job.to_string())].into()),
                ..Default::default()
            },
            status: Some(PodStatus {
                phase: Some(phase.into()),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn counts_jobs_with_pods_that_may_run_across_clusters() {
        let log = PodLog::default();
        log.on_event("a", watcher::Event::Apply(pod("p1", "j1", "Pending")));
        log.on_event("a", watcher::Event::Apply(pod("p2", "j1", "Running")));
        log.on_event("b", watcher::Event::Apply(pod("p3", "j1", "Running")));
        assert_eq!(log.running(), 2, "one Job per cluster, two pods of one");
        log.on_event("a", watcher::Event::Apply(pod("p1", "j1", "Succeeded")));
        assert_eq!(log.running_in("a"), 1, "p2 still runs");
        log.on_event("a", watcher::Event::Delete(pod("p2", "j1", "Running")));
        assert_eq!(log.running_in("a"), 0);
        assert_eq!(log.max(), 2);
    }

    #[test]
    fn a_relist_drops_pods_that_went_while_the_watch_was_down() {
        let log = PodLog::default();
        log.on_event("a", watcher::Event::Apply(pod("p1", "j1", "Running")));
        log.on_event("b", watcher::Event::Apply(pod("p2", "j2", "Running")));
        log.on_event("a", watcher::Event::Init);
        log.on_event("a", watcher::Event::InitApply(pod("p3", "j3", "Running")));
        assert_eq!(
            log.running(),
            2,
            "the old view holds until the list is done"
        );
        log.on_event("a", watcher::Event::InitDone);
        assert_eq!(log.running(), 2);
        assert_eq!(log.running_in("a"), 1);
    }

    #[test]
    fn weighted_jobs_count_their_units_and_an_overrun_is_caught() {
        let weighted = |uid: &str, job: &str, units: &str| {
            let mut p = pod(uid, job, "Running");
            p.metadata.annotations =
                Some([(SLOTS_ANNOTATION.to_string(), units.to_string())].into());
            p
        };
        let log = PodLog::default();
        let start = Instant::now();
        log.on_event("a", watcher::Event::Apply(weighted("p1", "j1", "3")));
        log.on_event("a", watcher::Event::Apply(pod("p2", "j2", "Running")));
        assert_eq!(log.running(), 4, "3 units and 1");
        assert_eq!(log.rises_above(4, start), Vec::<usize>::new());
        // One more unit at limit 4: the checker sees 5.
        log.on_event("a", watcher::Event::Apply(pod("p3", "j3", "Pending")));
        assert_eq!(log.rises_above(4, start), vec![5]);
        assert_eq!(log.max(), 5);
        log.on_event(
            "a",
            watcher::Event::Apply(weighted("p1", "j1", "3")).clone(),
        );
        log.on_event("a", watcher::Event::Delete(weighted("p1", "j1", "3")));
        assert_eq!(log.running(), 2);
    }

    #[test]
    fn time_over_adds_up_the_stretches_above_the_limit() {
        let t = Instant::now();
        let s = |ms| t + Duration::from_millis(ms);
        let timeline = [(s(0), 1), (s(100), 3), (s(250), 2), (s(400), 3)];
        assert_eq!(time_over(&timeline, 2, s(1000)), Duration::from_millis(750));
        assert_eq!(time_over(&timeline, 3, s(1000)), Duration::ZERO);
    }
}

#[cfg(test)]
mod plain_pod_tests {
    use super::*;

    fn plain(uid: &str, gated: bool, phase: &str) -> Pod {
        let gates = if gated {
            serde_json::json!([{"name": JOBGATE_GATE}])
        } else {
            serde_json::json!([{"name": "someone-else"}])
        };
        serde_json::from_value(serde_json::json!({
            "metadata": {"uid": uid, "name": uid},
            "spec": {"containers": [], "schedulingGates": gates},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    #[test]
    fn each_plain_pod_counts_once_ungated_and_an_overrun_is_caught() {
        let log = PodLog::per_pod();
        for (uid, gated) in [("a", false), ("b", false), ("c", true)] {
            log.on_event("one", watcher::Event::Apply(plain(uid, gated, "Pending")));
        }
        // The gated one cannot be scheduled: two may run.
        assert_eq!(log.running(), 2);
        // Ungated (by whoever): it counts, and the limit of 2 is exceeded.
        log.on_event("one", watcher::Event::Apply(plain("c", false, "Running")));
        assert_eq!(log.max(), 3);
        assert!(
            !log.rises_above(2, Instant::now() - Duration::from_secs(60))
                .is_empty()
        );
        log.on_event("one", watcher::Event::Apply(plain("a", false, "Succeeded")));
        assert_eq!(log.running(), 2);
    }
}
