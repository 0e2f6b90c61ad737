//! `jobgate controller`: the Kubernetes operator.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Args;

use crate::error::{Error, Result};
use crate::operator::allowlist::Allowlist;
use crate::operator::controller::{self, LeaderSettings, Settings};
use crate::operator::kinds;
use crate::operator::webhook::{self, CertSource, WebhookSettings};

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Path to a kubeconfig (default: KUBECONFIG, ~/.kube/config, or the
    /// in-cluster service account).
    #[arg(long, value_name = "PATH")]
    kubeconfig: Option<std::path::PathBuf>,
    /// This cluster's name in the ledgers; clusters sharing a bucket need
    /// different names. Default: the UID of the kube-system namespace.
    #[arg(long, env = "JOBGATE_CLUSTER_NAME")]
    cluster_name: Option<String>,
    /// Watch ConcurrencyGroups and Jobs in this namespace only (default: all).
    #[arg(long, env = "JOBGATE_NAMESPACE")]
    namespace: Option<String>,
    /// A ledger location groups may use, as s3://BUCKET/PREFIX,
    /// gs://BUCKET/PREFIX or az://ACCOUNT/CONTAINER/PREFIX (repeat for
    /// more). Each name may be * (any); PREFIX may hold {namespace} and
    /// {name} (the group's), and allows every key below it when it ends in
    /// /, else that one key. Groups elsewhere are not admitted and nothing
    /// of theirs is read. Default: keys under jobgate/{namespace}/ in any
    /// bucket of any store.
    #[arg(long = "allowed-ledger", value_name = "TEMPLATE")]
    allowed_ledgers: Vec<String>,
    /// How often to look for free slots while Jobs wait.
    #[arg(long, default_value = "2s", value_parser = super::parse_duration)]
    poll_waiting: Duration,
    /// How often to refresh a group when nothing waits.
    #[arg(long, default_value = "60s", value_parser = super::parse_duration)]
    poll_idle: Duration,
    /// How long a deleted group waits for a ledger it cannot read before
    /// its finalizer is removed anyway (its slots then run out with the lease).
    #[arg(long, default_value = "10m", value_parser = super::parse_duration)]
    deletion_timeout: Duration,
    /// How many groups may be reconciled at once; 0: no bound. Each
    /// group's passes run one at a time, so a group whose ledger is slow
    /// holds up only itself, unless this bound is reached: passes past it
    /// wait, and with them the suspension of Jobs whose ledger cannot be
    /// read at start-up. Keep it above the number of groups.
    #[arg(long, default_value_t = 0)]
    max_concurrent_passes: u16,
    /// Kinds of work gated besides Jobs (repeat, or separate by commas):
    /// jobset, workflow (Argo), rayjob, pod (plain Pods, held by a
    /// scheduling gate), or the path of a YAML file that
    /// describes other kinds (see docs/kinds.md). Objects of these kinds
    /// labelled jobgate.dev/group wait for a slot as Jobs do.
    #[arg(
        long,
        value_name = "KIND|FILE",
        env = "JOBGATE_WORKLOAD_KINDS",
        value_delimiter = ','
    )]
    workload_kinds: Vec<String>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    listen: SocketAddr,
    /// Serve the Job webhook (HTTPS, path /mutate-jobs) here: labelled
    /// Jobs are created suspended. Off when not given.
    #[arg(long, value_name = "ADDR")]
    webhook_listen: Option<SocketAddr>,
    /// Serve the certificate in DIR/tls.crt and DIR/tls.key (for example
    /// cert-manager's Secret, mounted), re-read when it changes. Without
    /// it the controller makes its own CA and certificate (--webhook-secret).
    #[arg(long, value_name = "DIR", requires = "webhook_listen")]
    webhook_cert_dir: Option<std::path::PathBuf>,
    /// The Secret (in this pod's namespace) that holds the webhook's own CA
    /// and certificate, shared by all replicas.
    #[arg(long, value_name = "NAME", default_value = "jobgate-webhook-tls")]
    webhook_secret: String,
    /// Namespace of that Secret and of the webhook's Service (in a pod: its own).
    #[arg(
        long,
        env = "POD_NAMESPACE",
        default_value = "default",
        value_name = "NS"
    )]
    webhook_namespace: String,
    /// The webhook's Service: its DNS names go into the certificate.
    #[arg(long, value_name = "NAME", requires = "webhook_listen")]
    webhook_service: Option<String>,
    /// More names for the certificate (IP addresses or DNS names), for a
    /// webhook configuration that calls a URL instead of a Service.
    #[arg(long, value_name = "NAME", requires = "webhook_listen")]
    webhook_host: Vec<String>,
    /// The MutatingWebhookConfiguration whose caBundle is kept set to the
    /// controller's own CA.
    #[arg(long, value_name = "NAME", requires = "webhook_listen")]
    webhook_configuration: Option<String>,
    /// Run only while holding a coordination.k8s.io Lease, so that several
    /// replicas are safe.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    leader_elect: bool,
    /// Namespace of the leader-election Lease (in a pod: its own namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,
    /// Name of the leader-election Lease; replicas of one deployment share it.
    #[arg(long, default_value = "jobgate-controller")]
    leader_election_name: String,
    /// How long a silent leader keeps the Lease.
    #[arg(long, default_value = "15s", value_parser = super::parse_duration)]
    leader_election_lease: Duration,
    /// Test builds only (feature `test-flags`): do not suspend Jobs whose
    /// slot is lost unless the ledger can be read (the behaviour before
    /// fencing without the ledger), so that tests can show their checkers
    /// catch the limit being exceeded.
    #[cfg(feature = "test-flags")]
    #[arg(long, hide = true)]
    unsafe_fence_only_with_ledger: bool,
    /// Test builds only (feature `test-flags`): free the slot of a finished
    /// or deleted Job without looking for its pods (the behaviour before pod
    /// counting), so that tests can show the pod-level checker catches the
    /// limit being exceeded.
    #[cfg(feature = "test-flags")]
    #[arg(long, hide = true)]
    unsafe_release_without_pods: bool,
    /// This replica's name in the Lease and in Events (default: host name and pid).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
}

impl ControllerArgs {
    /// The test-only flags as (fence only with the ledger, release without
    /// looking for pods); both off in a release build, which lacks them.
    fn unsafe_modes(&self) -> (bool, bool) {
        #[cfg(feature = "test-flags")]
        return (
            self.unsafe_fence_only_with_ledger,
            self.unsafe_release_without_pods,
        );
        #[cfg(not(feature = "test-flags"))]
        (false, false)
    }
}

pub async fn controller(args: ControllerArgs) -> Result<u8> {
    let (fence_only_with_ledger, release_without_pods) = args.unsafe_modes();
    let identity = args
        .identity
        .unwrap_or_else(|| format!("{}-{}", crate::agent::hostname(), std::process::id()));
    let gated = kinds::parse(&args.workload_kinds, |path| std::fs::read_to_string(path))
        .map_err(Error::InvalidArgument)?;
    let gate_pods = gated.pods;
    let kinds: std::sync::Arc<Vec<_>> =
        std::sync::Arc::new(gated.kinds.into_iter().map(std::sync::Arc::new).collect());
    let webhook = args.webhook_listen.map(|listen| WebhookSettings {
        kinds: kinds.clone(),
        gate_pods,
        listen,
        certs: match args.webhook_cert_dir {
            Some(dir) => CertSource::Dir(dir),
            None => CertSource::SelfManaged {
                names: webhook::service_names(
                    args.webhook_service.as_deref(),
                    &args.webhook_namespace,
                    &args.webhook_host,
                ),
                namespace: args.webhook_namespace,
                secret: args.webhook_secret,
                configuration: args.webhook_configuration,
            },
        },
    });
    if let Some(CertSource::SelfManaged { names, .. }) = webhook.as_ref().map(|w| &w.certs)
        && names.is_empty()
    {
        return Err(Error::InvalidArgument(
            "the webhook's own certificate needs a name: give --webhook-service (its Service) or --webhook-host (the host the API server calls)".into(),
        ));
    }
    // Refused before connecting: a typo must not leave groups unchecked.
    let allowlist = Allowlist::parse(&args.allowed_ledgers)
        .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    let config = super::kube::config(args.kubeconfig.as_deref(), None).await?;
    let settings = Settings {
        cluster_name: args.cluster_name.filter(|s| !s.is_empty()),
        namespace: args.namespace.filter(|s| !s.is_empty()),
        poll_waiting: args.poll_waiting,
        poll_idle: args.poll_idle,
        deletion_timeout: args.deletion_timeout,
        max_concurrent_passes: args.max_concurrent_passes,
        allowlist,
        fence_without_ledger: !fence_only_with_ledger,
        count_pods: !release_without_pods,
        kinds,
        gate_pods,
        listen: args.listen,
        webhook,
        leader_election: args.leader_elect.then_some(LeaderSettings {
            namespace: args.leader_election_namespace,
            name: args.leader_election_name,
            lease: args.leader_election_lease,
        }),
        identity,
    };
    controller::run(config, settings)
        .await
        .map(|()| 0)
        .map_err(|e| Error::InvalidArgument(e.to_string()))
}
