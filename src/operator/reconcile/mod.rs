//! Reconciliation of one ConcurrencyGroup, as a short driver over named
//! steps, each in a file of its own: finalize (`finalize`) → early fence,
//! from this process's own permits (`fence`) → gather: credentials, ledger,
//! Jobs, pods, as one snapshot (`gather`, IO only) → decide and plan, pure
//! (`admission::decide`, then `plan`: the effects on each workload, and the
//! pass's small rules) → write the ledger, one batch → act: carry the
//! effects out (`act`, with the Job patches in `patch` and the Events in
//! `tell`) → status (`report`). Deadlines under `onControllerLoss:
//! FailJobs` are kept beside it (`deadlines`). A pass that cannot read the
//! ledger suspends the running Jobs nothing vouches for.
//!
//! Every step is idempotent, so a controller killed anywhere finishes the
//! work on its next pass: a slot granted but not yet acted on shows up as a
//! held slot of a suspended Job, which `decide` turns into an unsuspend.
//! Each step's failure is an `Error` variant of its own (`Error::kind`).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::admission::{self, Decision, Inputs, ReleaseReason, WorkloadView};
use super::allowlist::Allowlist;
use super::crd::{
    ABANDON_ANNOTATION, ADMITTED_AT_ANNOTATION, ConcurrencyGroup, ControllerLossPolicy, FINALIZER,
    GROUP_LABEL, KUEUE_QUEUE_LABEL, LeaseLossPolicy, SLOTS_ANNOTATION, TOKEN_ANNOTATION,
};
use super::deadline;
use super::deletion::{self, Held, Step};
use super::error::{Error, Result};
use super::events;
use super::job_cache::{self, JobCache};
use super::jobs::{CONTROLLER_UID_LABEL, is_admitted, is_finished};
use super::kinds::{KindSpec, LabelValue};
use super::ledgers::{Credentials, GroupLedger, LedgerSettings, Ledgers, lock};
use super::limits;
use super::metrics::{GroupLabels, Metrics, ReleaseLabels};
use super::status::{self, Observed};
use super::workload::{Object, Workload};
use crate::ledger::Ledger;
use crate::semaphore::Permit;
use kube::core::DynamicObject;

mod act;
mod deadlines;
mod fence;
mod finalize;
#[cfg(test)]
mod fixtures;
mod gather;
mod patch;
mod plan;
#[cfg(test)]
mod plan_props;
#[cfg(test)]
mod plan_tests;
mod pods;
mod report;
#[cfg(test)]
mod scenarios;
mod tell;

use act::*;
use deadlines::*;
use fence::*;
use finalize::*;
use gather::*;
use patch::*;
use report::*;
use tell::*;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "jobgate-controller";

pub struct Context {
    pub client: kube::Client,
    pub recorder: events::Publisher,
    pub metrics: Arc<Metrics>,
    /// Outlives a leadership term: the slots stay renewed between terms.
    pub ledgers: Arc<Ledgers>,
    pub settings: LedgerSettings,
    /// The ledger locations groups may use, checked before anything of a
    /// group's ledger or credentials is read.
    pub allowlist: Allowlist,
    /// How often to look again while Jobs wait, and when nothing waits.
    pub poll_waiting: Duration,
    pub poll_idle: Duration,
    /// Suspend Jobs whose slot is lost without waiting for a ledger read.
    pub fence_without_ledger: bool,
    /// Keep a slot while pods of its finished or deleted Job may still run.
    pub count_pods: bool,
    /// Asks for a reconciliation of a group (e.g. when a slot is lost).
    pub trigger: mpsc::UnboundedSender<ObjectRef<ConcurrencyGroup>>,
    /// How long a deleted group waits for a ledger it cannot read before
    /// its finalizer is dropped anyway.
    pub deletion_timeout: Duration,
    /// The labelled workloads, from the controller's watches.
    pub jobs: JobCache,
    /// The kinds gated besides Jobs (`--workload-kinds`).
    pub kinds: Arc<Vec<Arc<KindSpec>>>,
    /// Plain Pods are gated too.
    pub gate_pods: bool,
    /// Of `kinds`, those no CRD serves in this cluster (their watches say).
    pub kinds_missing: Arc<Mutex<BTreeSet<String>>>,
    /// When this leadership term began: a ledger known from before it may
    /// lack what another replica wrote under this cluster's agent id.
    pub term_started: tokio::time::Instant,
    /// When each group's status was last written from here, by (namespace,
    /// name): counts alone are written at most once a second.
    pub status_written: Mutex<BTreeMap<(String, String), tokio::time::Instant>>,
}

/// What a pass did, for the status and the requeue interval.
struct Summary {
    pub(super) ledger_limit: u32,
    pub(super) in_use: u32,
    pub(super) admitted_here: u32,
    pub(super) waiting_here: u32,
    /// Jobs refused for their grace period, and the longest one asked for.
    pub(super) too_slow_to_stop: Option<(u32, i64)>,
    pub(super) held_too_slow: Option<(u32, i64)>,
    /// With `onControllerLoss: FailJobs` and Jobs running here: how often
    /// their deadlines must be looked at.
    pub(super) deadline_every: Option<Duration>,
    /// Who set the ledger's limit, for the LimitAgreed message.
    pub(super) limit_source: String,
    pub(super) spec_limit_applied: u32,
    /// When the ledger the counts come from was read (RFC 3339): it may be
    /// a read of an earlier pass (`known_ledger`).
    pub(super) read_at: Option<String>,
}

pub async fn reconcile(group: Arc<ConcurrencyGroup>, ctx: Arc<Context>) -> Result<Action> {
    let started = std::time::Instant::now();
    let labels = GroupLabels {
        namespace: group.namespace().unwrap_or_default(),
        group: group.name_any(),
    };
    let result = pass(group, &ctx).await;
    ctx.metrics
        .pass_duration
        .get_or_create(&labels)
        .observe(started.elapsed().as_secs_f64());
    result
}

/// One reconciliation of a group.
async fn pass(group: Arc<ConcurrencyGroup>, ctx: &Arc<Context>) -> Result<Action> {
    let ctx = ctx.clone();
    ctx.metrics.reconciles.inc();
    let ns = group
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = group.name_any();
    let deleting = group.metadata.deletion_timestamp.is_some();
    if let Some(done) = finalize_first(&ctx, &group, &ns, &name).await? {
        return Ok(done);
    }
    let labels = GroupLabels {
        namespace: ns.clone(),
        group: name.clone(),
    };
    let admit_new = !deleting && !group.spec.suspend;
    let waited = deletion_waited(&group);
    let started = std::time::Instant::now();
    let pipeline = admit(&group, &ns, &name, &ctx, &labels, admit_new);
    let Some(result) = bounded(&ctx, &ns, &name, deleting, waited, pipeline).await else {
        info!(group = %name, "the group is being deleted; this pass gives way to the deletion's");
        return Ok(Action::requeue(Duration::ZERO));
    };
    let kinds_missing =
        (!ctx.kinds.is_empty()).then(|| lock(&ctx.kinds_missing).iter().cloned().collect());
    let observed = observed(&group, &result, kinds_missing);
    export_summary(&ctx, &labels, &result, &observed);
    let status_result = update_status(&group, &ns, &name, &observed, &ctx).await;
    if deleting {
        let open_here = ctx.ledgers.current(&ns, &name).await.is_some();
        let held_here = result.as_ref().map(|s| s.admitted_here);
        let held = plan::held_for_deletion(held_here, open_here);
        let waited = waited + started.elapsed();
        match deletion::step(held, waited, ctx.deletion_timeout, false) {
            Step::Drain => {}
            Step::Leave => return finish_deletion(&ctx, &group, &ns, None).await,
            Step::Abandon(why) => return finish_deletion(&ctx, &group, &ns, Some(why)).await,
        }
    }
    let summary = result?;
    // Counts not written yet are written by a pass within a second.
    let status_due = status_result?;
    let wait = plan::requeue_after(&plan::Requeue {
        waiting_here: summary.waiting_here,
        admit_new,
        deleting,
        poll_waiting: ctx.poll_waiting,
        poll_idle: ctx.poll_idle,
        deadline_every: summary.deadline_every,
        status_due,
    });
    Ok(Action::requeue(wait))
}

/// How long ago the group's deletion was asked for (zero if it was not).
fn deletion_waited(group: &ConcurrencyGroup) -> Duration {
    group
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| {
            let since = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            Duration::try_from(since).ok()
        })
        .unwrap_or_default()
}

/// Runs the pipeline within what the deletion has left, or until the group
/// is seen being deleted (`None`: that pass gives way to the deletion's).
async fn bounded(
    ctx: &Context,
    ns: &str,
    name: &str,
    deleting: bool,
    waited: Duration,
    pipeline: impl Future<Output = Result<Summary>>,
) -> Option<Result<Summary>> {
    if !deleting {
        return unless_deleted(ctx, ns, name, pipeline).await;
    }
    // A store that does not answer can hold a pass for minutes (request
    // timeouts times retries): the deletion's deadline must not wait for it.
    let left = ctx
        .deletion_timeout
        .saturating_sub(waited)
        .max(Duration::from_secs(1));
    Some(match tokio::time::timeout(left, pipeline).await {
        Ok(result) => result,
        Err(_) => Err(Error::PassTimedOut(left)),
    })
}

pub fn error_policy(group: Arc<ConcurrencyGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %error, kind = error.kind(), "reconciliation failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&super::metrics::ErrorLabels {
            kind: error.kind().to_string(),
        })
        .inc();
    let fail_jobs = group.spec.on_controller_loss == ControllerLossPolicy::FailJobs;
    let fence_after = group.spec.fence_after(ctx.settings.leader_lease).ok();
    Action::requeue(plan::retry_after(fail_jobs, fence_after))
}

/// The pipeline: gather → decide → fence → write the ledger → patch Jobs.
/// Returns what the status should say.
async fn admit(
    group: &ConcurrencyGroup,
    ns: &str,
    name: &str,
    ctx: &Arc<Context>,
    labels: &GroupLabels,
    admit_new: bool,
) -> Result<Summary> {
    // Lost slots are fenced from this process's own state first: reading
    // the ledger may take longer than the lease has left, or fail.
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let current = ctx.ledgers.current(ns, name).await;
    if ctx.fence_without_ledger
        && current
            .as_ref()
            .is_some_and(|gl| !gl.permits().1.is_empty())
    {
        fence_without_ledger(ctx, group, &jobs_api, current.as_deref(), true).await?;
    }
    // Deadlines next, also before the ledger read: they need only this
    // process's renewals and the API server, and must keep up while the
    // ledger cannot be read.
    let deadline_every = match current.as_deref() {
        Some(gl) => keep_deadlines(ctx, gl, group, &jobs_api, labels).await,
        None => None,
    };
    let fence_after = group
        .spec
        .fence_after(ctx.settings.leader_lease)
        .map_err(Error::InvalidTiming);
    let wait_then_fence = fence_after.as_ref().ok().and_then(|fence_after| {
        plan::startup_fence_wait(*fence_after, current.is_some(), ctx.fence_without_ledger)
    });
    let gathered = match (fence_after, wait_then_fence) {
        (Err(e), _) => Err(e),
        (Ok(_), None) => gather(group, ns, name, ctx, jobs_api.clone()).await,
        // No client for this group yet (this process just started, or
        // rebuilt it): no permit vouches for the Jobs admitted before.
        // Past the wait they are suspended, and the ledger still awaited.
        (Ok(_), Some(wait)) => {
            let gathering = gather(group, ns, name, ctx, jobs_api.clone());
            tokio::pin!(gathering);
            tokio::select! {
                gathered = &mut gathering => gathered,
                _ = tokio::time::sleep(wait) => {
                    warn!(group = name, "the ledger could not be read in time after a start; suspending the running Jobs no permit vouches for");
                    if let Err(fence) = fence_without_ledger(ctx, group, &jobs_api, None, false).await {
                        warn!(error = %fence, "could not suspend Jobs while the ledger is unreadable");
                    }
                    gathering.await
                }
            }
        }
    };
    let pass = match gathered {
        Ok(pass) => pass,
        Err(e) if e.leaves_ledger_unread() && ctx.fence_without_ledger => {
            // Without the ledger nothing but our own permits vouches for a
            // running Job.
            if let Err(fence) =
                fence_without_ledger(ctx, group, &jobs_api, current.as_deref(), false).await
            {
                warn!(error = %fence, "could not suspend Jobs while the ledger is unreadable");
            }
            return Err(e);
        }
        Err(e) => return Err(e),
    };
    let mut pass = pass;
    let mut decision = decide(&pass, group, admit_new);
    // Decided again from a LIST made now, after the ledger read as before,
    // when the cache's view could free a slot whose pods run (see
    // `plan::needs_fresh_list`). Such passes are few.
    let unsure = plan::needs_fresh_list(&decision);
    if unsure && ctx.jobs.is_ready() {
        pass.jobs = by_uid(list_workloads(ctx, &pass.jobs_api, ns, name).await?);
        pass.views = pass.jobs.values().filter_map(Object::view).collect();
        pass.live_pods = pods_left(ctx, ns, &pass.gl, &pass.held_in_ledger, &pass.jobs).await?;
        decision = decide(&pass, group, admit_new);
    }
    debug!(group = name, ?decision, "decided");
    fence(ctx, &pass, &decision).await?;
    let granted = write_ledger(ctx, &pass, group, &decision).await?;
    let (waiting_here, read) = patch_jobs(ctx, &pass, group, &decision, &granted, labels).await?;
    export_counters(ctx, &pass.gl, labels);
    export_oldest_waiting(ctx, &pass.views, labels);
    let mut summary = summarize(&pass, &decision, waiting_here, read, ctx).await?;
    summary.spec_limit_applied = pass.spec_limit_applied;
    summary.deadline_every = deadline_every;
    Ok(summary)
}

/// Decide: the pure `admission::decide` over what was gathered and the
/// permits this process holds.
fn decide(pass: &Pass, group: &ConcurrencyGroup, admit_new: bool) -> Decision {
    let (permits, lost_permits) = pass.gl.permits();
    admission::decide(&Inputs {
        jobs: &pass.views,
        held_in_ledger: &pass.held_in_ledger,
        permits: &permits,
        lost_permits: &lost_permits,
        suspend_on_loss: group.spec.on_lease_loss == LeaseLossPolicy::Suspend,
        wait_recorded: pass.wait_recorded,
        max_grace_seconds: i64::from(group.spec.max_grace_period_seconds),
        live_pods: &pass.live_pods,
        admit_new,
        limit: pass.limit,
    })
}

/// Write the ledger: every release and acquire of this pass in one batch.
/// Returns the tokens granted, by Job UID.
async fn write_ledger(
    ctx: &Arc<Context>,
    pass: &Pass,
    group: &ConcurrencyGroup,
    decision: &Decision,
) -> Result<BTreeMap<String, u64>> {
    let gl = &pass.gl;
    if decision.withdraw_wait {
        gl.sem.withdraw_wait().map_err(Error::WriteLedger)?;
    }
    let mut granted = BTreeMap::new();
    if decision.writes_nothing() {
        return Ok(granted);
    }
    let releases = decision.release_ids();
    // Looked up, not searched for: at depth every waiting Job asks.
    let slots: BTreeMap<&str, u32> = pass
        .views
        .iter()
        .map(|j| (j.uid.as_str(), j.slots))
        .collect();
    let (weighted, waiting_behind) = plan::ask(
        decision,
        |uid| slots.get(uid).copied().unwrap_or(1),
        pass.limit,
    );
    let acquires: Vec<&String> = weighted.iter().map(|(uid, _)| uid).collect();
    let answers = gl
        .sem
        .release_and_try_acquire_ahead_of(&releases, &weighted, waiting_behind)
        .await
        .map_err(Error::WriteLedger)?;
    // Forget released permits before tracking grants: a lost slot given up
    // and granted again in this write must stay watched.
    {
        let mut state = lock(&gl.state);
        for uid in &releases {
            state.permits.remove(uid);
        }
    }
    for (uid, answer) in acquires.into_iter().zip(answers) {
        match answer {
            // Granted too late to be safe: it waits, and the next pass gives
            // the slot up.
            Ok(Some(permit)) if permit.is_lost() => {
                warn!(
                    job = uid,
                    "granted a slot whose lease had already run out; not admitted"
                );
                track(gl, ctx, group, pass.jobs.get(uid), permit);
            }
            Ok(Some(permit)) => {
                granted.insert(uid.clone(), permit.token);
                track(gl, ctx, group, pass.jobs.get(uid), permit);
            }
            Ok(None) => {}
            Err(crate::Error::HolderTaken { agent, .. }) => {
                warn!(job = uid, %agent, "the Job's UID is held by another agent in the ledger");
            }
            Err(e) => return Err(Error::WriteLedger(e)),
        }
    }
    Ok(granted)
}

/// Runs an API call and records its latency.
async fn timed<T>(ctx: &Context, call: &'static str, f: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    ctx.metrics.observe_api(call, started.elapsed());
    out
}
