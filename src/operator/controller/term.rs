//! One term of admitting: the kube-runtime Controller over the groups and
//! their Jobs, with the watches and sweeps that feed it.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::core::DynamicObject;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{self, ObjectRef};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Client, ResourceExt};
use tokio::sync::{mpsc, watch};
use tokio_stream::wrappers::UnboundedReceiverStream;
use tracing::{info, warn};

use super::super::crd::{ConcurrencyGroup, GROUP_LABEL};
use super::super::events;
use super::super::gated_pods;
use super::super::job_cache::{self, JobCache};
use super::super::kinds::KindSpec;
use super::super::ledgers::{LedgerSettings, Ledgers, lock};
use super::super::metrics::{GroupLabels, Metrics};
use super::super::orphans;
use super::super::reconcile::{self, Context};
use super::{AbortOnDrop, Settings};

/// What every term shares: the ledger clients (whose renewals outlive a
/// term), the metrics, and the channel of passes asked for from outside.
pub(super) struct Shared {
    pub(super) ledgers: Arc<Ledgers>,
    pub(super) metrics: Arc<Metrics>,
    pub(super) trigger: mpsc::UnboundedSender<ObjectRef<ConcurrencyGroup>>,
    pub(super) triggers:
        Arc<tokio::sync::Mutex<mpsc::UnboundedReceiver<ObjectRef<ConcurrencyGroup>>>>,
}

/// One term of admitting: the kube-runtime Controller over groups and their
/// Jobs, until `stop` (graceful) or until aborted (leadership lost).
pub(super) async fn admit(
    client: Client,
    settings: Settings,
    (cluster, cluster_uid): (String, Option<String>),
    shared: Shared,
    stop: watch::Receiver<bool>,
) {
    let Shared {
        ledgers,
        metrics,
        trigger,
        triggers,
    } = shared;
    let groups: Api<ConcurrencyGroup> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let jobs: Api<Job> = match &settings.namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    // One watch of the labelled Jobs for every group: it triggers their
    // passes and keeps the cache they read instead of listing Jobs.
    let (job_store, job_writer) = reflector::store();
    let mut relist = job_cache::Relist::default();
    let relisted = job_store.clone();
    let job_events = watcher(jobs, watcher::Config::default().labels(GROUP_LABEL))
        .default_backoff()
        .modify(job_cache::prune)
        .reflect(job_writer)
        .flat_map(move |event| {
            let triggers: Vec<std::result::Result<Job, watcher::Error>> = match event {
                Ok(event) => relist
                    .triggers(&event, &relisted)
                    .into_iter()
                    .map(Ok)
                    .collect(),
                Err(e) => vec![Err(e)],
            };
            futures::stream::iter(triggers)
        });
    // One watch per other kind gated, each feeding its own cache and
    // triggering the passes of its objects' groups.
    let mut kind_stores = Vec::new();
    let mut kind_triggers = Vec::new();
    let kinds_missing = Arc::new(std::sync::Mutex::new(std::collections::BTreeSet::new()));
    for kind in settings.kinds.iter() {
        let (store, events) = watch_kind(
            &client,
            settings.namespace.as_deref(),
            kind,
            kinds_missing.clone(),
        );
        kind_stores.push((kind.clone(), store));
        kind_triggers.push(events);
    }
    let mut job_cache = JobCache::new(job_store).with_kinds(kind_stores);
    if settings.gate_pods {
        let (store, events) = watch_plain_pods(&client, settings.namespace.as_deref());
        job_cache = job_cache.with_pods(store);
        kind_triggers.push(events);
    }
    // This term's share of the process-wide channel.
    let (term_trigger, term_triggers) = mpsc::unbounded_channel();
    let requeue = trigger.clone();
    let _forward = AbortOnDrop(tokio::spawn(async move {
        let mut triggers = triggers.lock().await;
        while let Some(group) = triggers.recv().await {
            if let Err(unsent) = term_trigger.send(group) {
                // The term is ending: the next one takes it.
                let _ = requeue.send(unsent.0);
                break;
            }
        }
    }));
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: events::Publisher::start(
            client.clone(),
            Reporter {
                controller: reconcile::FIELD_MANAGER.to_string(),
                instance: Some(settings.identity.clone()),
            },
            metrics.clone(),
        ),
        metrics: metrics.clone(),
        ledgers,
        settings: LedgerSettings {
            cluster,
            cluster_uid,
            poll: settings.poll_waiting,
            leader_lease: settings.leader_election.as_ref().map(|le| le.lease),
        },
        allowlist: settings.allowlist.clone(),
        poll_waiting: settings.poll_waiting,
        poll_idle: settings.poll_idle,
        fence_without_ledger: settings.fence_without_ledger,
        count_pods: settings.count_pods,
        trigger,
        deletion_timeout: settings.deletion_timeout,
        jobs: job_cache.clone(),
        kinds: settings.kinds.clone(),
        gate_pods: settings.gate_pods,
        kinds_missing,
        term_started: tokio::time::Instant::now(),
        status_written: Default::default(),
    });

    // Groups deleted without our finalizer (removed by hand) are not
    // reconciled again: drop their ledger clients, so that their leases
    // stop being renewed and run out at the others. The same sweep finds
    // labelled Jobs whose group does not exist; a Job event for a missing
    // group wakes it early.
    let missing_group = Arc::new(tokio::sync::Notify::new());
    let sweeper = tokio::spawn({
        let ctx = ctx.clone();
        let groups = groups.clone();
        let every = settings.poll_idle;
        let wake = missing_group.clone();
        async move {
            let mut told = std::collections::BTreeSet::new();
            let mut known: HashSet<(String, String)> = HashSet::new();
            loop {
                tokio::select! {
                    _ = tokio::time::sleep(every) => {}
                    _ = wake.notified() => {
                        // Every event of a Job whose group is missing
                        // wakes it (a namespace being torn down sends
                        // many): at most one early sweep per 2 s.
                        tokio::time::sleep(Duration::from_secs(2)).await;
                    }
                }
                let existing = match groups.list(&ListParams::default()).await {
                    Ok(list) => list
                        .items
                        .iter()
                        .map(|g| (g.namespace().unwrap_or_default(), g.name_any()))
                        .collect(),
                    Err(e) => {
                        warn!(error = %e, "could not list the groups to sweep");
                        continue;
                    }
                };
                ctx.ledgers.retain(&existing).await;
                for (namespace, group) in known.difference(&existing) {
                    ctx.metrics.forget_group(&GroupLabels {
                        namespace: namespace.clone(),
                        group: group.clone(),
                    });
                }
                orphans::sweep(&ctx, &existing, &mut told).await;
                known = existing;
            }
        }
    });
    // Aborting this task drops the sweeper's handle without stopping it.
    let _sweeper = AbortOnDrop(sweeper);
    let mut shutdown = stop;
    let mut controller = Controller::new(groups, watcher::Config::default())
        .with_config(controller::Config::default().concurrency(settings.max_concurrent_passes))
        .watches_stream(job_events, |job: Job| {
            let group = job.labels().get(GROUP_LABEL)?.clone();
            let ns = job.namespace()?;
            Some(ObjectRef::<ConcurrencyGroup>::new(&group).within(&ns))
        })
        .reconcile_on(UnboundedReceiverStream::new(term_triggers));
    for events in kind_triggers {
        controller = controller.reconcile_on(events);
    }
    controller
        .graceful_shutdown_on(async move {
            let _ = shutdown.wait_for(|stopped| *stopped).await;
        })
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|result| {
            let missing_group = missing_group.clone();
            let metrics = metrics.clone();
            async move {
                match result {
                    // A Job names a group that does not exist.
                    Err(kube::runtime::controller::Error::ObjectNotFound(_)) => {
                        missing_group.notify_one();
                    }
                    // A group counted as missing exists now: sweep again
                    // soon, so that jobgate_jobs_without_group (and an
                    // alert on it) clears now rather than at the next idle
                    // sweep. The sweep lists the groups anew, so a sweep
                    // running with an older list is corrected after it.
                    Ok((group, _)) => {
                        if orphans::counted_missing(&metrics, &group) {
                            missing_group.notify_one();
                        }
                    }
                    // Reconciler errors are logged by the error policy.
                    Err(kube::runtime::controller::Error::ReconcilerFailed(..)) => {}
                    Err(e) => warn!(error = %e, "controller event"),
                }
            }
        })
        .await;
}

/// The watch of one other kind's labelled objects: its cache, and the
/// groups its events concern. A (re)list's end triggers every group in
/// the cache; a group whose last object was deleted while the watch was
/// down is looked at again by its own periodic pass.
fn watch_kind(
    client: &Client,
    namespace: Option<&str>,
    kind: &Arc<KindSpec>,
    missing: Arc<std::sync::Mutex<std::collections::BTreeSet<String>>>,
) -> (
    reflector::Store<DynamicObject>,
    futures::stream::BoxStream<'static, ObjectRef<ConcurrencyGroup>>,
) {
    let ar = kind.api_resource();
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let writer = reflector::store::Writer::new(ar);
    let store = writer.as_reader();
    let relisted = store.clone();
    let id = kind.id();
    let mut missing_told = false;
    let events = watcher(api, watcher::Config::default().labels(GROUP_LABEL))
        .default_backoff()
        .modify(job_cache::prune_other)
        .reflect(writer)
        .flat_map(move |event| {
            let objects: Vec<ObjectRef<ConcurrencyGroup>> = match event {
                Ok(watcher::Event::Apply(o) | watcher::Event::Delete(o)) => {
                    group_ref(&o).into_iter().collect()
                }
                Ok(watcher::Event::InitDone) => {
                    // Installed (again): every group's status says so.
                    let was_missing = lock(&missing).remove(&id);
                    let groups: HashSet<_> =
                        relisted.state().iter().filter_map(|o| group_ref(o)).collect();
                    if was_missing {
                        info!(kind = %id, "this kind is installed now; its objects are gated");
                        missing_told = false;
                    }
                    groups.into_iter().collect()
                }
                Ok(_) => Vec::new(),
                Err(e) => {
                    // Its CRD is not installed: said once (here, and in
                    // each group's KindsInstalled condition), and watched
                    // for until it is; the other kinds go on.
                    let not_installed = matches!(&e, watcher::Error::InitialListFailed(kube::Error::Api(a)) if a.code == 404);
                    if not_installed && !missing_told {
                        warn!(kind = %id, "this kind is not installed in the cluster (no CRD serves it); its objects are gated once it is");
                        lock(&missing).insert(id.clone());
                        missing_told = true;
                    } else if !not_installed {
                        warn!(kind = %id, error = %e, "watching this kind failed; retrying");
                    }
                    Vec::new()
                }
            };
            futures::stream::iter(objects)
        })
        .boxed();
    (store, events)
}

fn group_ref(obj: &DynamicObject) -> Option<ObjectRef<ConcurrencyGroup>> {
    let group = obj.labels().get(GROUP_LABEL)?;
    Some(ObjectRef::<ConcurrencyGroup>::new(group).within(&obj.namespace()?))
}

/// The watch of labelled plain Pods (not a Job's): their cache, and the
/// groups their events concern, as [`watch_kind`] does for other kinds.
fn watch_plain_pods(
    client: &Client,
    namespace: Option<&str>,
) -> (
    reflector::Store<Pod>,
    futures::stream::BoxStream<'static, ObjectRef<ConcurrencyGroup>>,
) {
    let api: Api<Pod> = match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    };
    let (store, writer) = reflector::store();
    let relisted = store.clone();
    let events = watcher(
        api,
        watcher::Config::default().labels(&job_cache::plain_pods_selector()),
    )
    .default_backoff()
    .modify(|p: &mut Pod| p.metadata.managed_fields = None)
    .reflect(writer)
    .flat_map(move |event| {
        let plain = |p: &Pod| !gated_pods::has_controller(p);
        let groups: Vec<ObjectRef<ConcurrencyGroup>> = match event {
            Ok(watcher::Event::Apply(p) | watcher::Event::Delete(p)) if plain(&p) => {
                pod_group_ref(&p).into_iter().collect()
            }
            Ok(watcher::Event::InitDone) => {
                let groups: HashSet<_> = relisted
                    .state()
                    .iter()
                    .filter(|p| plain(p))
                    .filter_map(|p| pod_group_ref(p))
                    .collect();
                groups.into_iter().collect()
            }
            Ok(_) => Vec::new(),
            Err(e) => {
                warn!(error = %e, "watching plain Pods failed; retrying");
                Vec::new()
            }
        };
        futures::stream::iter(groups)
    })
    .boxed();
    (store, events)
}

fn pod_group_ref(pod: &Pod) -> Option<ObjectRef<ConcurrencyGroup>> {
    let group = pod.labels().get(GROUP_LABEL)?;
    Some(ObjectRef::<ConcurrencyGroup>::new(group).within(&pod.namespace()?))
}
