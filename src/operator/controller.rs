//! `jobgate controller`: wires the API client, metrics and health server,
//! leader election and the kube-runtime Controller together.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, ListParams};
use kube::runtime::controller::Controller;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use prometheus_client::registry::Registry;
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{error, info, warn};

use super::crd::{ConcurrencyGroup, GROUP_LABEL};
use super::error::{Error, Result};
use super::http::{self, Health};
use super::leader::{self, LeaseConfig};
use super::ledgers::{LedgerSettings, Ledgers};
use super::metrics::Metrics;
use super::reconcile::{self, Context};

#[derive(Debug, Clone)]
pub struct Settings {
    /// This cluster's name in ledgers; `None`: the kube-system namespace UID.
    pub cluster_name: Option<String>,
    /// Watch one namespace; `None`: all.
    pub namespace: Option<String>,
    pub poll_waiting: Duration,
    pub poll_idle: Duration,
    /// Suspend Jobs whose slot is lost even when the ledger cannot be read.
    /// Off only in tests that show what goes wrong without it.
    pub fence_without_ledger: bool,
    /// Keep a slot while pods of its finished or deleted Job may still run.
    /// Off only in tests that show what goes wrong without it.
    pub count_pods: bool,
    pub listen: SocketAddr,
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

/// Runs until SIGTERM or SIGINT. Losing leadership ends the process at once
/// (see below), so it never returns for that.
pub async fn run(client: Client, settings: Settings) -> Result<()> {
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::new(&mut registry));
    let health = Arc::new(Health::default());
    let bound = http::serve(settings.listen, Arc::new(registry), health.clone())
        .await
        .map_err(|e| Error::Startup(format!("cannot listen on {}: {e}", settings.listen)))?;
    info!(addr = %bound, "serving /metrics, /healthz and /readyz");

    let cluster = match &settings.cluster_name {
        Some(name) => name.clone(),
        None => kube_system_uid(&client).await?,
    };
    let groups: Api<ConcurrencyGroup> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let jobs: Api<Job> = match &settings.namespace {
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
    let signals = tokio::spawn(async move {
        shutdown_signal().await;
        let _ = stop_tx.send(true);
    });
    let mut leadership = None;
    if let Some(le) = &settings.leader_election {
        let mut cfg = LeaseConfig::new(
            le.namespace.clone(),
            le.name.clone(),
            settings.identity.clone(),
        );
        cfg.lease_duration = le.lease;
        cfg.renew_interval = le.lease / 3;
        info!(lease = %format!("{}/{}", le.namespace, le.name), identity = %settings.identity, "waiting for leadership");
        let mut stop = stop_rx.clone();
        tokio::select! {
            acquired = leader::acquire(client.clone(), cfg) => leadership = Some(acquired?),
            _ = stop.wait_for(|stopped| *stopped) => return Ok(()),
        }
        info!("became the leader");
        metrics.leader.set(1);
    }

    let (trigger, triggers) = mpsc::unbounded_channel();
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: reconcile::FIELD_MANAGER.to_string(),
                instance: Some(settings.identity.clone()),
            },
        ),
        metrics: metrics.clone(),
        ledgers: Ledgers::default(),
        settings: LedgerSettings {
            cluster: cluster.clone(),
            poll: settings.poll_waiting,
            leader_lease: settings.leader_election.as_ref().map(|le| le.lease),
        },
        poll_waiting: settings.poll_waiting,
        poll_idle: settings.poll_idle,
        fence_without_ledger: settings.fence_without_ledger,
        count_pods: settings.count_pods,
        trigger,
    });
    info!(%cluster, "controller running");

    // A deleted group is not reconciled again: drop its ledger client, so
    // that its lease stops being renewed and runs out at the others.
    let sweeper = tokio::spawn({
        let ctx = ctx.clone();
        let groups = groups.clone();
        let every = settings.poll_idle;
        async move {
            loop {
                tokio::time::sleep(every).await;
                if let Ok(list) = groups.list(&ListParams::default()).await {
                    let existing = list
                        .items
                        .iter()
                        .map(|g| (g.namespace().unwrap_or_default(), g.name_any()))
                        .collect();
                    ctx.ledgers.retain(&existing).await;
                }
            }
        }
    });

    // Stop on a signal, or at once when leadership is lost: another replica
    // may already act for this cluster.
    let mut stop = stop_rx.clone();
    let guard = tokio::spawn(async move {
        match leadership.as_mut() {
            Some(l) => tokio::select! {
                _ = stop.wait_for(|stopped| *stopped) => {}
                _ = l.lost() => {
                    // Another replica may already be admitting for this
                    // cluster: stop every reconciliation now, mid-flight
                    // (each step is idempotent), instead of letting them
                    // finish. The restart waits for leadership again.
                    error!("lost leadership; exiting at once");
                    std::process::exit(1);
                }
            },
            None => {
                let _ = stop.wait_for(|stopped| *stopped).await;
            }
        }
        leadership
    });
    let mut shutdown = stop_rx.clone();
    Controller::new(groups, watcher::Config::default())
        .watches(
            jobs,
            watcher::Config::default().labels(GROUP_LABEL),
            |job: Job| {
                let group = job.labels().get(GROUP_LABEL)?.clone();
                let ns = job.namespace()?;
                Some(ObjectRef::<ConcurrencyGroup>::new(&group).within(&ns))
            },
        )
        .reconcile_on(UnboundedReceiverStream::new(triggers))
        .graceful_shutdown_on(async move {
            let _ = shutdown.wait_for(|stopped| *stopped).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx.clone())
        .for_each(|result| async move {
            if let Err(e) = result {
                // Reconciler errors are logged by the error policy.
                if !matches!(e, kube::runtime::controller::Error::ReconcilerFailed(..)) {
                    warn!(error = %e, "controller event");
                }
            }
        })
        .await;
    sweeper.abort();
    ctx.ledgers.shutdown().await;
    signals.abort();
    metrics.leader.set(0);
    match guard.await {
        Ok(Some(leadership)) => {
            // Let a successor take over now rather than after the lease.
            leadership.release().await;
        }
        Ok(_) => {}
        Err(e) => error!(error = %e, "leadership task failed"),
    }
    info!("controller stopped");
    Ok(())
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
