//! The Kubernetes half of `jobgate status GROUP`: reads the group, the
//! credentials Secret it names, its Jobs in the namespace, and its ledger
//! the way the controller does. What is shown, and what counts as a
//! discrepancy, is decided purely in `operator::inspect`.

use std::path::PathBuf;
use std::time::Duration;

use clap::Args;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, ListParams};
use tracing::debug;

use super::StoreArgs;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::operator::crd::StoreKind;
use crate::operator::crd::{ConcurrencyGroup, GROUP_LABEL};
use crate::operator::inspect::{AgentHint, ClusterView, cluster_view};
use crate::operator::ledgers::{Reach, credentials_from_secret, open_store};
use crate::semaphore::read_ledger;
use crate::store::DynStore;

/// Where the group is. Only with GROUP.
#[derive(Debug, Args, Clone)]
pub struct KubeArgs {
    /// Path to a kubeconfig (default: KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account).
    #[arg(long, value_name = "PATH", requires = "group")]
    kubeconfig: Option<PathBuf>,
    /// The kubeconfig context to use (default: its current context).
    #[arg(long, value_name = "NAME", requires = "group")]
    context: Option<String>,
    /// The group's namespace (default: the context's, else `default`).
    #[arg(short = 'n', long, value_name = "NS", requires = "group")]
    namespace: Option<String>,
    /// The controller's --cluster-name, to find this cluster's holders in
    /// the ledger. Default: the agent that holds this namespace's Jobs,
    /// else the kube-system namespace UID (the controller's default).
    #[arg(long, value_name = "NAME", requires = "group")]
    cluster_name: Option<String>,
}

/// What `jobgate status GROUP` shows.
pub struct GroupStatus {
    /// `s3://BUCKET/KEY`.
    pub url: String,
    /// The ledger, or why it could not be read (one sentence).
    pub ledger: std::result::Result<Ledger, String>,
    pub view: ClusterView,
}

/// Reads everything `jobgate status GROUP` shows. Kubernetes failures are
/// errors; a ledger that cannot be read is reported next to the cluster's
/// view, which is what helps then.
pub async fn read(kube: &KubeArgs, store: &StoreArgs, name: &str) -> Result<GroupStatus> {
    let (client, default_ns) =
        super::kube::client(kube.kubeconfig.as_deref(), kube.context.as_deref()).await?;
    let ns = kube.namespace.clone().unwrap_or(default_ns);
    let groups: Api<ConcurrencyGroup> = Api::namespaced(client.clone(), &ns);
    let group = groups
        .get(name)
        .await
        .map_err(|e| group_error(e, name, &ns))?;
    let jobs: Api<Job> = Api::namespaced(client.clone(), &ns);
    let selector = ListParams::default().labels(&format!("{GROUP_LABEL}={name}"));
    let jobs = jobs
        .list(&selector)
        .await
        .map_err(|e| {
            Error::InvalidArgument(kube_error(
                &e,
                &format!("list the Jobs of group {name} in namespace {ns}"),
                "list on jobs.batch",
            ))
        })?
        .items;
    let hint = match &kube.cluster_name {
        Some(cluster) => AgentHint::ClusterName(cluster.clone()),
        None => kube_system_uid(&client).await,
    };
    let url = format!("{}/{}", group.spec.ledger.place(), group.ledger_key());
    let ledger = match read_group_ledger(&client, &group, &ns, store).await {
        Ok(Some(ledger)) => Ok(ledger),
        Ok(None) => Err(format!(
            "ledger {url} does not exist yet: the controller creates it when it first reconciles the group"
        )),
        Err(e) => Err(e.to_string()),
    };
    let view = cluster_view(&group, &jobs, ledger.as_ref().ok(), &hint);
    Ok(GroupStatus { url, ledger, view })
}

/// The default cluster name, when this identity may read it; without it
/// this cluster's agent is found from its holders, or not at all.
async fn kube_system_uid(client: &kube::Client) -> AgentHint {
    let api: Api<Namespace> = Api::all(client.clone());
    match api.get("kube-system").await {
        Ok(ns) => ns
            .metadata
            .uid
            .map_or(AgentHint::Unknown, AgentHint::KubeSystemUid),
        Err(e) => {
            debug!(error = %e, "cannot read namespace kube-system for the default cluster name");
            AgentHint::Unknown
        }
    }
}

/// The group's ledger, read with the group's Secret's credentials (same
/// namespace only, like the controller) or else the environment's. The
/// command line's --endpoint-url, --region and --path-style override the
/// group's, for a store this machine reaches another way (a port-forward).
async fn read_group_ledger(
    client: &kube::Client,
    group: &ConcurrencyGroup,
    ns: &str,
    store: &StoreArgs,
) -> Result<Option<Ledger>> {
    let spec = &group.spec.ledger;
    let creds = match &spec.credentials_secret_ref {
        Some(secret) => {
            let api: Api<Secret> = Api::namespaced(client.clone(), ns);
            let found = api.get(&secret.name).await.map_err(|e| {
                Error::InvalidArgument(kube_error(
                    &e,
                    &format!(
                        "read Secret {} in namespace {ns}, which the group names for its S3 credentials",
                        secret.name
                    ),
                    "get on that Secret",
                ))
            })?;
            Some(
                credentials_from_secret(&secret.name, found)
                    .map_err(|e| Error::InvalidArgument(format!("{e} in namespace {ns}")))?,
            )
        }
        None => None,
    };
    let reach = Reach {
        endpoint: store.endpoint.clone(),
        region: store.region.clone(),
        path_style: store.path_style,
        // A status is asked for by someone waiting for it.
        connect_timeout: Some(Duration::from_secs(5)),
        request_timeout: Some(Duration::from_secs(15)),
    };
    if spec.store.unwrap_or_default() == StoreKind::S3 {
        crate::store::s3::ca::from_env().map_err(Error::Io)?;
    }
    let s3: DynStore = open_store(spec, creds.as_ref(), &reach).await?;
    Ok(read_ledger(&s3, &group.ledger_key()).await?.map(|(l, _)| l))
}

fn group_error(e: kube::Error, name: &str, ns: &str) -> Error {
    let message = match &e {
        kube::Error::Api(s) if s.code == 404 && s.details.as_ref().is_some_and(|d| !d.name.is_empty()) => {
            format!(
                "ConcurrencyGroup {name} not found in namespace {ns}; list the groups there with `kubectl get cg -n {ns}`"
            )
        }
        kube::Error::Api(s) if s.code == 404 => {
            "this cluster has no ConcurrencyGroup resource (jobgate.dev/v1alpha1); install the CRD with `kubectl apply -f crds/` or the Helm chart".to_string()
        }
        _ => kube_error(
            &e,
            &format!("get ConcurrencyGroup {name} in namespace {ns}"),
            "get on concurrencygroups.jobgate.dev",
        ),
    };
    Error::InvalidArgument(message)
}

/// One sentence for a failed request: `action` ("list the Jobs ..."), and
/// the permission to ask for when it was refused.
fn kube_error(e: &kube::Error, action: &str, permission: &str) -> String {
    match e {
        kube::Error::Api(s) if s.code == 403 => {
            format!(
                "not allowed to {action} ({}); ask for {permission}",
                s.message
            )
        }
        kube::Error::Api(s) if s.code == 401 => format!(
            "the API server refused this kubeconfig's credentials ({}); log in again or pass another --kubeconfig or --context",
            s.message
        ),
        kube::Error::Api(s) => format!("cannot {action}: {}", s.message),
        other => format!(
            "cannot {action}: the API server did not answer ({other}); check --kubeconfig and --context"
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use kube::core::Status;
    use kube::core::response::StatusDetails;

    fn api(code: u16, message: &str, name: Option<&str>) -> kube::Error {
        let mut s = Status::failure(message, "");
        s.code = code;
        s.details = name.map(|n| {
            serde_json::from_value::<StatusDetails>(serde_json::json!({"name": n})).unwrap()
        });
        kube::Error::Api(Box::new(s))
    }

    #[test]
    fn each_failure_is_one_sentence_with_its_fix() {
        let missing = group_error(api(404, "not found", Some("etl")), "etl", "batch").to_string();
        assert_eq!(
            missing,
            "ConcurrencyGroup etl not found in namespace batch; list the groups there with `kubectl get cg -n batch`"
        );
        let no_crd = group_error(
            api(
                404,
                "the server could not find the requested resource",
                None,
            ),
            "etl",
            "batch",
        )
        .to_string();
        assert!(no_crd.contains("kubectl apply -f crds/"), "{no_crd}");
        let forbidden = group_error(
            api(403, "forbidden: User \"x\" cannot get", None),
            "etl",
            "batch",
        )
        .to_string();
        assert!(
            forbidden.starts_with("not allowed to get ConcurrencyGroup etl in namespace batch")
                && forbidden.ends_with("ask for get on concurrencygroups.jobgate.dev"),
            "{forbidden}"
        );
        for e in [missing, no_crd, forbidden] {
            assert!(!e.contains('\n'), "{e}");
        }
    }
}
