//! One semaphore client per ConcurrencyGroup, built from the group's ledger
//! spec (and credentials Secret) and rebuilt when those change.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use bytes::Bytes;
use k8s_openapi::api::core::v1::Secret;
use tracing::info;

use crate::semaphore::{Config, Permit, Semaphore};
use crate::store::{
    AzureOptions, AzureStore, Condition, DynStore, ETag, Fetched, GcsOptions, GcsStore, S3Options,
    S3Store, Store, StoreError,
};

use super::crd::{ConcurrencyGroup, LedgerSpec, StoreKind};
use super::effects::Told;
use super::metrics::Metrics;

/// Static credentials read from the group's Secret.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    /// The Secret's resourceVersion: a new one rebuilds the client.
    pub version: String,
}

/// The semaphore client of one group, with what the controller remembers
/// about it between reconciliations.
pub struct GroupLedger {
    pub sem: Semaphore,
    pub key: String,
    /// This cluster's agent id for this group in the ledger.
    pub agent: String,
    fingerprint: String,
    /// What the controller remembers between passes, behind one lock: a
    /// pass takes it for a statement at a time and never holds it across
    /// an await.
    pub state: Mutex<Remembered>,
}

/// What the controller remembers of a group between passes.
#[derive(Default)]
pub struct Remembered {
    /// Slots this process holds, by Job UID; watched for loss.
    pub permits: BTreeMap<String, Permit>,
    /// What the group's Jobs have been told already (see `effects::tell_once`).
    pub told: Told,
    /// Semaphore counters already exported to metrics.
    pub exported: (u64, u64),
    /// The spec.limit this process wrote or accepted last (see
    /// `limits::plan`); ahead of the status, whose update may fail.
    pub limit_applied: Option<u32>,
    /// Every (pod label, value) seen for each held workload of another
    /// kind whose pods carry its name or a field's value, by UID: once it
    /// is deleted (or names a new cluster) these can no longer be read, and
    /// its slot is freed only when all those pods are gone.
    pub pod_keys: BTreeMap<String, BTreeSet<(String, String)>>,
}

impl GroupLedger {
    /// The Job UIDs this process holds a permit for, and those of them whose
    /// lease could not be renewed in time.
    pub fn permits(&self) -> (BTreeSet<String>, BTreeSet<String>) {
        let state = lock(&self.state);
        let permits = &state.permits;
        let lost = permits
            .iter()
            .filter(|(_, p)| p.is_lost())
            .map(|(uid, _)| uid.clone())
            .collect();
        (permits.keys().cloned().collect(), lost)
    }
}

/// The static credentials in a group's credentials Secret (`name`): its
/// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`. Shared with `jobgate
/// status`, which must read the ledger the way the controller does.
pub fn credentials_from_secret(name: &str, secret: Secret) -> super::error::Result<Credentials> {
    let data = secret.data.unwrap_or_default();
    let field = |key: &'static str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| super::error::Error::CredentialsIncomplete {
                name: name.to_string(),
                key,
            })
    };
    Ok(Credentials {
        access_key_id: field("AWS_ACCESS_KEY_ID")?,
        secret_access_key: field("AWS_SECRET_ACCESS_KEY")?,
        version: secret.metadata.resource_version.unwrap_or_default(),
    })
}

/// Locks a mutex, recovering the data if a panicking thread poisoned it: the
/// maps here stay consistent between statements.
pub fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

type GroupId = (String, String);

/// Opens the store that holds a group's ledger: the seam between the
/// controller and where ledgers live, so that a pass can run over a store
/// in memory. Whatever it opens is still timed, and probed for
/// conditional writes before the first one ([`Ledgers::get`]).
#[async_trait]
pub trait OpenStore: Send + Sync {
    async fn open(
        &self,
        group: &ConcurrencyGroup,
        creds: Option<&Credentials>,
    ) -> Result<DynStore, StoreError>;
}

/// The controller's stores: S3 (or an S3-compatible store), GCS or Azure,
/// as the group's ledger spec names.
pub struct CloudStores;

#[async_trait]
impl OpenStore for CloudStores {
    async fn open(
        &self,
        group: &ConcurrencyGroup,
        creds: Option<&Credentials>,
    ) -> Result<DynStore, StoreError> {
        open_store(&group.spec.ledger, creds, &Reach::default()).await
    }
}

/// How to reach a ledger's store beyond its spec: what `jobgate status`
/// takes from its command line (each field overrides the spec's).
#[derive(Debug, Clone, Default)]
pub struct Reach {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub path_style: Option<bool>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

/// The store a ledger spec names; shared with `jobgate status`, which must
/// read the ledger the way the controller does.
pub async fn open_store(
    spec: &LedgerSpec,
    creds: Option<&Credentials>,
    reach: &Reach,
) -> Result<DynStore, StoreError> {
    let endpoint = reach.endpoint.clone().or_else(|| spec.endpoint.clone());
    Ok(match spec.store.unwrap_or_default() {
        StoreKind::S3 => {
            let opts = S3Options {
                endpoint,
                region: reach.region.clone().or_else(|| spec.region.clone()),
                force_path_style: reach.path_style.or(spec.force_path_style),
                access_key_id: creds.map(|c| c.access_key_id.clone()),
                secret_access_key: creds.map(|c| c.secret_access_key.clone()),
                connect_timeout: reach.connect_timeout,
                request_timeout: reach.request_timeout,
            };
            Arc::new(S3Store::connect(&spec.bucket, &opts).await)
        }
        StoreKind::Gcs => {
            let opts = GcsOptions {
                endpoint,
                connect_timeout: reach.connect_timeout,
                request_timeout: reach.request_timeout,
            };
            Arc::new(GcsStore::connect(&spec.bucket, &opts)?)
        }
        StoreKind::Azure => {
            let opts = AzureOptions {
                endpoint,
                access_key: None,
                connect_timeout: reach.connect_timeout,
                request_timeout: reach.request_timeout,
            };
            let account = spec.account.as_deref().unwrap_or_default();
            Arc::new(AzureStore::connect(account, &spec.bucket, &opts)?)
        }
    })
}

pub struct Ledgers {
    /// Where the groups' ledgers are opened.
    stores: Arc<dyn OpenStore>,
    groups: tokio::sync::Mutex<HashMap<GroupId, Arc<GroupLedger>>>,
    /// Clients replaced by a rebuild, kept (and so renewing) until the
    /// client that replaced them holds every slot they held. The pass that
    /// rebuilds a client takes its slots up again, but it may not get that
    /// far (this replica loses its leader Lease meanwhile, and passes stop
    /// while the slots' Jobs still run): renewals must not wait for it.
    retired: Mutex<Vec<(GroupId, Arc<GroupLedger>)>>,
}

/// Whether a replaced client must go on renewing: of the slots it `held`,
/// one is not `lost` and not yet `taken_up` by the client now in use.
pub fn still_renews(
    held: &BTreeSet<String>,
    lost: &BTreeSet<String>,
    taken_up: &BTreeSet<String>,
) -> bool {
    held.iter()
        .any(|uid| !lost.contains(uid) && !taken_up.contains(uid))
}

pub struct LedgerSettings {
    pub cluster: String,
    /// The UID of this cluster's `kube-system` namespace, written with this
    /// cluster's agent entries: another cluster given the same name finds
    /// it and writes nothing. `None` when it cannot be read.
    pub cluster_uid: Option<String>,
    pub poll: Duration,
    /// The leader-election lease, when replicas take over from each other:
    /// a group's lease must leave time for that.
    pub leader_lease: Option<Duration>,
}

impl Default for Ledgers {
    /// Ledgers in the stores the groups' specs name.
    fn default() -> Self {
        Ledgers::with_stores(Arc::new(CloudStores))
    }
}

impl Ledgers {
    /// Ledgers in the stores `stores` opens.
    pub fn with_stores(stores: Arc<dyn OpenStore>) -> Self {
        Ledgers {
            stores,
            groups: Default::default(),
            retired: Default::default(),
        }
    }

    /// The client for `group`, built on first use and whenever its ledger
    /// settings or credentials change.
    pub async fn get(
        &self,
        group: &ConcurrencyGroup,
        creds: Option<Credentials>,
        settings: &LedgerSettings,
        metrics: &Arc<Metrics>,
    ) -> crate::Result<Arc<GroupLedger>> {
        let ns = group.metadata.namespace.clone().unwrap_or_default();
        let name = group.metadata.name.clone().unwrap_or_default();
        let key = group.ledger_key();
        let spec = &group.spec;
        // Checked by the reconciler before it asks for a client.
        let fence_after = spec.fence_after(settings.leader_lease).ok();
        let fingerprint = format!(
            "{}|{key}|{:?}|{:?}|{:?}|{}|{:?}|{:?}",
            spec.ledger.place(),
            spec.ledger.region,
            spec.ledger.endpoint,
            spec.ledger.force_path_style,
            spec.lease_seconds,
            fence_after,
            creds.as_ref().map(|c| &c.version),
        );
        let id = (ns.clone(), name.clone());
        self.drop_retired().await;
        if let Some(existing) = self.groups.lock().await.get(&id)
            && existing.fingerprint == fingerprint
        {
            return Ok(existing.clone());
        }
        // Built without holding the lock: connecting and probing a store
        // that does not answer must not hold up the other groups.
        let store: DynStore = Arc::new(TimedStore {
            inner: self
                .stores
                .open(group, creds.as_ref())
                .await
                .map_err(crate::Error::from)?,
            metrics: metrics.clone(),
        });
        // Refuse a store that would not enforce the limit, before any write.
        crate::doctor::ensure_conditional_writes(&store, &key).await?;
        let agent = format!("{}/{ns}/{name}", settings.cluster);
        let mut cfg = Config::new(agent.clone());
        cfg.description = Some(format!(
            "jobgate controller, cluster {}, group {ns}/{name}",
            settings.cluster
        ));
        cfg.lease = Duration::from_secs(u64::from(spec.lease_seconds));
        // Early enough for the pods of suspended Jobs to stop within the lease.
        cfg.fence_after = fence_after;
        cfg.limit = Some(spec.limit);
        cfg.poll = settings.poll;
        // Slots outlive this process: a restarted controller takes them up
        // again, so holders it does not know yet are not orphans.
        cfg.release_orphans = false;
        // A cluster holds many slots; without recorded waits one cluster
        // could keep every slot while another's Jobs wait.
        cfg.record_wait = true;
        cfg.instance = settings
            .cluster_uid
            .as_ref()
            .map(|uid| format!("cluster {uid}"));
        info!(group = %format!("{ns}/{name}"), %key, %agent, "opened ledger");
        let ledger = Arc::new(GroupLedger {
            sem: Semaphore::new(store, key.clone(), cfg),
            key,
            agent,
            fingerprint,
            state: Mutex::new(Remembered::default()),
        });
        // Reconciliations of one group never overlap, so nobody else built
        // a client for it meanwhile.
        if let Some(replaced) = self.groups.lock().await.insert(id.clone(), ledger.clone()) {
            info!(group = %format!("{ns}/{name}"), "rebuilt the ledger client; the old one renews its slots until the new one holds them");
            lock(&self.retired).push((id, replaced));
        }
        Ok(ledger)
    }

    /// Lets go of replaced clients whose slots the current ones hold (a
    /// replaced client stops once the last reconciliation using it ends).
    async fn drop_retired(&self) {
        let groups = self.groups.lock().await;
        lock(&self.retired).retain(|(id, old)| {
            let (held, lost) = old.permits();
            let taken_up = groups.get(id).map(|g| g.permits().0).unwrap_or_default();
            still_renews(&held, &lost, &taken_up)
        });
    }

    /// Forgets every group not in `existing` (deleted while nobody
    /// reconciled it); see `forget`.
    pub async fn retain(&self, existing: &std::collections::HashSet<(String, String)>) {
        self.groups
            .lock()
            .await
            .retain(|group, _| existing.contains(group));
        lock(&self.retired).retain(|(group, _)| existing.contains(group));
    }

    /// The client this process uses for a group now, whatever its settings:
    /// its permits say which Jobs this process can vouch for even when the
    /// group's credentials or ledger cannot be read.
    pub async fn current(&self, ns: &str, name: &str) -> Option<Arc<GroupLedger>> {
        self.groups
            .lock()
            .await
            .get(&(ns.to_string(), name.to_string()))
            .cloned()
    }

    /// Every group's client in use now.
    pub async fn all(&self) -> Vec<(GroupId, Arc<GroupLedger>)> {
        let groups = self.groups.lock().await;
        groups
            .iter()
            .map(|(id, gl)| (id.clone(), gl.clone()))
            .collect()
    }

    /// Forgets a deleted group. Its slots are not released here: Jobs of a
    /// deleted group may still run, and its lease runs out at the others.
    pub async fn forget(&self, ns: &str, name: &str) {
        let id = (ns.to_string(), name.to_string());
        self.groups.lock().await.remove(&id);
        lock(&self.retired).retain(|(g, _)| *g != id);
    }

    /// Stops every client without releasing: running Jobs keep their slots
    /// for the successor (same agent id) to take up.
    pub async fn shutdown(&self) {
        let mut all: Vec<_> = self.groups.lock().await.drain().collect();
        all.extend(lock(&self.retired).drain(..));
        for (_, ledger) in all {
            if let Ok(ledger) = Arc::try_unwrap(ledger) {
                ledger.sem.shutdown().await;
            }
        }
    }
}

/// Times every store request for the `s3_request_duration_seconds` histogram
/// and counts its outcome in `s3_requests_total`.
struct TimedStore {
    inner: DynStore,
    metrics: Arc<Metrics>,
}

impl std::fmt::Debug for TimedStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.inner.fmt(f)
    }
}

#[async_trait]
impl Store for TimedStore {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        let start = Instant::now();
        let out = self.inner.get(key, if_none_match).await;
        self.metrics.observe_s3("get", start.elapsed());
        let found = out.as_ref().map(|f| match f {
            Fetched::Found(_) => "ok",
            Fetched::NotModified => "not_modified",
            Fetched::Missing => "missing",
        });
        self.metrics.count_s3("get", outcome(found));
        out
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        let start = Instant::now();
        let out = self.inner.put(key, body, condition).await;
        self.metrics.observe_s3("put", start.elapsed());
        self.metrics
            .count_s3("put", outcome(out.as_ref().map(|_| "ok")));
        out
    }

    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        let start = Instant::now();
        let out = self.inner.delete(key, etag).await;
        self.metrics.observe_s3("delete", start.elapsed());
        self.metrics
            .count_s3("delete", outcome(out.as_ref().map(|_| "ok")));
        out
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}

/// A store request's outcome as a metric label: what succeeded, or which
/// kind of failure (a lost race, maybe applied, certainly not sent, refused).
fn outcome(result: Result<&'static str, &StoreError>) -> &'static str {
    match result {
        Ok(ok) => ok,
        Err(StoreError::Conflict(_)) => "conflict",
        Err(StoreError::Missing) => "missing",
        Err(StoreError::Ambiguous(_)) => "ambiguous",
        Err(StoreError::Unavailable(_)) => "unavailable",
        Err(StoreError::AccessDenied(_)) => "denied",
        Err(StoreError::NoSuchBucket(_)) => "no_bucket",
        Err(StoreError::Unsupported(_)) => "unsupported",
        Err(StoreError::Other(_)) => "error",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_store_outcome_has_its_own_label() {
        let errors = [
            StoreError::Conflict("412".into()),
            StoreError::Missing,
            StoreError::Ambiguous("timeout".into()),
            StoreError::Unavailable("refused".into()),
            StoreError::AccessDenied("403".into()),
            StoreError::NoSuchBucket("b".into()),
            StoreError::Unsupported("no If-Match".into()),
            StoreError::Other("?".into()),
        ];
        let labels: BTreeSet<&str> = errors.iter().map(|e| outcome(Err(e))).collect();
        assert_eq!(labels.len(), errors.len(), "{labels:?}");
        assert!(!labels.contains("ok"));
        assert_eq!(outcome(Ok("not_modified")), "not_modified");
    }

    fn set(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn a_replaced_client_renews_until_every_slot_it_holds_is_taken_up_or_lost() {
        let held = set(&["a", "b"]);
        // Nothing taken up yet (the rebuilding pass stopped early).
        assert!(still_renews(&held, &set(&[]), &set(&[])));
        assert!(still_renews(&held, &set(&[]), &set(&["a"])));
        // All taken up, or the rest lost: let go.
        assert!(!still_renews(&held, &set(&[]), &set(&["a", "b"])));
        assert!(!still_renews(&held, &set(&["b"]), &set(&["a"])));
        // Held nothing.
        assert!(!still_renews(&set(&[]), &set(&[]), &set(&[])));
    }
}
