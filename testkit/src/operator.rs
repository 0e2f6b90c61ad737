//! Helpers for operator end-to-end tests: ConcurrencyGroups and Jobs (the
//! `jobgate controller` process is in `controller`, re-exported here), a stand-in for the Job controller (for
//! control planes without kube-controller-manager), and a checker that
//! watches Jobs in one or more clusters and records every admission.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use serde_json::json;

use crate::SeaweedFs;

use crate::k8s::ControlPlane;

pub use crate::controller::ControllerProcess;

pub async fn client(cp: &ControlPlane) -> Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    Client::try_from(config).unwrap()
}

/// A full cluster (one node of kwok "held" pods, which run until their Job
/// is suspended or deleted) with the CRD installed and `ns` created.
pub async fn held_cluster(ns: &str) -> (ControlPlane, Client) {
    let cp = ControlPlane::start_full_with(1, crate::k8s::Pods::Held);
    let kube = client(&cp).await;
    prepare(&cp, &kube, ns).await;
    (cp, kube)
}

/// Installs the CRD and creates `ns`.
pub async fn prepare(cp: &ControlPlane, client: &Client, ns: &str) {
    install_crd(cp);
    create_namespace(client, ns).await;
}

/// Applies `crds/` and waits until the API server serves the group. Not
/// for two callers at once on one control plane: both may try to create it.
pub fn install_crd(cp: &ControlPlane) {
    let crds = crate::repo_dir().join("crds");
    let out = cp.kubectl(&["apply", "-f", &crds.display().to_string()]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = cp.kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/concurrencygroups.jobgate.dev",
        "--timeout=60s",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

pub async fn create_namespace(client: &Client, ns: &str) {
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace: Namespace = serde_json::from_value(json!({"metadata": {"name": ns}})).unwrap();
    api.create(&PostParams::default(), &namespace)
        .await
        .unwrap();
}

pub struct GroupSpec<'a> {
    pub name: &'a str,
    pub ns: &'a str,
    pub limit: u32,
    pub bucket: &'a str,
    pub endpoint: &'a str,
    pub key: Option<&'a str>,
    pub secret: Option<&'a str>,
}

pub fn apply_group(cp: &ControlPlane, g: &GroupSpec) {
    apply_group_with(cp, g, json!({}));
}

/// [`apply_group`] with `spec` merged over the group's spec (for example
/// `{"leaseSeconds": 20, "maxGracePeriodSeconds": 5}`).
pub fn apply_group_with(cp: &ControlPlane, g: &GroupSpec, spec: serde_json::Value) {
    let mut ledger = json!({
        "bucket": g.bucket,
        "endpoint": g.endpoint,
        "region": "us-east-1",
        "forcePathStyle": true,
    });
    if let Some(key) = g.key {
        ledger["key"] = json!(key);
    }
    if let Some(secret) = g.secret {
        ledger["credentialsSecretRef"] = json!({"name": secret});
    }
    // Test Jobs' pods stop at once (grace period 0) unless a test says
    // otherwise: the fence can come late in the short lease.
    let mut full =
        json!({"limit": g.limit, "leaseSeconds": 10, "maxGracePeriodSeconds": 0, "ledger": ledger});
    if let (Some(full), Some(extra)) = (full.as_object_mut(), spec.as_object()) {
        full.extend(extra.clone());
    }
    let group = json!({
        "apiVersion": "jobgate.dev/v1alpha1",
        "kind": "ConcurrencyGroup",
        "metadata": {"name": g.name, "namespace": g.ns},
        "spec": full,
    });
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &group.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A Secret with the SeaweedFS test credentials.
pub fn apply_credentials(cp: &ControlPlane, ns: &str, name: &str, s3: &SeaweedFs) {
    let env: BTreeMap<_, _> = s3.env().into_iter().collect();
    apply_secret(
        cp,
        ns,
        name,
        &env["AWS_ACCESS_KEY_ID"],
        &env["AWS_SECRET_ACCESS_KEY"],
    );
}

/// A credentials Secret with the given keys (for example SeaweedFS's
/// second identity, `seaweedfs::TENANT_ACCESS_KEY`).
pub fn apply_secret(
    cp: &ControlPlane,
    ns: &str,
    name: &str,
    access_key_id: &str,
    secret_access_key: &str,
) {
    let secret = json!({
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": {"name": name, "namespace": ns},
        "stringData": {
            "AWS_ACCESS_KEY_ID": access_key_id,
            "AWS_SECRET_ACCESS_KEY": secret_access_key,
        },
    });
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &secret.to_string());
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A suspended Job for a cluster with held pods
/// ([`Pods::Held`](crate::k8s::Pods::Held)): its pod runs for `run_for`
/// (for good with `None`) and takes `grace_seconds` to stop.
pub async fn create_held_job(
    client: &Client,
    ns: &str,
    name: &str,
    group: &str,
    grace_seconds: u32,
    run_for: Option<Duration>,
) -> Job {
    create_weighted_held_job(client, ns, name, group, grace_seconds, run_for, None).await
}

/// [`create_held_job`] taking `slots` units of the group's limit
/// (`jobgate.dev/slots` on the Job, and on its pods for the checker).
pub async fn create_weighted_held_job(
    client: &Client,
    ns: &str,
    name: &str,
    group: &str,
    grace_seconds: u32,
    run_for: Option<Duration>,
    slots: Option<u32>,
) -> Job {
    let mut annotations = serde_json::Map::new();
    if let Some(run_for) = run_for {
        annotations.insert(
            crate::k8s::RUN_FOR_ANNOTATION.into(),
            json!(format!("{}ms", run_for.as_millis())),
        );
    }
    let mut job_annotations = serde_json::Map::new();
    if let Some(slots) = slots {
        annotations.insert("jobgate.dev/slots".into(), json!(slots.to_string()));
        job_annotations.insert("jobgate.dev/slots".into(), json!(slots.to_string()));
    }
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"jobgate.dev/group": group}, "annotations": job_annotations},
        "spec": {
            "suspend": true,
            "backoffLimit": 0,
            "template": {
                "metadata": {"annotations": annotations},
                "spec": {
                    "restartPolicy": "Never",
                    "terminationGracePeriodSeconds": grace_seconds,
                    "containers": [{"name": "work", "image": "busybox", "command": ["sleep", "inf"]}],
                },
            },
        },
    }))
    .unwrap();
    Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &job)
        .await
        .unwrap()
}

pub async fn create_job(client: &Client, ns: &str, name: &str, group: &str, suspend: bool) -> Job {
    let job: Job = serde_json::from_value(json!({
        "metadata": {"name": name, "labels": {"jobgate.dev/group": group}},
        "spec": {
            "suspend": suspend,
            "template": {"spec": {
                "restartPolicy": "Never",
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "work", "image": "busybox", "command": ["true"]}],
            }},
        },
    }))
    .unwrap();
    Api::<Job>::namespaced(client.clone(), ns)
        .create(&PostParams::default(), &job)
        .await
        .unwrap()
}

pub type Key = (String, String);

/// Everything the checker saw, across clusters.
#[derive(Default, Debug)]
pub struct Seen {
    /// Admitted and not finished, by (cluster, job).
    pub running: BTreeSet<Key>,
    pub max_running: usize,
    /// How often each Job went from suspended to running.
    pub admissions: BTreeMap<Key, u32>,
    /// First admissions in the order seen. Jobs admitted by one pass are
    /// unsuspended together, so among them this order is the API server's;
    /// [`by_token`](Self::by_token) is the order the slots were granted in.
    pub order: Vec<Key>,
    /// The fencing token each Job was first admitted with.
    tokens: BTreeMap<Key, u64>,
    pub finished: BTreeSet<Key>,
    suspended: BTreeMap<Key, bool>,
    /// The most admitted and unfinished at once, per group (a Job's
    /// `jobgate.dev/group` label).
    pub max_per_group: BTreeMap<String, usize>,
    group_of: BTreeMap<Key, String>,
}

impl Seen {
    /// First admissions in the order their slots were granted: by fencing
    /// token (Jobs seen admitted without one last).
    pub fn by_token(&self) -> Vec<Key> {
        let mut order = self.order.clone();
        order.sort_by_key(|k| self.tokens.get(k).copied().unwrap_or(u64::MAX));
        order
    }
}

/// Watches Jobs and checks the limit. A Job counts from the moment it is
/// seen unsuspended until it is seen finished, deleted, or suspended again,
/// or until the stand-in Job controller decides to finish it (before it
/// writes the status, so that a slow watch never makes a correct run look
/// wrong).
#[derive(Default, Clone)]
pub struct AdmissionLog {
    pub seen: Arc<Mutex<Seen>>,
}

/// Whether `job` has ended: Complete or Failed.
pub fn is_finished(job: &Job) -> bool {
    job.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| {
            cs.iter()
                .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
        })
}

impl AdmissionLog {
    pub fn observe(&self, cluster: &str, job: &Job) {
        let key = (cluster.to_string(), job.name_any());
        let suspended = job.spec.as_ref().and_then(|s| s.suspend) == Some(true);
        let mut s = self.seen.lock().unwrap();
        if let Some(group) = job.labels().get("jobgate.dev/group") {
            s.group_of.insert(key.clone(), group.clone());
        }
        let was_suspended = s.suspended.insert(key.clone(), suspended).unwrap_or(true);
        if is_finished(job) {
            s.running.remove(&key);
            s.finished.insert(key.clone());
        } else if suspended {
            s.running.remove(&key);
        } else if was_suspended {
            *s.admissions.entry(key.clone()).or_default() += 1;
            s.order.push(key.clone());
            if let Some(token) = job
                .annotations()
                .get("jobgate.dev/fencing-token")
                .and_then(|t| t.parse().ok())
            {
                s.tokens.entry(key.clone()).or_insert(token);
            }
            if !s.finished.contains(&key) {
                s.running.insert(key.clone());
            }
        }
        s.max_running = s.max_running.max(s.running.len());
        if let Some(group) = s.group_of.get(&key).cloned() {
            let now = s
                .running
                .iter()
                .filter(|k| s.group_of.get(*k) == Some(&group))
                .count();
            let max = s.max_per_group.entry(group).or_default();
            *max = (*max).max(now);
        }
    }

    pub fn gone(&self, cluster: &str, name: &str) {
        let key = (cluster.to_string(), name.to_string());
        let mut s = self.seen.lock().unwrap();
        s.running.remove(&key);
    }

    pub fn finishing(&self, cluster: &str, name: &str) {
        let key = (cluster.to_string(), name.to_string());
        let mut s = self.seen.lock().unwrap();
        s.running.remove(&key);
        s.finished.insert(key);
    }

    pub fn snapshot<T>(&self, f: impl FnOnce(&Seen) -> T) -> T {
        f(&self.seen.lock().unwrap())
    }
}

/// Stands in for the Job controller: completes every running Job after a
/// random hold, unless paused.
#[derive(Clone)]
pub struct Sim {
    pub paused: Arc<AtomicBool>,
    pub hold: (u64, u64),
    /// Status patches in flight at once. A thousand Jobs admitted together
    /// would otherwise be a thousand concurrent requests, which the API
    /// server's priority and fairness queues reject (429) until a bounded
    /// retry gives up and the Jobs never finish.
    patches: Arc<tokio::sync::Semaphore>,
}

/// How many completions the stand-in patches at once.
const SIM_PATCHES_AT_ONCE: usize = 32;

impl Sim {
    pub fn new(hold_ms: (u64, u64)) -> Self {
        Sim {
            paused: Arc::new(AtomicBool::new(false)),
            hold: hold_ms,
            patches: Arc::new(tokio::sync::Semaphore::new(SIM_PATCHES_AT_ONCE)),
        }
    }

    pub fn pause(&self, paused: bool) {
        self.paused.store(paused, Ordering::SeqCst);
    }
}

/// Watches the Jobs of `ns` in one cluster for the checker and, with a
/// `Sim`, completes them.
pub fn observe(client: Client, cluster: &str, ns: &str, checker: AdmissionLog, sim: Option<Sim>) {
    let api: Api<Job> = Api::namespaced(client, ns);
    let cluster = cluster.to_string();
    tokio::spawn(async move {
        let mut scheduled = BTreeSet::new();
        // With backoff, so that a watch of a stopped API server yields
        // instead of spinning (and blocking the test runtime's shutdown).
        let mut events = watcher(api.clone(), watcher::Config::default())
            .default_backoff()
            .boxed();
        while let Some(event) = events.next().await {
            let Ok(event) = event else { continue };
            match event {
                watcher::Event::Apply(job) | watcher::Event::InitApply(job) => {
                    checker.observe(&cluster, &job);
                    let running = job.spec.as_ref().and_then(|s| s.suspend) != Some(true)
                        && !is_finished(&job);
                    if let Some(sim) = &sim
                        && running
                        && scheduled.insert(job.name_any())
                    {
                        tokio::spawn(complete_later(
                            api.clone(),
                            cluster.clone(),
                            job.name_any(),
                            checker.clone(),
                            sim.clone(),
                        ));
                    }
                }
                watcher::Event::Delete(job) => checker.gone(&cluster, &job.name_any()),
                _ => {}
            }
        }
    });
}

async fn complete_later(
    api: Api<Job>,
    cluster: String,
    name: String,
    checker: AdmissionLog,
    sim: Sim,
) {
    let hold = sim.hold.0 + rand::random::<u64>() % (sim.hold.1 - sim.hold.0 + 1);
    tokio::time::sleep(Duration::from_millis(hold)).await;
    while sim.paused.load(Ordering::SeqCst) {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let Ok(_permit) = sim.patches.acquire().await else {
        return;
    };
    // Counted as running until its turn to be patched comes: until then it
    // holds its slot in the cluster too.
    checker.finishing(&cluster, &name);
    let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
    let patch = json!({"status": {
        "startTime": now, "completionTime": now, "succeeded": 1,
        "conditions": [
            {"type": "SuccessCriteriaMet", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
            {"type": "Complete", "status": "True", "lastTransitionTime": now, "lastProbeTime": now},
        ],
    }});
    // Until it lands: a Job the stand-in gave up on would hold its slot for
    // ever, and the run would measure the stand-in rather than the system.
    // The test or benchmark's own timeout ends a run whose API server is
    // gone. A refusal that retrying cannot change (a 4xx other than 429)
    // ends it at once.
    loop {
        match api
            .patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
        {
            Ok(_) => return,
            // Deleted meanwhile.
            Err(kube::Error::Api(e)) if e.code == 404 => return,
            Err(kube::Error::Api(e)) if (400..500).contains(&e.code) && e.code != 429 => {
                eprintln!("stand-in: completing {name} was refused: {}", e.message);
                return;
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Polls `f` until it returns `Some`, or panics with `what` after `timeout`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The ledger at `key`, if it exists and parses.
pub async fn read_ledger(s3: &SeaweedFs, bucket: &str, key: &str) -> Option<jobgate::Ledger> {
    let store = s3.dyn_store(bucket).await;
    let (ledger, _) = jobgate::semaphore::read_ledger(&store, key).await.ok()??;
    Some(ledger)
}

/// `Some` once the ledger at `key` in `store` exists and holds no slot (for
/// [`eventually`]).
pub async fn drained(store: &jobgate::store::DynStore, key: &str) -> Option<()> {
    match jobgate::semaphore::read_ledger(store, key).await {
        Ok(Some((ledger, _))) if ledger.holders.is_empty() => Some(()),
        _ => None,
    }
}

/// How many Jobs in `ns` have a succeeded pod.
pub fn succeeded_jobs(cp: &ControlPlane, ns: &str) -> usize {
    let out = cp.kubectl(&[
        "get",
        "jobs",
        "-n",
        ns,
        "-o",
        r#"jsonpath={range .items[*]}{.status.succeeded}{" "}{end}"#,
    ]);
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .filter(|s| *s != "0")
        .count()
}

/// Agent `taker` evicts `agent` from the ledger at `key` and takes one slot
/// as holder `holder`, in one conditional write: what another cluster does
/// once it has watched `agent`'s renewals stand still for its lease (so
/// `agent`'s Jobs lose their slots at once, and none is free for them).
/// `taker` declares a lease of ten minutes, so nobody evicts it while a
/// test runs.
pub async fn evict_and_take(
    s3: &SeaweedFs,
    bucket: &str,
    key: &str,
    agent: &str,
    taker: &str,
    holder: &str,
) {
    use jobgate::decide::{Batch, apply};
    use jobgate::store::Condition;
    let store = s3.dyn_store(bucket).await;
    for _ in 0..20 {
        let (ledger, etag) = jobgate::semaphore::read_ledger(&store, key)
            .await
            .unwrap()
            .expect("the ledger exists");
        let batch = Batch {
            agent: taker.to_string(),
            lease: Duration::from_secs(600),
            acquires: vec![holder.to_string()],
            evict: vec![agent.to_string()],
            wall_now: "test".into(),
            ..Default::default()
        };
        let out = apply(&ledger, &batch);
        assert_eq!(out.evicted_agents, vec![agent.to_string()], "{ledger:?}");
        assert_eq!(out.granted.len(), 1, "no slot for {holder}: {ledger:?}");
        let next = out.next.expect("a change");
        let body = bytes::Bytes::from(next.to_bytes());
        if store.put(key, body, Condition::Match(etag)).await.is_ok() {
            return;
        }
    }
    panic!("the ledger kept changing under the eviction");
}

pub async fn ledger_holders(
    s3: &SeaweedFs,
    bucket: &str,
    key: &str,
) -> Option<BTreeMap<String, String>> {
    let ledger = read_ledger(s3, bucket, key).await?;
    Some(
        ledger
            .holders
            .into_iter()
            .map(|(id, h)| (id, h.agent))
            .collect(),
    )
}

/// A server that a test owns (stopped when the test ends) or shares with
/// the other tests of its binary (see [`crate::shared`]).
pub enum Server<T: 'static> {
    Own(T),
    Shared(&'static T),
}

impl<T> std::ops::Deref for Server<T> {
    type Target = T;
    fn deref(&self) -> &T {
        match self {
            Server::Own(t) => t,
            Server::Shared(t) => t,
        }
    }
}

/// One test's world: SeaweedFS with a fresh bucket, a control plane with the
/// CRD installed and the test's namespace, and a client.
pub struct Bed {
    pub s3: Server<SeaweedFs>,
    pub bucket: String,
    pub cp: Server<ControlPlane>,
    pub kube: Client,
    /// The test's namespace: as asked for on servers of its own, with a
    /// random suffix on shared ones.
    pub ns: String,
}

impl Bed {
    /// Servers of the test's own, namespace `ns`. For tests that stop or
    /// freeze a server, or change what is cluster-wide (webhooks, RBAC).
    /// `full`: with kube-controller-manager, kube-scheduler and kwok.
    pub async fn start(ns: &str, full: bool) -> Bed {
        let s3 = super::seaweed().await;
        let bucket = super::bucket(&s3).await;
        let (cp, kube) = cluster(ns, full).await;
        Bed {
            s3: Server::Own(s3),
            bucket,
            cp: Server::Own(cp),
            kube,
            ns: ns.to_string(),
        }
    }

    /// The binary's shared SeaweedFS and control plane (the full one with
    /// fast pods when `full`), with a bucket and a namespace of the test's
    /// own: `prefix` and a random suffix.
    pub async fn shared(prefix: &str, full: bool) -> Bed {
        let s3 = crate::shared::seaweed();
        let cp = if full {
            crate::shared::full_cluster()
        } else {
            crate::shared::control_plane()
        };
        Self::on(s3, cp, prefix).await
    }

    /// The binary's shared SeaweedFS and full cluster with held pods (see
    /// [`crate::k8s::Pods::Held`]), with a bucket and a namespace of the
    /// test's own.
    pub async fn shared_held(prefix: &str) -> Bed {
        Self::on(
            crate::shared::seaweed(),
            crate::shared::held_cluster(),
            prefix,
        )
        .await
    }

    async fn on(s3: &'static SeaweedFs, cp: &'static ControlPlane, prefix: &str) -> Bed {
        let bucket = super::bucket(s3).await;
        let kube = client(cp).await;
        let ns = namespace(&kube, prefix).await;
        Bed {
            s3: Server::Shared(s3),
            bucket,
            cp: Server::Shared(cp),
            kube,
            ns,
        }
    }

    /// A group on this bed's bucket, in this bed's cluster.
    pub fn group(&self, name: &str, ns: &str, limit: u32) {
        self.group_in(&self.cp, name, ns, limit, None, None);
    }

    /// A group on this bed's bucket, in this bed's cluster and namespace,
    /// with `spec` merged over its spec (see [`apply_group_with`]).
    pub fn group_with(&self, name: &str, limit: u32, spec: serde_json::Value) {
        apply_group_with(
            &self.cp,
            &GroupSpec {
                name,
                ns: &self.ns,
                limit,
                bucket: &self.bucket,
                endpoint: &self.s3.endpoint,
                key: None,
                secret: None,
            },
            spec,
        );
    }

    /// A group on this bed's bucket, in any cluster.
    pub fn group_in(
        &self,
        cp: &ControlPlane,
        name: &str,
        ns: &str,
        limit: u32,
        key: Option<&str>,
        secret: Option<&str>,
    ) {
        apply_group(
            cp,
            &GroupSpec {
                name,
                ns,
                limit,
                bucket: &self.bucket,
                endpoint: &self.s3.endpoint,
                key,
                secret,
            },
        );
    }

    pub async fn jobs(&self, ns: &str, group: &str, names: &[String]) {
        create_jobs(&self.kube, ns, group, names).await;
    }

    /// The ledger key of `group` in the bed's namespace when the group
    /// names none: `jobgate/<namespace>/<group>.json`.
    pub fn key(&self, group: &str) -> String {
        format!("jobgate/{}/{group}.json", self.ns)
    }

    /// Waits until the ledger at `key` has no holders left.
    pub async fn ledger_drains(&self, key: &str) {
        eventually(Duration::from_secs(20), "an empty ledger", || async {
            ledger_holders(&self.s3, &self.bucket, key)
                .await
                .filter(|h| h.is_empty())
        })
        .await;
    }
}

/// A namespace of the test's own on a shared control plane (which has the
/// CRD): `prefix` and a random suffix.
pub async fn namespace(kube: &Client, prefix: &str) -> String {
    let ns = format!("{prefix}-{:06x}", rand::random::<u32>() & 0xff_ffff);
    create_namespace(kube, &ns).await;
    ns
}

/// A control plane with the CRD installed and `ns` created.
pub async fn cluster(ns: &str, full: bool) -> (ControlPlane, Client) {
    let cp = if full {
        ControlPlane::start_full()
    } else {
        ControlPlane::start()
    };
    let kube = client(&cp).await;
    prepare(&cp, &kube, ns).await;
    (cp, kube)
}

/// Suspended Jobs of `group`, created in this order.
pub async fn create_jobs(kube: &Client, ns: &str, group: &str, names: &[String]) {
    for name in names {
        create_job(kube, ns, name, group, true).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(name: &str, suspended: bool, token: Option<u64>) -> Job {
        let mut annotations = serde_json::Map::new();
        if let Some(t) = token {
            annotations.insert("jobgate.dev/fencing-token".into(), json!(t.to_string()));
        }
        serde_json::from_value(json!({
            "metadata": {"name": name, "annotations": annotations},
            "spec": {"suspend": suspended, "template": {}},
        }))
        .unwrap()
    }

    #[test]
    fn jobs_unsuspended_together_are_ordered_by_their_tokens() {
        let log = AdmissionLog::default();
        for name in ["a", "b", "c"] {
            log.observe("x", &job(name, true, None));
        }
        // Seen in another order than granted.
        log.observe("x", &job("b", false, Some(11)));
        log.observe("x", &job("c", false, Some(12)));
        log.observe("x", &job("a", false, Some(10)));
        let names = |keys: Vec<Key>| keys.into_iter().map(|(_, n)| n).collect::<Vec<_>>();
        log.snapshot(|s| {
            assert_eq!(names(s.order.clone()), ["b", "c", "a"]);
            assert_eq!(names(s.by_token()), ["a", "b", "c"]);
        });
    }
}
