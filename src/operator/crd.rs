//! The `ConcurrencyGroup` custom resource (`jobgate.dev/v1alpha1`). The CRD
//! YAML in `crds/` is generated from these types by `jobgate crd`.

use kube::{CustomResource, CustomResourceExt, KubeSchema};

use super::allowlist::{Place, Scheme};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// At most `limit` Jobs labelled `jobgate.dev/group: <name>` run at once, in
/// every cluster that shares the ledger.
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "jobgate.dev",
    version = "v1alpha1",
    kind = "ConcurrencyGroup",
    plural = "concurrencygroups",
    shortname = "cg",
    namespaced,
    doc = "At most spec.limit Jobs labelled jobgate.dev/group=<name> run at once in this namespace, counted together with every other cluster whose group names the same ledger object (bucket and key). Jobs wait, suspended, until the shared ledger grants them a slot.",
    status = "ConcurrencyGroupStatus",
    validation = Rule::new("self.spec.leaseSeconds - self.spec.maxGracePeriodSeconds - 5 >= 2 && (self.spec.leaseSeconds - self.spec.maxGracePeriodSeconds - 5) * 5 >= self.spec.leaseSeconds").message("spec.leaseSeconds is too short for spec.maxGracePeriodSeconds: a cluster that cannot renew suspends its Jobs maxGracePeriodSeconds + 5 s before the lease ends, and at least a fifth of the lease (and 2 s) must be left to renew in. Raise leaseSeconds to at least (maxGracePeriodSeconds + 5) * 5 / 4, or lower maxGracePeriodSeconds").field_path(".spec.leaseSeconds"),
    printcolumn = r#"{"name":"LIMIT","type":"integer","jsonPath":".status.limit","description":"The limit in force: the shared ledger's"}"#,
    printcolumn = r#"{"name":"IN-USE","type":"integer","jsonPath":".status.inUse","description":"Slots in use in all clusters"}"#,
    printcolumn = r#"{"name":"HERE","type":"integer","jsonPath":".status.admittedHere","description":"Jobs admitted in this cluster"}"#,
    printcolumn = r#"{"name":"WAITING","type":"integer","jsonPath":".status.waitingHere","description":"Jobs waiting in this cluster"}"#,
    printcolumn = r#"{"name":"READY","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"SUSPENDED","type":"string","jsonPath":".status.conditions[?(@.type==\"Suspended\")].status","description":"Admits nothing new (spec.suspend, or being deleted)"}"#,
    printcolumn = r#"{"name":"READ","type":"date","jsonPath":".status.ledgerReadTime","description":"When IN-USE was read from the ledger: at most this long ago"}"#,
    printcolumn = r#"{"name":"AGE","type":"date","jsonPath":".metadata.creationTimestamp"}"#,
    printcolumn = r#"{"name":"SPEC-LIMIT","type":"integer","jsonPath":".spec.limit","priority":1,"description":"The limit this cluster's spec asks for"}"#,
    printcolumn = r#"{"name":"BUCKET","type":"string","jsonPath":".spec.ledger.bucket","priority":1}"#,
    printcolumn = r#"{"name":"KEY","type":"string","jsonPath":".status.ledgerKey","priority":1}"#,
    printcolumn = r#"{"name":"REASON","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].reason","priority":1}"#
)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencyGroupSpec {
    /// The most Jobs of this group that may run at once, in all clusters
    /// together (1 to 100000; a Job annotated jobgate.dev/slots: N counts N).
    /// A change is written to the shared ledger and applies in every
    /// cluster; lowering it stops nothing that runs (new Jobs wait until
    /// fewer than the new limit are in use). The limit in force is
    /// status.limit.
    #[schemars(range(min = 1, max = 100000))]
    pub limit: u32,
    /// Admit no new Jobs while true; admitted ones run on and free their
    /// slots as they end. Waiting Jobs keep their place. Default false.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub suspend: bool,
    /// Where the shared ledger object lives: every cluster whose group names
    /// the same bucket and key shares one limit. Bucket and key cannot be
    /// changed; to move a group, suspend it, let its Jobs end, and create a
    /// new one.
    pub ledger: LedgerSpec,
    /// How long, in seconds, a cluster that stops renewing keeps its slots
    /// before other clusters may take them (10 to 3600, default 60). Must
    /// leave a fifth of itself for renewing after maxGracePeriodSeconds
    /// plus 5 s.
    #[serde(default = "default_lease_seconds")]
    #[schemars(range(min = 10, max = 3600))]
    pub lease_seconds: u32,
    /// What to do with this cluster's admitted Jobs when the lease cannot be
    /// renewed. Suspend (default): suspend them before it could run out,
    /// which keeps the limit. Keep: let them run on, over the limit once
    /// other clusters take the slots.
    #[serde(default)]
    pub on_lease_loss: LeaseLossPolicy,
    /// The longest `terminationGracePeriodSeconds`, in seconds, a Job of this
    /// group may ask for (0 to 3600, default 30). A cluster that cannot renew
    /// its lease suspends its Jobs early enough for their pods to stop within
    /// the lease: at `leaseSeconds` minus this minus a 5 s margin. Jobs that
    /// ask for longer are not admitted.
    #[serde(default = "default_max_grace_period_seconds")]
    #[schemars(range(min = 0, max = 3600))]
    pub max_grace_period_seconds: u32,
    /// What happens to this cluster's running Jobs if its controller stops
    /// renewing (dead, hung, or its node lost) for longer than the lease.
    /// Reclaim (default): other clusters take the slots after the lease and these
    /// Jobs run on, over the limit, until they end. FailJobs: each admitted
    /// Job carries an activeDeadlineSeconds that the controller keeps
    /// extending, so the Job controller fails it (DeadlineExceeded) and
    /// stops its pods before the lease runs out.
    #[serde(default)]
    pub on_controller_loss: ControllerLossPolicy,
}

fn default_lease_seconds() -> u32 {
    60
}

fn default_max_grace_period_seconds() -> u32 {
    30
}

/// Time for the suspend patch and the Job controller to start deleting pods.
pub const STOP_MARGIN: std::time::Duration = std::time::Duration::from_secs(5);

/// Why a group's timing cannot keep the limit.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TimingError {
    #[error(
        "leaseSeconds {lease} leaves no time to renew: pods need maxGracePeriodSeconds {grace} plus a 5 s margin to stop, so the lease must be at least {min_lease} s; raise leaseSeconds or lower maxGracePeriodSeconds"
    )]
    NoRoomToStop {
        lease: u32,
        grace: u32,
        min_lease: u32,
    },
    #[error(
        "leaseSeconds {lease} is shorter than twice the controller's leader-election lease ({leader} s): a standby replica could not take over before other clusters take this cluster's slots; raise leaseSeconds to at least {min_lease}"
    )]
    ShorterThanTakeover {
        lease: u32,
        leader: u32,
        min_lease: u32,
    },
}

impl ConcurrencyGroupSpec {
    /// When this cluster treats its slots as lost after its last renewal:
    /// early enough for pods to stop within the lease. Checked so that at
    /// least a fifth of the lease (and 2 s) is left for renewing, and so
    /// that a standby replica (leader election with `leader_lease`) takes
    /// over well within the lease.
    pub fn fence_after(
        &self,
        leader_lease: Option<std::time::Duration>,
    ) -> Result<std::time::Duration, TimingError> {
        let lease = u64::from(self.lease_seconds);
        let grace = u64::from(self.max_grace_period_seconds);
        let margin = STOP_MARGIN.as_secs();
        let fence = lease.saturating_sub(grace + margin);
        if fence < 2 || fence * 5 < lease {
            // fence >= max(2, lease / 5): lease >= grace + margin + max(2, lease/5)
            let min_lease = ((grace + margin) * 5).div_ceil(4).max(grace + margin + 2);
            return Err(TimingError::NoRoomToStop {
                lease: self.lease_seconds,
                grace: self.max_grace_period_seconds,
                min_lease: min_lease as u32,
            });
        }
        if let Some(leader) = leader_lease {
            let leader = leader.as_secs().max(1);
            if lease < 2 * leader {
                return Err(TimingError::ShorterThanTakeover {
                    lease: self.lease_seconds,
                    leader: leader as u32,
                    min_lease: (2 * leader) as u32,
                });
            }
        }
        Ok(
            std::time::Duration::from_secs(fence)
                .min(std::time::Duration::from_millis(lease * 600)),
        )
    }
}

/// Suspend or Keep.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum LeaseLossPolicy {
    #[default]
    Suspend,
    Keep,
}

/// Reclaim or FailJobs.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ControllerLossPolicy {
    #[default]
    Reclaim,
    FailJobs,
}

#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.endpoint) || self.endpoint.startsWith('http://') || self.endpoint.startsWith('https://')").message("endpoint must be an http:// or https:// URL"))]
#[x_kube(validation = Rule::new("!has(self.key) || !self.key.matches('(^|/)[.][.](/|$)')").message("key must not have a '..' segment: S3 keys are not paths, so it would name a different object than it seems").field_path(".key"))]
#[x_kube(validation = Rule::new("self.bucket == oldSelf.bucket && has(self.key) == has(oldSelf.key) && (!has(self.key) || self.key == oldSelf.key)").message("bucket and key cannot change: the Jobs running under the old ledger would not be counted in the new one. To move a group, suspend it, let its Jobs end, delete it and create it anew"))]
#[x_kube(validation = Rule::new("(has(self.store) ? self.store : 'S3') == (has(oldSelf.store) ? oldSelf.store : 'S3') && has(self.account) == has(oldSelf.account) && (!has(self.account) || self.account == oldSelf.account)").message("store and account cannot change: the Jobs running under the old ledger would not be counted in the new one. To move a group, suspend it, let its Jobs end, delete it and create it anew"))]
#[x_kube(validation = Rule::new("has(self.store) && self.store == 'Azure' ? has(self.account) : !has(self.account)").message("account names the Azure storage account: set it with store: Azure, and only then"))]
#[x_kube(validation = Rule::new("!has(self.credentialsSecretRef) || !has(self.store) || self.store == 'S3'").message("credentialsSecretRef holds S3 keys: GCS and Azure ledgers are reached with the controller's own identity (GKE Workload Identity, AKS workload identity or managed identity)"))]
#[x_kube(validation = Rule::new("!self.bucket.contains('_') || (has(self.store) && self.store == 'GCS')").message("only GCS bucket names may hold '_'"))]
pub struct LedgerSpec {
    /// Which store holds the ledger: S3 (AWS S3 or an S3-compatible store,
    /// the default), GCS (Google Cloud Storage, through its JSON API) or
    /// Azure (Azure Blob Storage). Cannot be changed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub store: Option<StoreKind>,
    /// The Azure storage account (with store: Azure only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 3, max = 24), regex(pattern = r"^[a-z0-9]+$"))]
    pub account: Option<String>,
    /// The bucket (on Azure, the container): 3 to 63 lowercase letters,
    /// digits, dots and hyphens, and underscores on GCS. Bucket and key
    /// must be a location the controller allows (`--allowed-ledger`, the
    /// chart's allowedLedgers); by default any bucket, with a key under
    /// `jobgate/<namespace>/`. Cannot be changed.
    #[schemars(
        length(min = 3, max = 63),
        regex(pattern = r"^[a-z0-9][a-z0-9._\-]*[a-z0-9]$")
    )]
    pub bucket: String,
    /// The object key (1 to 1024 characters, no '..' segment). Default:
    /// `jobgate/<namespace>/<name>.json`. Cannot be changed, nor set or
    /// removed once the group exists.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 1024))]
    pub key: Option<String>,
    /// The bucket's AWS region, e.g. `eu-west-1`. Default: the controller's
    /// (AWS_REGION, or its AWS profile).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// The store's endpoint when it is not the cloud's own: an S3-compatible
    /// store (e.g. `https://s3.example.com`; default AWS S3, or the
    /// controller's AWS_ENDPOINT_URL), a GCS JSON API address (default
    /// Google's, or the controller's STORAGE_EMULATOR_HOST), or an Azure
    /// blob service URL (default `https://ACCOUNT.blob.core.windows.net`).
    /// It may change to another address of the same store; pointing it at
    /// another store moves the group, which is not supported.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Address the bucket as `<endpoint>/<bucket>` rather than
    /// `<bucket>.<endpoint>`, as most S3-compatible stores need. Default
    /// false.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub force_path_style: Option<bool>,
    /// A Secret in the group's own namespace (never another) with
    /// `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`, for S3 only.
    /// Default: the controller's own identity (IRSA or EKS Pod Identity;
    /// for GCS and Azure, always: GKE Workload Identity, AKS workload
    /// identity or managed identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub credentials_secret_ref: Option<SecretRef>,
}

/// Which kind of store a ledger is in.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum StoreKind {
    #[default]
    S3,
    #[serde(rename = "GCS")]
    Gcs,
    Azure,
}

impl LedgerSpec {
    /// Where the ledger lives, short of its key.
    pub fn place(&self) -> Place {
        match self.store.unwrap_or_default() {
            StoreKind::S3 => Place::s3(&self.bucket),
            StoreKind::Gcs => Place {
                scheme: Scheme::Gcs,
                names: vec![self.bucket.clone()],
            },
            StoreKind::Azure => Place {
                scheme: Scheme::Azure,
                names: vec![
                    self.account.clone().unwrap_or_default(),
                    self.bucket.clone(),
                ],
            },
        }
    }
}

/// A Secret in the group's namespace.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
pub struct SecretRef {
    /// The Secret's name.
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// This cluster's view of the group, written by its controller: the
/// ledger's counts as last read, this cluster's Jobs, and conditions.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ConcurrencyGroupStatus {
    /// The limit in force: the ledger's, which every cluster sharing it
    /// applies (spec.limit is this cluster's request to change it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit: Option<u32>,
    /// The spec.limit this cluster last wrote to the ledger or accepted from
    /// it; a different spec.limit is a change to write.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec_limit_applied: Option<u32>,
    /// Slots in use in all clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub in_use: Option<u32>,
    /// When the ledger was read for the counts above: at most this long
    /// ago (renewed at least every 30 seconds while the ledger is read).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_read_time: Option<String>,
    /// Jobs of this group admitted in this cluster and not finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub admitted_here: Option<u32>,
    /// Jobs of this group waiting for a slot in this cluster.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub waiting_here: Option<u32>,
    /// The ledger object in use.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ledger_key: Option<String>,
    /// The metadata.generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Ready (the ledger is usable), LimitAgreed (spec.limit matches the
    /// ledger's), JobsFit (every Job's pods can stop within the fence),
    /// Suspended (admits nothing new).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<GroupCondition>,
}

/// A status condition, shaped like `metav1.Condition` (same fields, limits
/// and formats), so that generic tooling (kubectl wait --for=condition,
/// kstatus) reads it.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct GroupCondition {
    /// The condition's type, in CamelCase: Ready, LimitAgreed, JobsFit,
    /// Suspended.
    #[serde(rename = "type")]
    #[schemars(
        length(min = 1, max = 316),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        )
    )]
    pub type_: String,
    /// True, False or Unknown.
    #[schemars(extend("enum" = ["True", "False", "Unknown"]))]
    pub status: String,
    /// Why, in one CamelCase word (e.g. CredentialsRejected).
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    pub reason: String,
    /// What it means for the group and what to do, for people.
    #[schemars(length(max = 32768))]
    pub message: String,
    /// When the status last changed (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,
    /// The metadata.generation the condition was set from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,
}

/// The label that puts a Job in a group.
pub const GROUP_LABEL: &str = "jobgate.dev/group";
/// Optional integer annotation; higher is admitted first.
pub const PRIORITY_ANNOTATION: &str = "jobgate.dev/priority";
pub const ADMITTED_AT_ANNOTATION: &str = "jobgate.dev/admitted-at";
/// Optional integer annotation (default 1): how many units of the group's
/// limit the Job takes, for Jobs whose parallelism or cost differs.
pub const SLOTS_ANNOTATION: &str = "jobgate.dev/slots";
pub const TOKEN_ANNOTATION: &str = "jobgate.dev/fencing-token";
/// Kueue's label: a Job that carries it is Kueue's to suspend and resume,
/// and two controllers toggling `spec.suspend` would fight; jobgate leaves
/// such a Job alone and says so.
pub const KUEUE_QUEUE_LABEL: &str = "kueue.x-k8s.io/queue-name";
/// Held by every group while this cluster may hold slots for it: a deleted
/// group gives its slots back before it goes.
pub const FINALIZER: &str = "jobgate.dev/release-slots";
/// On a group being deleted: drop the finalizer without waiting for the
/// ledger (for a ledger that cannot be reached any more). Slots still held
/// then run out with the lease at the other agents.
pub const ABANDON_ANNOTATION: &str = "jobgate.dev/abandon-slots";

impl ConcurrencyGroup {
    /// The ledger key: `spec.ledger.key`, else `jobgate/<namespace>/<name>.json`.
    pub fn ledger_key(&self) -> String {
        if let Some(key) = &self.spec.ledger.key {
            return key.clone();
        }
        let ns = self.metadata.namespace.as_deref().unwrap_or("default");
        let name = self.metadata.name.as_deref().unwrap_or("unnamed");
        format!("jobgate/{ns}/{name}.json")
    }
}

/// The CRD as YAML, as checked in under `crds/`.
pub fn crd_yaml() -> Result<String, serde_yaml::Error> {
    serde_yaml::to_string(&ConcurrencyGroup::crd())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn timing(lease: u32, grace: u32) -> ConcurrencyGroupSpec {
        ConcurrencyGroupSpec {
            limit: 1,
            ledger: LedgerSpec::default(),
            lease_seconds: lease,
            on_lease_loss: LeaseLossPolicy::Suspend,
            max_grace_period_seconds: grace,
            on_controller_loss: ControllerLossPolicy::Reclaim,
            suspend: false,
        }
    }

    #[test]
    fn the_fence_leaves_room_for_pods_to_stop_within_the_lease() {
        // Defaults: 60 s lease, 30 s grace, 5 s margin: fence at 25 s.
        assert_eq!(
            timing(60, 30).fence_after(None),
            Ok(Duration::from_secs(25))
        );
        // Never later than 60% of the lease.
        assert_eq!(timing(60, 0).fence_after(None), Ok(Duration::from_secs(36)));
        assert_eq!(timing(10, 0).fence_after(None), Ok(Duration::from_secs(5)));
        // 30 s grace does not fit a 40 s lease with a fifth of it to renew.
        assert_eq!(
            timing(40, 30).fence_after(None),
            Err(TimingError::NoRoomToStop {
                lease: 40,
                grace: 30,
                min_lease: 44
            })
        );
        assert!(timing(44, 30).fence_after(None).is_ok());
        assert!(
            timing(10, 4).fence_after(None).is_err(),
            "1 s left to renew"
        );
    }

    #[test]
    fn the_lease_must_outlast_a_leader_takeover() {
        let leader = Some(Duration::from_secs(15));
        assert_eq!(
            timing(20, 0).fence_after(leader),
            Err(TimingError::ShorterThanTakeover {
                lease: 20,
                leader: 15,
                min_lease: 30
            })
        );
        assert!(timing(60, 30).fence_after(leader).is_ok());
        assert!(
            timing(20, 0).fence_after(None).is_ok(),
            "no leader election"
        );
    }

    #[test]
    fn checked_in_crd_is_current() {
        let generated = crd_yaml().unwrap();
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/concurrencygroup.yaml");
        let checked_in = std::fs::read_to_string(path).unwrap_or_default();
        assert!(
            generated == checked_in,
            "crds/concurrencygroup.yaml is out of date: run `cargo run -- crd > crds/concurrencygroup.yaml`"
        );
    }

    #[test]
    fn schema_has_the_validations() {
        let yaml = crd_yaml().unwrap();
        assert!(yaml.contains("minimum: 1"), "{yaml}");
        assert!(yaml.contains("x-kubernetes-validations"), "{yaml}");
        assert!(yaml.contains("- cg"), "{yaml}");
        for required in ["- limit", "- ledger", "- bucket"] {
            assert!(yaml.contains(required), "missing {required}");
        }
    }

    /// `kubectl explain cg --recursive` has something to say of every field,
    /// and nothing of kube-rs's own.
    #[test]
    fn every_field_has_a_description() {
        fn walk(path: &str, node: &serde_json::Value, missing: &mut Vec<String>) {
            let described = node["description"]
                .as_str()
                .is_some_and(|d| !d.trim().is_empty() && !d.contains("Auto-generated"));
            if !described {
                missing.push(path.to_string());
            }
            if let Some(props) = node["properties"].as_object() {
                for (name, child) in props {
                    // Kubernetes describes these itself.
                    if path.is_empty()
                        && ["apiVersion", "kind", "metadata"].contains(&name.as_str())
                    {
                        continue;
                    }
                    walk(&format!("{path}.{name}"), child, missing);
                }
            }
            if node["items"].is_object() {
                walk(&format!("{path}[]"), &node["items"], missing);
            }
        }
        let crd = serde_json::to_value(ConcurrencyGroup::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let mut missing = Vec::new();
        walk("", schema, &mut missing);
        assert!(
            missing.is_empty(),
            "fields without a description: {missing:?}"
        );
    }

    #[test]
    fn conditions_are_a_list_map_shaped_like_metav1_condition() {
        let crd = serde_json::to_value(ConcurrencyGroup::crd()).unwrap();
        let schema = &crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"];
        let conditions = &schema["properties"]["status"]["properties"]["conditions"];
        assert_eq!(conditions["x-kubernetes-list-type"], "map");
        assert_eq!(
            conditions["x-kubernetes-list-map-keys"],
            serde_json::json!(["type"])
        );
        let item = &conditions["items"]["properties"];
        assert_eq!(
            item["status"]["enum"],
            serde_json::json!(["True", "False", "Unknown"])
        );
        assert_eq!(item["type"]["maxLength"], 316);
        assert_eq!(item["reason"]["maxLength"], 1024);
        assert_eq!(item["message"]["maxLength"], 32768);
        assert_eq!(item["lastTransitionTime"]["format"], "date-time");
        let required = &conditions["items"]["required"];
        for field in ["type", "status", "reason", "message", "lastTransitionTime"] {
            assert!(
                required
                    .as_array()
                    .unwrap()
                    .contains(&serde_json::json!(field)),
                "{field} not required: {required}"
            );
        }
    }

    #[test]
    fn default_key_is_derived_from_namespace_and_name() {
        let mut g = ConcurrencyGroup::new(
            "etl",
            ConcurrencyGroupSpec {
                limit: 3,
                ledger: LedgerSpec {
                    bucket: "b".into(),
                    ..Default::default()
                },
                lease_seconds: 60,
                on_lease_loss: LeaseLossPolicy::Suspend,
                max_grace_period_seconds: 30,
                on_controller_loss: ControllerLossPolicy::Reclaim,
                suspend: false,
            },
        );
        g.metadata.namespace = Some("batch".into());
        assert_eq!(g.ledger_key(), "jobgate/batch/etl.json");
    }
}
