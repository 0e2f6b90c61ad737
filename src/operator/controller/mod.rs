//! `jobgate controller`: wires the API client, metrics and health server,
//! leader election and the kube-runtime Controller together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tracing::{error, info, warn};

use super::allowlist::Allowlist;
use super::crd::ConcurrencyGroup;
use super::error::{Error, Result};
use super::http::{self, Health};
use super::kinds::KindSpec;
use super::leader::{self, LeaseConfig};
use super::ledgers::Ledgers;
use super::metrics::{GroupLabels, Metrics};
use super::terms::{self, AfterTerm, TermEnd};
use super::webhook::{self, WebhookSettings};

mod term;

use term::{Shared, admit};

#[derive(Debug, Clone)]
pub struct Settings {
    /// This cluster's name in ledgers; `None`: the kube-system namespace UID.
    pub cluster_name: Option<String>,
    /// Watch one namespace; `None`: all.
    pub namespace: Option<String>,
    pub poll_waiting: Duration,
    pub poll_idle: Duration,
    /// How long a deleted group waits for an unreadable ledger.
    pub deletion_timeout: Duration,
    /// Groups reconciled at once (`--max-concurrent-passes`).
    pub max_concurrent_passes: u16,
    /// The ledger locations groups may use (`--allowed-ledger`).
    pub allowlist: Allowlist,
    /// Suspend Jobs whose slot is lost even when the ledger cannot be read.
    /// Off only in tests that show what goes wrong without it.
    pub fence_without_ledger: bool,
    /// Keep a slot while pods of its finished or deleted Job may still run.
    /// Off only in tests that show what goes wrong without it.
    pub count_pods: bool,
    /// The kinds gated besides Jobs.
    pub kinds: Arc<Vec<Arc<KindSpec>>>,
    /// Plain Pods gated too (by a scheduling gate).
    pub gate_pods: bool,
    pub listen: SocketAddr,
    /// The Job webhook, served by every replica; `None`: off.
    pub webhook: Option<WebhookSettings>,
    pub leader_election: Option<LeaderSettings>,
    /// Names this replica in Events and the leader Lease.
    pub identity: String,
}

#[derive(Debug, Clone)]
pub struct LeaderSettings {
    pub namespace: String,
    pub name: String,
    pub lease: Duration,
}

/// Runs until SIGTERM or SIGINT.
///
/// With leader election, a replica admits only while it leads. A leader
/// that cannot renew its Lease (the API server is down or unreachable)
/// stops admitting at once but keeps renewing its cluster's slots in the
/// ledgers: the pods it admitted may still run, and no other replica can
/// take over while the API server is unreachable. It leads again when it
/// gets the Lease back, and exits (so that its renewals stop) as soon as it
/// sees another replica holding the Lease; that replica renews the same
/// slots under the same agent ids.
pub async fn run(config: kube::Config, settings: Settings) -> Result<()> {
    // Every group's ledger client would fail its TLS handshakes: say why now.
    crate::store::s3::ca::from_env().map_err(Error::Startup)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    // Every request counted, watches and Events included.
    let client = kube::client::ClientBuilder::try_from(config)
        .map_err(|e| Error::Startup(format!("cannot build a Kubernetes client: {e}")))?
        .with_layer(&super::requests::counting(metrics.kube_requests.clone()))
        .build();
    let health = Arc::new(Health::default());
    let bound = http::serve(settings.listen, Arc::new(registry), health.clone())
        .await
        .map_err(|e| Error::Startup(format!("cannot listen on {}: {e}", settings.listen)))?;
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");
    // What makes the process stop on its own (the webhook cannot serve):
    // it stops as on a signal, and `main` exits with an error.
    let (fatal_tx, mut fatal_rx) = mpsc::unbounded_channel::<String>();
    if let Some(wh) = settings.webhook.clone() {
        let listen = wh.listen;
        webhook::start(
            client.clone(),
            wh,
            metrics.clone(),
            health.clone(),
            fatal_tx.clone(),
        )
        .await
        .map_err(|e| Error::Startup(format!("cannot listen on {listen} for the webhook: {e}")))?;
    }

    let (cluster, cluster_uid) = match &settings.cluster_name {
        Some(name) => match kube_system_uid(&client).await {
            Ok(uid) => (name.clone(), Some(uid)),
            Err(e) => {
                warn!(error = %e, "another cluster given the same --cluster-name will not be told apart from this one");
                (name.clone(), None)
            }
        },
        None => {
            let uid = kube_system_uid(&client).await?;
            (uid.clone(), Some(uid))
        }
    };
    let groups: Api<ConcurrencyGroup> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    if let Err(e) = groups.list(&ListParams::default().limit(1)).await {
        return Err(Error::Startup(format!(
            "cannot list ConcurrencyGroups ({e}); is the CRD installed (kubectl apply -f crds/) and may this identity read it?"
        )));
    }
    // A standby replica is ready: it serves and waits for leadership.
    health.set_ready(true);

    let (stop_tx, stop_rx) = watch::channel(false);
    let fatal = Arc::new(std::sync::Mutex::new(None::<String>));
    let signals = tokio::spawn({
        let fatal = fatal.clone();
        async move {
            tokio::select! {
                _ = shutdown_signal() => {}
                Some(why) = fatal_rx.recv() => {
                    error!("{why}");
                    *super::ledgers::lock(&fatal) = Some(why);
                }
            }
            let _ = stop_tx.send(true);
        }
    });
    // Kept open: with no webhook nothing else sends.
    let _fatal_tx = fatal_tx;
    let stopped = move || match super::ledgers::lock(&fatal).take() {
        Some(why) => Err(Error::MustExit(why)),
        None => Ok(()),
    };
    let lease_cfg = settings.leader_election.as_ref().map(|le| {
        let mut cfg = LeaseConfig::new(
            le.namespace.clone(),
            le.name.clone(),
            settings.identity.clone(),
        );
        cfg.lease_duration = le.lease;
        cfg.renew_interval = le.lease / 3;
        cfg
    });
    let ledgers = Arc::new(Ledgers::default());
    // Renewals go on between leadership terms, so lease health is reported
    // for the whole process, a second at most behind.
    let _lease_gauges = AbortOnDrop(tokio::spawn(report_leases(
        ledgers.clone(),
        metrics.clone(),
    )));
    let mut stop = stop_rx.clone();
    let mut leadership = None;
    if let Some(cfg) = &lease_cfg {
        info!(lease = %format!("{}/{}", cfg.namespace, cfg.name), identity = %settings.identity, "waiting for leadership");
        tokio::select! {
            acquired = leader::acquire(client.clone(), cfg.clone()) => leadership = Some(acquired?),
            _ = stop.wait_for(|stopped| *stopped) => {
                drain_webhook(&settings, &health).await;
                return stopped();
            }
        }
        info!("became the leader");
    }
    info!(%cluster, version = %*crate::version::VERSION, allowed_ledgers = %settings.allowlist.describe(), "controller running");

    // Passes asked for from outside the Controller (a slot's watcher saw it
    // lost) go through one channel for the whole process: watchers started
    // in one term may fire in a later one.
    let (trigger, triggers) = mpsc::unbounded_channel();
    let triggers = Arc::new(tokio::sync::Mutex::new(triggers));
    'terms: loop {
        // Without leader election the one replica acts as the leader.
        metrics
            .leader
            .set(i64::from(leadership.is_some() || lease_cfg.is_none()));
        let mut term = tokio::spawn(admit(
            client.clone(),
            settings.clone(),
            (cluster.clone(), cluster_uid.clone()),
            Shared {
                ledgers: ledgers.clone(),
                metrics: metrics.clone(),
                trigger: trigger.clone(),
                triggers: triggers.clone(),
            },
            stop_rx.clone(),
        ));
        let end = match leadership.as_mut() {
            Some(l) => tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => TermEnd::Stop,
                _ = l.lost() => TermEnd::Lost,
                ended = &mut term => TermEnd::Ended(ended),
            },
            None => tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => TermEnd::Stop,
                ended = &mut term => TermEnd::Ended(ended),
            },
        };
        match terms::after_term(&end, *stop.borrow()) {
            AfterTerm::Stop => break 'terms,
            AfterTerm::Exit => {
                let why = match end {
                    TermEnd::Ended(Err(e)) => format!("the controller task failed ({e}); exiting"),
                    _ => "the controller task ended; exiting".to_string(),
                };
                error!("{why}");
                // `main` drops the runtime at once, and with it every
                // renewal, without releasing: a restart or the standby takes
                // the slots up under the same agent ids.
                return Err(Error::MustExit(why));
            }
            AfterTerm::Drain => {
                // Let the reconciliations in flight finish, unless
                // leadership runs out meanwhile.
                match leadership.as_mut() {
                    Some(l) => tokio::select! {
                        _ = &mut term => {}
                        _ = l.lost() => {
                            term.abort();
                            leadership = None;
                        }
                    },
                    None => {
                        let _ = (&mut term).await;
                    }
                }
                break;
            }
            AfterTerm::Reelect => {}
        }
        // Another replica may already be admitting for this cluster: stop
        // every reconciliation now, mid-flight (each step is idempotent).
        term.abort();
        let _ = term.await;
        leadership = None;
        metrics.leader.set(0);
        let Some(cfg) = &lease_cfg else { break };
        error!(
            "lost leadership: stopped admitting; this cluster's slots stay renewed in the ledgers, since its pods may still run, until this replica leads again or another one does"
        );
        loop {
            tokio::select! {
                acquired = leader::acquire(client.clone(), cfg.clone()) => match acquired {
                    Ok(l) => {
                        leadership = Some(l);
                        info!("leader again");
                        break;
                    }
                    // Even a refusal (an API server still starting may
                    // answer 401 or 403) is waited out: exiting would stop
                    // the renewals of slots whose pods may run.
                    Err(e) => {
                        warn!(error = %e, "could not take the Lease back; retrying");
                        tokio::time::sleep(cfg.retry_interval).await;
                    }
                },
                holder = leader::taken_by_another(client.clone(), cfg.clone()) => {
                    // That replica renews the same slots; ours must stop so
                    // that nothing of this process acts any more.
                    error!(%holder, "another replica leads now; exiting");
                    return Err(Error::MustExit(format!("another replica ({holder}) leads now; exiting so that this one's renewals stop")));
                }
                _ = stop.wait_for(|stopped| *stopped) => break 'terms,
            }
        }
    }
    ledgers.shutdown().await;
    signals.abort();
    metrics.leader.set(0);
    if let Some(leadership) = leadership {
        // Let a successor take over now rather than after the lease.
        leadership.release().await;
    }
    drain_webhook(&settings, &health).await;
    info!("controller stopped");
    stopped()
}

/// How long a stopping replica keeps serving the webhook after it reports
/// unready: endpoints are updated asynchronously, so the API server may
/// still send it a Job creation for a moment, which `failurePolicy: Fail`
/// would turn into a refused Job.
const WEBHOOK_DRAIN: Duration = Duration::from_secs(5);

async fn drain_webhook(settings: &Settings, health: &Health) {
    if settings.webhook.is_none() {
        return;
    }
    health.set_ready(false);
    info!(
        seconds = WEBHOOK_DRAIN.as_secs(),
        "unready; still serving the webhook before exiting"
    );
    tokio::time::sleep(WEBHOOK_DRAIN).await;
}

/// Every second, each group's lease as its client holds it
/// (`jobgate_lease_*`).
async fn report_leases(ledgers: Arc<Ledgers>, metrics: Arc<Metrics>) {
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = tokio::time::Instant::now();
        for ((namespace, group), gl) in ledgers.all().await {
            metrics.set_lease(&GroupLabels { namespace, group }, gl.sem.lease(), now);
        }
    }
}

pub(super) struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

async fn kube_system_uid(client: &Client) -> Result<String> {
    let api: Api<Namespace> = Api::all(client.clone());
    let ns = api.get("kube-system").await.map_err(|e| {
        Error::Startup(format!(
            "cannot read namespace kube-system to name this cluster ({e}); pass --cluster-name"
        ))
    })?;
    ns.uid().ok_or_else(|| {
        Error::Startup("namespace kube-system has no UID; pass --cluster-name".into())
    })
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) {
        (Ok(mut term), Ok(mut int)) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = int.recv() => {}
            }
        }
        _ => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}
