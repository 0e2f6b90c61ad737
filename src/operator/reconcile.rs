//! Reconciliation of one ConcurrencyGroup, as a pipeline: fence lost slots
//! (from this process's own permits) → gather (credentials, ledger, Jobs) →
//! decide (`admission::decide`, pure) → fence → write the ledger (one batch)
//! → patch Jobs (`admission::on_grants`, pure) → update status. A pass that
//! cannot read the ledger suspends the running Jobs nothing vouches for.
//!
//! Every step is idempotent, so a controller killed anywhere finishes the
//! work on its next pass: a slot granted but not yet acted on shows up as a
//! held slot of a suspended Job, which `decide` turns into an unsuspend.

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

use super::admission::{self, Decision, Inputs, JobAction, JobView, ReleaseReason};
use super::allowlist::Allowlist;
use super::crd::{
    ABANDON_ANNOTATION, ADMITTED_AT_ANNOTATION, ConcurrencyGroup, ControllerLossPolicy, FINALIZER,
    GROUP_LABEL, KUEUE_QUEUE_LABEL, LeaseLossPolicy, SLOTS_ANNOTATION, TOKEN_ANNOTATION,
};
use super::deadline;
use super::deletion::{self, Held, Step};
use super::error::{Error, Result};
use super::events;
use super::explain;
use super::job_cache::{self, JobCache};
use super::jobs::{is_admitted, is_finished, job_view};
use super::ledgers::{Credentials, GroupLedger, LedgerSettings, Ledgers, lock};
use super::limits;
use super::metrics::{GroupLabels, Metrics, ReleaseLabels};
use super::status::{self, Observed, Problem};
use crate::ledger::Ledger;
use crate::semaphore::Permit;

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
    /// The labelled Jobs, from the controller's watch.
    pub jobs: JobCache,
    /// When this leadership term began: a ledger known from before it may
    /// lack what another replica wrote under this cluster's agent id.
    pub term_started: tokio::time::Instant,
    /// When each group's status was last written from here, by (namespace,
    /// name): counts alone are written at most once a second.
    pub status_written: Mutex<BTreeMap<(String, String), tokio::time::Instant>>,
}

/// What a pass did, for the status and the requeue interval.
struct Summary {
    ledger_limit: u32,
    in_use: u32,
    admitted_here: u32,
    waiting_here: u32,
    /// Jobs refused for their grace period, and the longest one asked for.
    too_slow_to_stop: Option<(u32, i64)>,
    held_too_slow: Option<(u32, i64)>,
    /// With `onControllerLoss: FailJobs` and Jobs running here: how often
    /// their deadlines must be looked at.
    deadline_every: Option<Duration>,
    /// Who set the ledger's limit, for the LimitAgreed message.
    limit_source: String,
    spec_limit_applied: u32,
    /// When the ledger the counts come from was read (RFC 3339): it may be
    /// a read of an earlier pass (`known_ledger`).
    read_at: Option<String>,
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
    let finalized = group.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = group.metadata.deletion_timestamp.is_some();
    if deleting && !finalized {
        ctx.ledgers.forget(&ns, &name).await;
        return Ok(Action::await_change());
    }
    if !finalized {
        set_finalizer(&ctx, &group, &ns, true).await?;
    }
    if deleting && group.annotations().contains_key(ABANDON_ANNOTATION) {
        // What this process holds for it, for the message.
        let held = match ctx.ledgers.current(&ns, &name).await {
            Some(gl) => Held::Known(gl.permits().0.len() as u32),
            None => Held::Unknown,
        };
        if let Step::Abandon(why) = deletion::step(held, Duration::ZERO, ctx.deletion_timeout, true)
        {
            return finish_deletion(&ctx, &group, &ns, Some(why)).await;
        }
    }
    let labels = GroupLabels {
        namespace: ns.clone(),
        group: name.clone(),
    };
    let admit_new = !deleting && !group.spec.suspend;
    let waited = group
        .metadata
        .deletion_timestamp
        .as_ref()
        .and_then(|t| {
            let since = k8s_openapi::jiff::Timestamp::now().duration_since(t.0);
            Duration::try_from(since).ok()
        })
        .unwrap_or_default();
    let started = std::time::Instant::now();
    let pass = admit(&group, &ns, &name, &ctx, &labels, admit_new);
    let result = if deleting {
        // A store that does not answer can hold a pass for minutes (request
        // timeouts times retries): the deletion's deadline must not wait
        // for it.
        let left = ctx
            .deletion_timeout
            .saturating_sub(waited)
            .max(Duration::from_secs(1));
        match tokio::time::timeout(left, pass).await {
            Ok(result) => result,
            Err(_) => Err(Error::PassTimedOut(left)),
        }
    } else {
        match unless_deleted(&ctx, &ns, &name, pass).await {
            Some(result) => result,
            None => {
                info!(group = %name, "the group is being deleted; this pass gives way to the deletion's");
                return Ok(Action::requeue(Duration::ZERO));
            }
        }
    };
    let mut observed = Observed {
        generation: group.metadata.generation,
        ledger_key: group.ledger_key(),
        spec_limit: group.spec.limit,
        max_grace_seconds: group.spec.max_grace_period_seconds,
        suspended: group.spec.suspend,
        deleting: deleting.then(|| result.as_ref().map_or(0, |s| s.admitted_here)),
        ..Default::default()
    };
    match &result {
        Ok(s) => {
            observed.limit_source = Some(s.limit_source.clone());
            observed.spec_limit_applied = Some(s.spec_limit_applied);
            observed.ledger_limit = Some(s.ledger_limit);
            observed.in_use = Some(s.in_use);
            observed.ledger_read_at = s.read_at.clone();
            observed.admitted_here = Some(s.admitted_here);
            observed.waiting_here = Some(s.waiting_here);
            observed.too_slow_to_stop = s.too_slow_to_stop;
            observed.held_too_slow = s.held_too_slow;
            let m = &ctx.metrics;
            m.waiting
                .get_or_create(&labels)
                .set(i64::from(s.waiting_here));
            m.in_use.get_or_create(&labels).set(i64::from(s.in_use));
            m.admitted_here
                .get_or_create(&labels)
                .set(i64::from(s.admitted_here));
            m.limit
                .get_or_create(&labels)
                .set(i64::from(s.ledger_limit));
        }
        Err(e) => {
            observed.problem = Some(match e {
                Error::OpenLedger(inner) | Error::ReadLedger(inner) | Error::WriteLedger(inner) => {
                    Problem::from_ledger(inner)
                }
                Error::Credentials { .. }
                | Error::CredentialsMissing { .. }
                | Error::CredentialsForbidden { .. }
                | Error::CredentialsIncomplete { .. } => {
                    Problem::new("CredentialsUnavailable", e.to_string())
                }
                Error::InvalidTiming(_) => Problem::new("LeaseTooShort", e.to_string()),
                Error::LedgerNotAllowed(why) => Problem::new("LedgerNotAllowed", why.clone()),
                other => Problem::new("ReconcileFailed", other.to_string()),
            });
        }
    }
    // As the Ready condition says.
    ctx.metrics
        .group_ready
        .get_or_create(&labels)
        .set(i64::from(observed.problem.is_none()));
    let status_result = update_status(&group, &ns, &name, &observed, &ctx).await;
    if deleting {
        let open_here = ctx.ledgers.current(&ns, &name).await.is_some();
        let held = match &result {
            Ok(s) => Held::Known(s.admitted_here),
            // Refused with no client in this process: nothing was admitted
            // through it here (Jobs admitted before a restart with a
            // narrower allowlist were suspended by the pass that refused it).
            Err(Error::LedgerNotAllowed(_)) if !open_here => Held::Known(0),
            Err(e) if e.is_ledger_unusable() => Held::LedgerUnusable,
            // Anything else (an API call failed): keep trying, with no
            // timeout, since the ledger itself is fine.
            Err(_) => Held::Unknown,
        };
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
    let wait = if summary.waiting_here > 0 && admit_new || deleting {
        ctx.poll_waiting
    } else {
        ctx.poll_idle
    };
    let wait = summary.deadline_every.map_or(wait, |every| wait.min(every));
    let wait = status_due.map_or(wait, |due| wait.min(due));
    Ok(Action::requeue(wait))
}

/// Runs a pass of a group that is not being deleted, and gives it up
/// (`None`) if the group's deletion begins meanwhile. A pass can be held for
/// minutes by a store that does not answer (request timeouts times
/// retries), and passes of one group never overlap: the deletion's own
/// pass, which is bounded by the deletion timeout, would wait behind it.
/// Giving a pass up is safe: each pass decides afresh from the ledger and
/// the Jobs, and a grant it leaves unused is taken up again by holder id.
async fn unless_deleted<T>(
    ctx: &Context,
    ns: &str,
    name: &str,
    pass: impl Future<Output = T>,
) -> Option<T> {
    // Only a pass that is already slow asks: most end within milliseconds.
    const EVERY: Duration = Duration::from_secs(1);
    let api: Api<ConcurrencyGroup> = Api::namespaced(ctx.client.clone(), ns);
    let deleted = async {
        loop {
            tokio::time::sleep(EVERY).await;
            match timed(ctx, "get_group", api.get_opt(name)).await {
                Ok(Some(g)) if g.metadata.deletion_timestamp.is_none() => {}
                Ok(_) => return,
                // Unknown: let the pass go on.
                Err(e) => debug!(error = %e, "could not read the group during a slow pass"),
            }
        }
    };
    tokio::select! {
        result = pass => Some(result),
        () = deleted => None,
    }
}

pub fn error_policy(group: Arc<ConcurrencyGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %error, kind = error.kind(), "reconciliation failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&super::metrics::ErrorLabels {
            kind: error.kind().to_string(),
        })
        .inc();
    let retry = Duration::from_secs(5);
    // Deadlines of `FailJobs` groups must be moved on however the rest of
    // the pass fares.
    let fail_jobs = group.spec.on_controller_loss == ControllerLossPolicy::FailJobs;
    match group.spec.fence_after(ctx.settings.leader_lease) {
        Ok(fence_after) if fail_jobs => Action::requeue(retry.min(fence_after / 4)),
        _ => Action::requeue(retry),
    }
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
    let gathered = match group.spec.fence_after(ctx.settings.leader_lease) {
        Ok(fence_after) if current.is_none() && ctx.fence_without_ledger => {
            // No client for this group yet (this process just started, or
            // rebuilt it): no permit vouches for the Jobs admitted before.
            // They are safe only while the previous process's renewals
            // are: up to `fence_after` after its last one, which came at
            // most a third of that before it stopped. Waiting for the
            // ledger a third of `fence_after` keeps a restart within that
            // third safe; past it the Jobs are suspended, and the ledger
            // still awaited.
            let gathering = gather(group, ns, name, ctx, jobs_api.clone());
            tokio::pin!(gathering);
            tokio::select! {
                gathered = &mut gathering => gathered,
                _ = tokio::time::sleep(fence_after / 3) => {
                    warn!(group = name, "the ledger could not be read in time after a start; suspending the running Jobs no permit vouches for");
                    if let Err(fence) = fence_without_ledger(ctx, group, &jobs_api, None, false).await {
                        warn!(error = %fence, "could not suspend Jobs while the ledger is unreadable");
                    }
                    gathering.await
                }
            }
        }
        Ok(_) => gather(group, ns, name, ctx, jobs_api.clone()).await,
        Err(e) => Err(Error::InvalidTiming(e)),
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
    // The cache can lag behind this process's own writes (a Job it just
    // unsuspended still shown suspended and without pods) or miss a Job
    // another replica admitted: a slot freed on such a view would be taken
    // elsewhere while the Job's pods run. Finished is final; every other
    // release, and any lost slot, is decided again from a LIST made now,
    // after the ledger read as before. Such passes are few.
    let unsure = !decision.lost.is_empty()
        || decision
            .release
            .iter()
            .any(|(_, why)| *why != ReleaseReason::Finished);
    if unsure && ctx.jobs.is_ready() {
        pass.jobs = by_uid(list_jobs(ctx, &pass.jobs_api, name).await?);
        pass.views = pass.jobs.values().filter_map(|j| job_view(j)).collect();
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

/// `jobgate_oldest_waiting_job_seconds`: how long the group's longest-waiting
/// Job has waited, or no series while none waits.
fn export_oldest_waiting(ctx: &Context, views: &[JobView], labels: &GroupLabels) {
    let since =
        admission::oldest_waiting(views).and_then(|created| humantime::parse_rfc3339(created).ok());
    match since {
        Some(created) => {
            let age = std::time::SystemTime::now()
                .duration_since(created)
                .unwrap_or_default();
            ctx.metrics
                .oldest_waiting
                .get_or_create(labels)
                .set(age.as_secs_f64());
        }
        None => {
            ctx.metrics.oldest_waiting.remove(labels);
        }
    }
}

/// `onControllerLoss: FailJobs`: moves on the deadline of each Job running
/// on a live permit here (see `deadline`); without it, gives Jobs back the
/// deadline they had. A Job whose patch fails is logged and left to the
/// next pass. Returns how soon to look again while any is managed.
async fn keep_deadlines(
    ctx: &Context,
    gl: &GroupLedger,
    group: &ConcurrencyGroup,
    jobs_api: &Api<Job>,
    labels: &GroupLabels,
) -> Option<Duration> {
    let fail_jobs = group.spec.on_controller_loss == ControllerLossPolicy::FailJobs;
    let fence_after = group.spec.fence_after(ctx.settings.leader_lease).ok()?;
    let ns = group.namespace().unwrap_or_default();
    let jobs = match group_jobs(ctx, jobs_api, &ns, &group.name_any()).await {
        Ok(jobs) => jobs,
        Err(e) => {
            warn!(error = %e, "could not list Jobs to keep their deadlines");
            return fail_jobs.then_some(fence_after / 4);
        }
    };
    let (permits, lost) = gl.permits();
    let mut managing = false;
    for job in &jobs {
        let Some(uid) = job.uid() else { continue };
        let recorded = job
            .annotations()
            .get(deadline::USER_DEADLINE_ANNOTATION)
            .map(String::as_str);
        let current = job.spec.as_ref().and_then(|s| s.active_deadline_seconds);
        let user = deadline::user_deadline(recorded, current);
        let patch = if !fail_jobs {
            if recorded.is_none() {
                continue;
            }
            // The group stopped using the switch: the Job's own deadline back.
            json!({
                "metadata": {"annotations": {deadline::USER_DEADLINE_ANNOTATION: null}},
                "spec": {"activeDeadlineSeconds": user},
            })
        } else {
            let running = job.spec.as_ref().and_then(|s| s.suspend) != Some(true)
                && !is_finished(job)
                && is_admitted(job);
            if !running || !permits.contains(&uid) || lost.contains(&uid) {
                continue;
            }
            let Some(want) = deadline_for(gl, job, user) else {
                continue;
            };
            managing = true;
            if !deadline::needs_patch(current, want) {
                continue;
            }
            json!({
                "metadata": {"annotations": {deadline::USER_DEADLINE_ANNOTATION: deadline::record(user)}},
                "spec": {"activeDeadlineSeconds": want},
            })
        };
        // As seen: a deadline counted from a startTime the cache has not
        // caught up with could fall after the fence. A conflict's event
        // brings another pass.
        match patch_job_as_seen(ctx, jobs_api, job, patch).await {
            Ok(false) => {}
            Ok(true) if fail_jobs => {
                ctx.metrics.deadline_patches.get_or_create(labels).inc();
                debug!(job = %job.name_any(), "deadline moved on");
            }
            Ok(true) => {}
            Err(e) => warn!(job = %job.name_any(), error = %e, "could not set the Job's deadline"),
        }
    }
    // Every renewal (a third of the fence period) moves the deadlines on;
    // a pass per quarter keeps them within that of the fence.
    managing.then_some(fence_after / 4)
}

/// The `activeDeadlineSeconds` that ends `job` [`deadline::AFTER_FENCE`]
/// after this cluster's slots stop being safe, counted from the Job's
/// `startTime` (the old one, for a Job that resumes with one: the Job
/// controller checks against it before resetting it; admissions clear it
/// first under `FailJobs`). `None` while no slot is safe.
fn deadline_for(gl: &GroupLedger, job: &Job, user: Option<i64>) -> Option<i64> {
    let now = tokio::time::Instant::now();
    let stop_at = gl.sem.safe_until().filter(|t| *t > now)?;
    let stop_in = (stop_at + deadline::AFTER_FENCE).duration_since(now);
    let running_for = started_at(job)
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Some(deadline::wanted(running_for, stop_in, user))
}

/// The Job's `status.startTime`: when it last started running.
fn started_at(job: &Job) -> Option<std::time::SystemTime> {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| std::time::SystemTime::from(t.0))
}

/// Removes the `startTime` of a suspended Job that ran before (as Kueue
/// does), so that when it is resumed its deadline counts from the resume.
/// The Job as it is then, or `None` if it changed or went meanwhile (the
/// API server refuses the patch for a Job no longer suspended).
async fn clear_start_time(ctx: &Context, api: &Api<Job>, job: &Job) -> Result<Option<Job>> {
    let name = job.name_any();
    let patch = json!({
        "metadata": {"uid": job.uid(), "resourceVersion": job.resource_version()},
        "status": {"startTime": null},
    });
    let result = timed(
        ctx,
        "patch_job_status",
        api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await;
    match result {
        Ok(fresh) => Ok(Some(fresh)),
        Err(kube::Error::Api(e)) if matches!(e.code, 404 | 409 | 422) => Ok(None),
        Err(source) => Err(Error::PatchJob { name, source }),
    }
}

/// What one pass works from, read in this order.
struct Pass {
    gl: Arc<GroupLedger>,
    jobs_api: Api<Job>,
    /// The group's Jobs by UID.
    jobs: BTreeMap<String, Arc<Job>>,
    views: Vec<JobView>,
    /// The slots the ledger says this cluster holds.
    held_in_ledger: BTreeSet<String>,
    wait_recorded: bool,
    /// Of the held slots whose Job is gone or finished, those with pods that
    /// may still run.
    live_pods: BTreeSet<String>,
    spec_limit_applied: u32,
    /// The ledger's limit as read.
    limit: u32,
}

/// Suspends the running Jobs that nothing vouches for without a ledger read:
/// with `lost_only`, those whose permit here is lost; else also those this
/// process holds no permit for (see `admission::fence_without_ledger`).
async fn fence_without_ledger(
    ctx: &Context,
    group: &ConcurrencyGroup,
    jobs_api: &Api<Job>,
    current: Option<&GroupLedger>,
    lost_only: bool,
) -> Result<()> {
    let suspend_on_loss = group.spec.on_lease_loss == LeaseLossPolicy::Suspend;
    if !suspend_on_loss {
        return Ok(());
    }
    let (permits, lost) = current.map(GroupLedger::permits).unwrap_or_default();
    let ns = group.namespace().unwrap_or_default();
    // Listed now: the cache may still show a Job this process unsuspended
    // as suspended. The cache's copy only if the API server does not answer.
    let jobs = match list_jobs(ctx, jobs_api, &group.name_any()).await {
        Ok(listed) => listed,
        Err(e) => {
            warn!(error = %e, "could not list Jobs to fence; using the watch's copy");
            ctx.jobs.of_group(&ns, &group.name_any())
        }
    };
    let views: Vec<JobView> = jobs.iter().filter_map(|j| job_view(j)).collect();
    let permits = if lost_only {
        &views.iter().map(|j| j.uid.clone()).collect()
    } else {
        &permits
    };
    let fence = admission::fence_without_ledger(&views, permits, &lost, suspend_on_loss);
    for job in jobs
        .iter()
        .filter(|j| j.uid().is_some_and(|u| fence.contains(&u)))
    {
        let note = if lost.contains(&job.uid().unwrap_or_default()) {
            "this cluster could not renew its lease on the ledger in time; suspended to keep the limit, it waits for a slot again"
        } else {
            "the ledger cannot be read and this controller holds no lease for this Job's slot, so the slot may already be taken elsewhere; suspended to keep the limit, it waits for a slot again"
        };
        suspend(ctx, jobs_api, job, "LeaseLost", note.into()).await?;
    }
    Ok(())
}

/// Gather: the allowlist check, credentials, the ledger client, the
/// ledger, then the Jobs.
async fn gather(
    group: &ConcurrencyGroup,
    ns: &str,
    name: &str,
    ctx: &Context,
    jobs_api: Api<Job>,
) -> Result<Pass> {
    // First of all: a group outside the allowlist gets neither its
    // credentials Secret read nor a single S3 request made for it, so that
    // naming another tenant's ledger reveals and changes nothing.
    ctx.allowlist
        .allowed(&group.spec.ledger.bucket, &group.ledger_key(), ns, name)
        .map_err(Error::LedgerNotAllowed)?;
    let gl = match credentials(group, ns, ctx).await {
        Ok(creds) => ctx
            .ledgers
            .get(group, creds, &ctx.settings, &ctx.metrics)
            .await
            .map_err(Error::OpenLedger)?,
        // A group being deleted keeps the client it has: its Secret may go
        // with it (a namespace being deleted), and its slots must still be
        // given back as its Jobs' pods stop.
        Err(e) => match ctx.ledgers.current(ns, name).await {
            Some(gl) if group.metadata.deletion_timestamp.is_some() => gl,
            _ => return Err(e),
        },
    };
    // The ledger first, then the Jobs: every slot held in this snapshot was
    // granted for a Job already in the cache (by this process, or by one
    // before it, whose Jobs the cache's first LIST took in), so the cache
    // shows its Job unless it is gone.
    // A new spec.limit is weighed against the ledger as it is now.
    let applied = (*lock(&gl.limit_applied))
        .or_else(|| group.status.as_ref().and_then(|s| s.spec_limit_applied));
    let mut ledger = if applied == Some(group.spec.limit) {
        known_ledger(&gl, ctx).await?
    } else {
        gl.sem.snapshot().await.map_err(Error::ReadLedger)?
    };
    // A new spec.limit goes into the ledger before anything is admitted
    // under the old one.
    let plan = limits::plan(
        group.spec.limit,
        group.metadata.generation,
        applied,
        Some(&ledger),
        &gl.agent,
    );
    if let Some(change) = plan.change {
        info!(
            group = name,
            from = ledger.limit,
            to = change.limit,
            "writing the new limit to the ledger"
        );
        ledger = gl.sem.set_limit(change).await.map_err(Error::WriteLedger)?;
    }
    *lock(&gl.limit_applied) = Some(plan.applied);
    let jobs = by_uid(group_jobs(ctx, &jobs_api, ns, name).await?);
    let held_in_ledger: BTreeSet<String> = ledger.holders_of(&gl.agent).cloned().collect();
    let live_pods = pods_left(ctx, ns, &gl, &held_in_ledger, &jobs).await?;
    Ok(Pass {
        spec_limit_applied: plan.applied,
        limit: ledger.limit,
        views: jobs.values().filter_map(|j| job_view(j)).collect(),
        held_in_ledger,
        live_pods,
        wait_recorded: ledger.agents.get(&gl.agent).is_some_and(|a| a.waiting > 0),
        jobs,
        jobs_api,
        gl,
    })
}

/// The group's Jobs from the watch's cache, or listed while its first LIST
/// is not in yet (never waited for: fences and deadlines must not wait on
/// a watch).
async fn group_jobs(ctx: &Context, api: &Api<Job>, ns: &str, group: &str) -> Result<Vec<Arc<Job>>> {
    // Shared with the cache, not copied: a pass at depth reads thousands.
    if ctx.jobs.is_ready() {
        return Ok(ctx.jobs.of_group(ns, group));
    }
    list_jobs(ctx, api, group).await
}

/// The group's Jobs listed now, pruned as the cache's are. In pages, each
/// pruned as it comes: a group's whole list at once would hold every Job in
/// full (pod template, managed fields) in memory together, which at depth
/// was most of the controller's peak.
async fn list_jobs(ctx: &Context, api: &Api<Job>, group: &str) -> Result<Vec<Arc<Job>>> {
    const PAGE: u32 = 500;
    let mut params = ListParams::default()
        .labels(&format!("{GROUP_LABEL}={group}"))
        .limit(PAGE);
    let mut jobs = Vec::new();
    loop {
        let page = timed(ctx, "list_jobs", api.list(&params))
            .await
            .map_err(Error::GatherJobs)?;
        jobs.extend(page.items.into_iter().map(|mut job| {
            job_cache::prune(&mut job);
            Arc::new(job)
        }));
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(jobs),
        }
    }
}

fn by_uid(jobs: Vec<Arc<Job>>) -> BTreeMap<String, Arc<Job>> {
    jobs.into_iter()
        .filter_map(|j| j.uid().map(|uid| (uid, j)))
        .collect()
}

/// Of the slots held here (in the ledger, or lost), those whose freeing
/// waits on pods ([`admission::frees_on_pods`]) and whose pods may still
/// run: one pod list, and only in passes that may free such a slot.
async fn pods_left(
    ctx: &Context,
    ns: &str,
    gl: &GroupLedger,
    held: &BTreeSet<String>,
    jobs: &BTreeMap<String, Arc<Job>>,
) -> Result<BTreeSet<String>> {
    if !ctx.count_pods {
        return Ok(BTreeSet::new());
    }
    let (_, lost) = gl.permits();
    let candidates: Vec<&String> = held
        .union(&lost)
        .filter(|uid| {
            let view = jobs.get(*uid).and_then(|j| job_view(j));
            admission::frees_on_pods(view.as_ref(), lost.contains(*uid))
        })
        .collect();
    live_pods(ctx, ns, &candidates).await
}

/// The Job controller labels every pod of a Job with the Job's UID; the
/// label stays on pods the Job orphaned.
const CONTROLLER_UID_LABEL: &str = "batch.kubernetes.io/controller-uid";

/// Which of `jobs` (UIDs) have pods that may still run: not yet Succeeded or
/// Failed, so pending, running, or terminating.
async fn live_pods(ctx: &Context, ns: &str, jobs: &[&String]) -> Result<BTreeSet<String>> {
    if jobs.is_empty() {
        return Ok(BTreeSet::new());
    }
    let uids: Vec<&str> = jobs.iter().map(|u| u.as_str()).collect();
    let selector = format!("{CONTROLLER_UID_LABEL} in ({})", uids.join(","));
    let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
    let pods = timed(
        ctx,
        "list_pods",
        api.list(&ListParams::default().labels(&selector)),
    )
    .await
    .map_err(Error::GatherPods)?;
    Ok(pods
        .items
        .iter()
        .filter(|p| {
            let phase = p.status.as_ref().and_then(|s| s.phase.as_deref());
            !matches!(phase, Some("Succeeded" | "Failed"))
        })
        .filter_map(|p| p.labels().get(CONTROLLER_UID_LABEL).cloned())
        .collect())
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

/// Fence: suspend Jobs whose slot is lost before anything touches the
/// ledger, so that they stop even when it cannot be reached.
async fn fence(ctx: &Context, pass: &Pass, decision: &Decision) -> Result<()> {
    for uid in &decision.fence {
        if let Some(job) = pass.jobs.get(uid) {
            suspend(
                ctx,
                &pass.jobs_api,
                job,
                "LeaseLost",
                "this cluster could not renew its lease on the ledger in time; suspended to keep the limit, it waits for a slot again".into(),
            )
            .await?;
        }
    }
    Ok(())
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
    let acquires = decision.acquire();
    // Looked up, not searched for: at depth every waiting Job asks.
    let slots: BTreeMap<&str, u32> = pass
        .views
        .iter()
        .map(|j| (j.uid.as_str(), j.slots))
        .collect();
    let weighted: Vec<(String, u32)> = acquires
        .iter()
        .map(|uid| {
            let slots = slots.get(uid.as_str()).copied().unwrap_or(1);
            (uid.clone(), slots.max(1))
        })
        .collect();
    let answers = gl
        .sem
        .release_and_try_acquire(&releases, &weighted)
        .await
        .map_err(Error::WriteLedger)?;
    // Forget released permits before tracking grants: a lost slot given up
    // and granted again in this write must stay watched.
    {
        let mut permits = lock(&gl.permits);
        for uid in &releases {
            permits.remove(uid);
        }
    }
    for (uid, answer) in acquires.iter().zip(answers) {
        match answer {
            // Granted too late to be safe: it waits, and the next pass gives
            // the slot up.
            Ok(Some(permit)) if permit.is_lost() => {
                warn!(
                    job = uid,
                    "granted a slot whose lease had already run out; not admitted"
                );
                let job = pass.jobs.get(uid).map(|j| j.name_any()).unwrap_or_default();
                track(gl, ctx, group, &job, permit);
            }
            Ok(Some(permit)) => {
                granted.insert(uid.clone(), permit.token);
                let job = pass.jobs.get(uid).map(|j| j.name_any()).unwrap_or_default();
                track(gl, ctx, group, &job, permit);
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

/// Patch Jobs: report releases, then act on the grants. Returns how many
/// Jobs wait for a slot here, and the ledger if it read it.
async fn patch_jobs(
    ctx: &Arc<Context>,
    pass: &Pass,
    group: &ConcurrencyGroup,
    decision: &Decision,
    granted: &BTreeMap<String, u64>,
    labels: &GroupLabels,
) -> Result<(u32, Option<Ledger>)> {
    let gl = &pass.gl;
    lock(&gl.announced_waiting).retain(|uid| pass.jobs.contains_key(uid));
    lock(&gl.announced_refused).retain(|key| {
        key.split_once('/')
            .is_some_and(|(_, uid)| pass.jobs.contains_key(uid))
    });
    report_releases(ctx, pass, decision, labels).await;
    disown(ctx, pass, decision).await?;
    refuse_too_slow(ctx, pass, group, decision).await?;
    refuse_bad_slots(ctx, pass, decision).await?;
    leave_to_kueue(ctx, pass, decision);
    let held_back = hold_back(ctx, pass, group, decision).await;
    let actions = admission::on_grants(
        decision,
        &pass.views,
        granted,
        group.spec.on_lease_loss == LeaseLossPolicy::Keep,
    );
    if actions.is_empty() {
        return Ok((held_back, None));
    }
    // For the messages: the ledger as of this pass's write.
    let now = known_ledger(gl, ctx).await?;
    let (in_use, limit, name) = (now.in_use(), now.limit, group.name_any());
    let mut waiting = held_back;
    // Admissions first, several at once: the next pass (and the next freed
    // slot's admission) waits for this one. A bounded number in flight, a
    // new one started as each ends (not in chunks, which wait for their
    // slowest patch); pushed in a loop, not mapped by a closure, which the
    // compiler cannot prove Send here.
    let admit: Vec<(&String, u64)> = actions
        .iter()
        .filter_map(|action| match action {
            JobAction::Unsuspend { uid, token } => Some((uid, *token)),
            _ => None,
        })
        .collect();
    let mut admitted = Vec::new();
    let mut next = admit.into_iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for (uid, token) in next.by_ref().take(JOB_PATCHES_AT_ONCE) {
        in_flight.push(admit_one(ctx, pass, group, uid, token, labels));
    }
    while let Some(result) = futures::StreamExt::next(&mut in_flight).await {
        admitted.push(result);
        if let Some((uid, token)) = next.next() {
            in_flight.push(admit_one(ctx, pass, group, uid, token, labels));
        }
    }
    drop(in_flight);
    admitted.into_iter().collect::<Result<()>>()?;
    // A Waiting Job's place in the queue as it is after this pass's grants.
    let queue: Vec<&String> = decision
        .admit
        .iter()
        .filter(|u| !granted.contains_key(*u))
        .collect();
    let place: BTreeMap<&str, usize> = queue
        .iter()
        .enumerate()
        .map(|(at, uid)| (uid.as_str(), at))
        .collect();
    for action in actions {
        match action {
            JobAction::Unsuspend { .. } => {}
            JobAction::Wait { uid } => {
                let Some(job) = pass.jobs.get(&uid) else {
                    continue;
                };
                waiting += 1;
                if lock(&gl.announced_waiting).insert(uid.clone()) {
                    let note = match place.get(uid.as_str()) {
                        Some(at) => explain::waiting(at + 1, queue.len(), &now, &gl.agent),
                        // Holds a slot not confirmed yet (not in the queue).
                        None => format!(
                            "waiting for its slot to be confirmed; {}",
                            explain::usage(&now, &gl.agent)
                        ),
                    };
                    publish(ctx, job, EventType::Normal, "Waiting", "Admit", note);
                }
            }
            JobAction::Adopt { uid, token } => {
                let Some(job) = pass.jobs.get(&uid) else {
                    continue;
                };
                // Lost since the write (the ledger read above can be slow):
                // a later pass gives the slot up instead.
                if lock(&gl.permits).get(&uid).is_some_and(Permit::is_lost) {
                    continue;
                }
                let deadline = first_deadline(pass, group, job);
                adopt(ctx, &pass.jobs_api, job, token, deadline, &name, labels).await?;
            }
            JobAction::KeepOverLimit { uid } => {
                let Some(job) = pass.jobs.get(&uid) else {
                    continue;
                };
                let note = "this Job lost its slot and keeps running because onLeaseLoss is Keep; the limit may be exceeded until it ends";
                publish(
                    ctx,
                    job,
                    EventType::Warning,
                    "OverLimit",
                    "Admit",
                    note.into(),
                );
            }
            JobAction::SuspendNoSlot { uid } => {
                let Some(job) = pass.jobs.get(&uid) else {
                    continue;
                };
                waiting += 1;
                let note = format!(
                    "created without spec.suspend: true and no slot is free ({in_use}/{limit} in use); suspended until one is. Create Jobs of group {name} with spec.suspend: true"
                );
                suspend(ctx, &pass.jobs_api, job, "SuspendedNoSlot", note).await?;
            }
        }
    }
    Ok((waiting, Some(now)))
}

/// Marks suspended Jobs that hold no slot as no longer admitted, while
/// they stay suspended: resumed, they wait for a slot like any other.
async fn disown(ctx: &Context, pass: &Pass, decision: &Decision) -> Result<()> {
    let paused = |j: &Job| j.spec.as_ref().and_then(|s| s.suspend) == Some(true) && is_admitted(j);
    for uid in &decision.disown {
        let Some(job) = pass.jobs.get(uid) else {
            continue;
        };
        let patch = json!({"metadata": {"annotations": not_admitted()}});
        if patch_while(ctx, &pass.jobs_api, job, paused, patch).await? {
            info!(job = %job.name_any(), "a suspended Job without a slot is no longer admitted; resumed, it waits for one");
        }
    }
    Ok(())
}

/// Unsuspends a Job granted a slot in this pass, unless the slot was lost
/// since the write (the ledger read before can be slow): a later pass gives
/// it up instead.
async fn admit_one(
    ctx: &Context,
    pass: &Pass,
    group: &ConcurrencyGroup,
    uid: &str,
    token: u64,
    labels: &GroupLabels,
) -> Result<()> {
    let Some(job) = pass.jobs.get(uid) else {
        return Ok(());
    };
    if lock(&pass.gl.permits).get(uid).is_some_and(Permit::is_lost) {
        return Ok(());
    }
    // A Job that ran before keeps its old startTime while suspended: the
    // Job controller checks the deadline against it as it resumes the Job,
    // then restarts the clock, so a deadline set now would either fail the
    // Job at once or, counted from the old start, end it late by its
    // earlier run time until the next pass. Without a startTime it counts
    // from the resume, as the deadline set here does.
    let cleared;
    let job = if group.spec.on_controller_loss == ControllerLossPolicy::FailJobs
        && started_at(job).is_some()
    {
        match clear_start_time(ctx, &pass.jobs_api, job).await? {
            Some(fresh) => {
                cleared = fresh;
                &cleared
            }
            // Changed meanwhile: its event brings another pass.
            None => return Ok(()),
        }
    } else {
        job.as_ref()
    };
    let deadline = first_deadline(pass, group, job);
    if unsuspend(ctx, &pass.jobs_api, job, token, deadline, labels).await? {
        lock(&pass.gl.announced_waiting).remove(uid);
    }
    Ok(())
}

/// How many Job patches (or Events) one pass has in flight at once.
const JOB_PATCHES_AT_ONCE: usize = 16;

/// Jobs whose `jobgate.dev/slots` cannot be served are not admitted:
/// running ones are suspended, waiting ones told once why.
async fn refuse_bad_slots(ctx: &Context, pass: &Pass, decision: &Decision) -> Result<()> {
    for uid in &decision.bad_slots {
        let (Some(job), Some(view)) = (
            pass.jobs.get(uid),
            pass.views.iter().find(|j| &j.uid == uid),
        ) else {
            continue;
        };
        let asked = job
            .annotations()
            .get(SLOTS_ANNOTATION)
            .cloned()
            .unwrap_or_default();
        let note = if view.slots == 0 {
            format!(
                "annotation {SLOTS_ANNOTATION}: {asked:?} is not a positive whole number; not admitted. Set it to how many units of the group's limit the Job takes, e.g. \"2\""
            )
        } else {
            format!(
                "annotation {SLOTS_ANNOTATION}: {asked:?} is more than the group's limit {}, so it could never run; not admitted. Lower it, or raise the limit",
                pass.limit
            )
        };
        if !view.suspended {
            suspend(ctx, &pass.jobs_api, job, "InvalidSlots", note).await?;
        } else if lock(&pass.gl.announced_refused).insert(format!("InvalidSlots/{uid}")) {
            publish(ctx, job, EventType::Warning, "InvalidSlots", "Admit", note);
        }
    }
    Ok(())
}

/// Jobs that name a Kueue queue are told once that jobgate leaves them to
/// Kueue: both controllers toggling `spec.suspend` would fight.
fn leave_to_kueue(ctx: &Context, pass: &Pass, decision: &Decision) {
    for uid in &decision.in_kueue {
        let Some(job) = pass.jobs.get(uid) else {
            continue;
        };
        if lock(&pass.gl.announced_refused).insert(format!("ManagedByKueue/{uid}")) {
            let queue = job
                .labels()
                .get(KUEUE_QUEUE_LABEL)
                .cloned()
                .unwrap_or_default();
            let note = format!(
                "this Job also names Kueue queue {queue:?} ({KUEUE_QUEUE_LABEL}); Kueue suspends and resumes it, so jobgate neither admits nor suspends it and its group's limit does not count it. Remove one of the two labels"
            );
            publish(
                ctx,
                job,
                EventType::Warning,
                "ManagedByKueue",
                "Admit",
                note,
            );
        }
    }
}

/// Waiting Jobs of a group that admits nothing new are told once why.
/// Returns how many there are.
async fn hold_back(
    ctx: &Context,
    pass: &Pass,
    group: &ConcurrencyGroup,
    decision: &Decision,
) -> u32 {
    let mut told = lock(&pass.gl.announced_held).clone();
    if decision.held_back.is_empty() {
        // Admitting again: tell them again next time.
        lock(&pass.gl.announced_held).clear();
        return 0;
    }
    let (reason, note) = if group.metadata.deletion_timestamp.is_some() {
        (
            "GroupDeleting",
            format!(
                "group {} is being deleted: this Job is not admitted. Recreate the group to admit it, or delete the Job",
                group.name_any()
            ),
        )
    } else {
        (
            "GroupSuspended",
            format!(
                "group {} is suspended (spec.suspend: true): this Job keeps its place and is admitted once the group is resumed",
                group.name_any()
            ),
        )
    };
    for uid in &decision.held_back {
        let Some(job) = pass.jobs.get(uid) else {
            continue;
        };
        if told.insert(format!("{reason}/{uid}")) {
            publish(ctx, job, EventType::Normal, reason, "Admit", note.clone());
        }
    }
    told.retain(|key| {
        key.split_once('/')
            .is_some_and(|(_, uid)| pass.jobs.contains_key(uid))
    });
    *lock(&pass.gl.announced_held) = told;
    decision.held_back.len() as u32
}

/// Jobs whose pods may take longer to stop than the group allows are not
/// admitted: running ones are suspended, waiting ones told once why.
async fn refuse_too_slow(
    ctx: &Context,
    pass: &Pass,
    group: &ConcurrencyGroup,
    decision: &Decision,
) -> Result<()> {
    let max = group.spec.max_grace_period_seconds;
    for uid in &decision.too_slow_to_stop {
        let (Some(job), Some(view)) = (
            pass.jobs.get(uid),
            pass.views.iter().find(|j| &j.uid == uid),
        ) else {
            continue;
        };
        let note = format!(
            "its pods may take {} s to stop (terminationGracePeriodSeconds), more than the group's maxGracePeriodSeconds {max}, so its slot could not be given up in time if this cluster lost its lease; not admitted. Lower the grace period, or raise the group's maxGracePeriodSeconds and leaseSeconds",
            view.grace_seconds
        );
        if !view.suspended {
            suspend(ctx, &pass.jobs_api, job, "GracePeriodTooLong", note).await?;
        } else if lock(&pass.gl.announced_waiting).insert(uid.clone()) {
            publish(
                ctx,
                job,
                EventType::Warning,
                "GracePeriodTooLong",
                "Admit",
                note,
            );
        }
    }
    Ok(())
}

/// Exports the ledger client's write and conflict counters.
fn export_counters(ctx: &Context, gl: &GroupLedger, labels: &GroupLabels) {
    let stats = gl.sem.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let conflicts = stats.conflicts.load(std::sync::atomic::Ordering::Relaxed);
    let mut exported = lock(&gl.exported);
    ctx.metrics
        .ledger_writes
        .get_or_create(labels)
        .inc_by(commits.saturating_sub(exported.0));
    ctx.metrics
        .ledger_conflicts
        .get_or_create(labels)
        .inc_by(conflicts.saturating_sub(exported.1));
    *exported = (commits, conflicts);
}

/// What the status says after the pass: the ledger as it is now (a
/// conditional GET; usually unchanged), unless patching Jobs just read it.
async fn summarize(
    pass: &Pass,
    decision: &Decision,
    waiting_here: u32,
    read: Option<Ledger>,
    ctx: &Context,
) -> Result<Summary> {
    let gl = &pass.gl;
    let after = match read {
        Some(ledger) => ledger,
        None => known_ledger(gl, ctx).await?,
    };
    // The client's newest copy is `after` or newer, which moves the time
    // back no further than a read of `after` would.
    let read_at = gl.sem.known().map(|known| {
        let then = std::time::SystemTime::now()
            .checked_sub(known.at.elapsed())
            .unwrap_or(std::time::UNIX_EPOCH);
        humantime::format_rfc3339_seconds(then).to_string()
    });
    Ok(Summary {
        ledger_limit: after.limit,
        in_use: after.in_use() as u32,
        admitted_here: after.holders_of(&gl.agent).count() as u32,
        waiting_here,
        too_slow_to_stop: longest_grace(&pass.views, &decision.too_slow_to_stop),
        held_too_slow: longest_grace(&pass.views, &decision.held_too_slow),
        deadline_every: None,
        limit_source: limits::describe_source(after.limit_set.as_ref()),
        spec_limit_applied: 0,
        read_at,
    })
}

/// How many of `uids` there are, and the longest grace period they ask for.
fn longest_grace(views: &[JobView], uids: &[String]) -> Option<(u32, i64)> {
    uids.iter().fold(None, |acc, uid| {
        let grace = views
            .iter()
            .find(|j| &j.uid == uid)
            .map_or(0, |j| j.grace_seconds);
        let (n, longest) = acc.unwrap_or((0, 0));
        Some((n + 1, longest.max(grace)))
    })
}

/// The ledger as this process knows it, read again when that is older
/// than `--poll-idle` or from before this leadership term. A pass needs no
/// fresher ledger: its writes are compare-and-swaps that fail on a stale
/// one (and the client then reads again), its own agent's holders are
/// current as of its last write as long as no other replica wrote under
/// the same agent id (one may have, before this term), and Jobs that wait
/// make the client poll for slots freed elsewhere. Reading at least every
/// `--poll-idle` keeps an idle group's status (the limit in force, slots
/// in use) within that of the ledger, at one GET per `--poll-idle`.
/// With `--unsafe-fence-only-with-ledger` every pass reads the ledger
/// first, as passes did before fencing without it: that mode exists to
/// show what goes wrong when fences wait for a ledger read.
async fn known_ledger(gl: &GroupLedger, ctx: &Context) -> Result<Ledger> {
    match gl.sem.known() {
        Some(known)
            if ctx.fence_without_ledger
                && known.at >= ctx.term_started
                && known.at.elapsed() < ctx.poll_idle =>
        {
            Ok(known.ledger)
        }
        _ => gl.sem.snapshot().await.map_err(Error::ReadLedger),
    }
}

/// Runs an API call and records its latency.
async fn timed<T>(ctx: &Context, call: &'static str, f: impl Future<Output = T>) -> T {
    let started = std::time::Instant::now();
    let out = f.await;
    ctx.metrics.observe_api(call, started.elapsed());
    out
}

/// Remembers a permit and watches it. When its lease cannot be renewed in
/// time, the Job is suspended from here at once (with `onLeaseLoss:
/// Suspend`), not by the next pass, which may be stuck reading a ledger that
/// does not answer; then a pass is asked for.
fn track(
    gl: &Arc<GroupLedger>,
    ctx: &Arc<Context>,
    group: &ConcurrencyGroup,
    job: &str,
    permit: Permit,
) {
    let mut permits = lock(&gl.permits);
    if permits.get(&permit.holder).is_some_and(|p| !p.is_lost()) {
        return;
    }
    let mut watch = permit.clone();
    permits.insert(permit.holder.clone(), permit);
    // Weak: a client that is replaced or shut down marks its permits lost
    // as it stops, and that is no reason to suspend anything.
    let client = Arc::downgrade(gl);
    let ctx = ctx.clone();
    let target = ObjectRef::from_obj(group);
    let suspend_on_loss = group.spec.on_lease_loss == LeaseLossPolicy::Suspend;
    let (ns, job) = (group.namespace().unwrap_or_default(), job.to_string());
    tokio::spawn(async move {
        watch.lost().await;
        // Also ends when the slot is released (not lost) or the client stops.
        let in_use = client.upgrade().is_some();
        if watch.is_lost() && in_use && suspend_on_loss && ctx.fence_without_ledger {
            fence_lost_job(&ctx, &ns, &job, &watch.holder).await;
        }
        let _ = ctx.trigger.send(target);
    });
}

/// Suspends the Job whose slot was just lost, if it still runs.
async fn fence_lost_job(ctx: &Context, ns: &str, name: &str, uid: &str) {
    let api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    // Read until the API server answers (a pass would fence it too, but a
    // pass may be stuck on the ledger): every moment it runs counts.
    let mut pause = Duration::from_millis(200);
    let job = loop {
        match timed(ctx, "get_job", api.get_opt(name)).await {
            Ok(Some(job)) if job.uid().as_deref() == Some(uid) => break job,
            Ok(_) => return,
            Err(e) => {
                warn!(job = name, error = %e, "could not read a Job whose slot was lost; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    };
    if is_finished(&job) || job.spec.as_ref().and_then(|s| s.suspend) == Some(true) {
        return;
    }
    let note = "this cluster could not renew its lease on the ledger in time; suspended to keep the limit, it waits for a slot again";
    if let Err(e) = suspend(ctx, &api, &job, "LeaseLost", note.into()).await {
        warn!(job = name, error = %e, "could not suspend a Job whose slot was lost");
    }
}

async fn credentials(
    group: &ConcurrencyGroup,
    ns: &str,
    ctx: &Context,
) -> Result<Option<Credentials>> {
    let Some(secret_ref) = &group.spec.ledger.credentials_secret_ref else {
        return Ok(None);
    };
    // Only ever the group's own namespace: a group must not borrow the
    // credentials of another tenant (the CRD has no field to name one).
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let secret = timed(ctx, "get_secret", api.get(&secret_ref.name)).await;
    let secret = secret.map_err(|source| Error::reading_secret(&secret_ref.name, ns, source))?;
    super::ledgers::credentials_from_secret(&secret_ref.name, secret).map(Some)
}

/// The annotations that mark a Job as admitted with `token`.
fn admitted(token: u64) -> serde_json::Value {
    json!({
        ADMITTED_AT_ANNOTATION: now_rfc3339(),
        TOKEN_ANNOTATION: token.to_string(),
    })
}

/// A merge patch's value that removes the admission annotations.
fn not_admitted() -> serde_json::Value {
    json!({ADMITTED_AT_ANNOTATION: null, TOKEN_ANNOTATION: null})
}

fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

async fn patch_job(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    mut patch: serde_json::Value,
) -> Result<()> {
    let name = job.name_any();
    // The UID makes the API server refuse the patch if the Job was deleted
    // and re-created under the same name since it was listed.
    patch["metadata"]["uid"] = json!(job.uid());
    let params = PatchParams::default();
    let result = timed(
        ctx,
        "patch_job",
        api.patch(&name, &params, &Patch::Merge(&patch)),
    )
    .await;
    match result {
        Ok(_) => Ok(()),
        // Deleted (or re-created) meanwhile: the next pass frees its slot.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(Error::PatchJob { name, source }),
    }
}

/// With `onControllerLoss: FailJobs`: the deadline a Job starts with, set
/// in the patch that unsuspends it, so that it is covered even if this
/// controller dies before its next pass; and the user's own, to record.
fn first_deadline(pass: &Pass, group: &ConcurrencyGroup, job: &Job) -> Option<(i64, Option<i64>)> {
    if group.spec.on_controller_loss != ControllerLossPolicy::FailJobs {
        return None;
    }
    let current = job.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    let recorded = job
        .annotations()
        .get(deadline::USER_DEADLINE_ANNOTATION)
        .map(String::as_str);
    let user = deadline::user_deadline(recorded, current);
    Some((deadline_for(&pass.gl, job, user)?, user))
}

/// Unsuspends `job` as seen and marks it admitted; `false` if it changed
/// since (its event brings another pass, which unsuspends it then).
async fn unsuspend(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    token: u64,
    deadline: Option<(i64, Option<i64>)>,
    labels: &GroupLabels,
) -> Result<bool> {
    let mut patch = json!({
        "metadata": {"annotations": admitted(token)},
        "spec": {"suspend": false},
    });
    // Pods carry the group and the token (readable through the downward
    // API) when the template may still change: the API server allows that
    // only for a suspended Job that never started.
    let never_started = job
        .status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .is_none();
    if never_started {
        patch["spec"]["template"] = json!({"metadata": {
            "labels": {GROUP_LABEL: labels.group},
            "annotations": {TOKEN_ANNOTATION: token.to_string()},
        }});
    }
    if let Some((seconds, user)) = deadline {
        patch["spec"]["activeDeadlineSeconds"] = json!(seconds);
        patch["metadata"]["annotations"][deadline::USER_DEADLINE_ANNOTATION] =
            json!(deadline::record(user));
    }
    if !patch_job_as_seen(ctx, api, job, patch).await? {
        return Ok(false);
    }
    if deadline.is_some() {
        ctx.metrics.deadline_patches.get_or_create(labels).inc();
    }
    info!(job = %job.name_any(), token, "admitted");
    ctx.metrics.admissions.get_or_create(labels).inc();
    if let Some(created) = &job.metadata.creation_timestamp {
        let waited = std::time::SystemTime::now()
            .duration_since(std::time::SystemTime::from(created.0))
            .unwrap_or_default();
        ctx.metrics
            .admission_wait
            .get_or_create(labels)
            .observe(waited.as_secs_f64());
    }
    publish(
        ctx,
        job,
        EventType::Normal,
        "Admitted",
        "Admit",
        format!("got a slot (fencing token {token}); unsuspended"),
    );
    Ok(true)
}

/// A Job found running without a slot got one: record it as admitted, with
/// its first deadline under `onControllerLoss: FailJobs` in the same patch,
/// so that it is covered even if this controller dies before its next pass.
async fn adopt(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    token: u64,
    deadline: Option<(i64, Option<i64>)>,
    group: &str,
    labels: &GroupLabels,
) -> Result<()> {
    let was_admitted = is_admitted(job);
    let mut patch = json!({
        "metadata": {"annotations": admitted(token)},
    });
    if let Some((seconds, user)) = deadline {
        patch["spec"] = json!({"activeDeadlineSeconds": seconds});
        patch["metadata"]["annotations"][deadline::USER_DEADLINE_ANNOTATION] =
            json!(deadline::record(user));
    }
    // Not dropped on a conflict (a running Job's status changes often): a
    // held Job that runs is never adopted again, and one not marked
    // admitted gets no deadline and would be resumed if suspended.
    let running =
        |j: &Job| j.spec.as_ref().and_then(|s| s.suspend) != Some(true) && !is_finished(j);
    if !patch_while(ctx, api, job, running, patch).await? {
        return Ok(());
    }
    if deadline.is_some() {
        ctx.metrics.deadline_patches.get_or_create(labels).inc();
    }
    ctx.metrics.admissions.get_or_create(labels).inc();
    let note = if was_admitted {
        format!(
            "running without a slot in the ledger; took a free one again (fencing token {token})"
        )
    } else {
        format!(
            "created without spec.suspend: true; a slot was free, so it keeps running (fencing token {token}). Create Jobs of group {group} with spec.suspend: true so they never start before they have a slot"
        )
    };
    publish(
        ctx,
        job,
        EventType::Warning,
        "RunningWithoutSlot",
        "Admit",
        note,
    );
    Ok(())
}

/// Merge-patches `job` as it was seen (its UID and resourceVersion):
/// `false` if it changed since (the watch lagged behind this process's own
/// patch, or another writer's) or is gone. That change's event brings
/// another pass, which decides again; nothing is counted or told twice.
async fn patch_job_as_seen(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    mut patch: serde_json::Value,
) -> Result<bool> {
    let name = job.name_any();
    patch["metadata"]["uid"] = json!(job.uid());
    patch["metadata"]["resourceVersion"] = json!(job.resource_version());
    let result = timed(
        ctx,
        "patch_job",
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
    )
    .await;
    match result {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(false),
        Err(source) => Err(Error::PatchJob { name, source }),
    }
}

/// Suspends a Job that still runs, and tells it why. The patch carries the
/// resourceVersion it was decided on: the watcher of a lost permit and a
/// pass can decide to suspend the same Job at once, and only the one whose
/// patch lands tells the Job (one Event, not two).
async fn suspend(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    reason: &str,
    note: String,
) -> Result<()> {
    let patch = json!({
        "metadata": {"annotations": not_admitted()},
        "spec": {"suspend": true},
    });
    // Suspended meanwhile by someone else, who told it: nothing to do.
    let still_runs = |j: &Job| j.spec.as_ref().and_then(|s| s.suspend) != Some(true);
    if patch_while(ctx, api, job, still_runs, patch).await? {
        warn!(job = %job.name_any(), reason, "suspended");
        publish(ctx, job, EventType::Warning, reason, "Suspend", note);
    }
    Ok(())
}

/// [`patch_job_as_seen`] until the patch lands, while `wanted` holds for
/// the Job as it is: on a conflict it is read again. `false` if it no
/// longer needs the patch, or is gone (deleted, or re-created under the
/// same name). For patches no later pass would make again if this one
/// were dropped on a conflict.
async fn patch_while(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    wanted: impl Fn(&Job) -> bool,
    patch: serde_json::Value,
) -> Result<bool> {
    // A few rounds: other writers (the Job controller's status updates)
    // change the resourceVersion too, but not many times in a row.
    const ROUNDS: usize = 5;
    let name = job.name_any();
    let mut seen = job.clone();
    for _ in 0..ROUNDS {
        if !wanted(&seen) {
            return Ok(false);
        }
        if patch_job_as_seen(ctx, api, &seen, patch.clone()).await? {
            return Ok(true);
        }
        match timed(ctx, "get_job", api.get_opt(&name)).await {
            Ok(Some(now)) if now.uid() == job.uid() => seen = now,
            Ok(_) => return Ok(false),
            Err(source) => return Err(Error::PatchJob { name, source }),
        }
    }
    Err(Error::JobKeepsChanging { name })
}

/// Counts every release and tells the Jobs that still exist.
async fn report_releases(ctx: &Context, pass: &Pass, decision: &Decision, labels: &GroupLabels) {
    for (uid, reason) in &decision.release {
        ctx.metrics
            .releases
            .get_or_create(&ReleaseLabels {
                namespace: labels.namespace.clone(),
                group: labels.group.clone(),
                reason: reason.label().to_string(),
            })
            .inc();
        let job = match (reason, pass.jobs.get(uid)) {
            (ReleaseReason::LeaseLost, _) => continue,
            (_, None) => {
                info!(group = %labels.group, holder = uid, "released the slot of a deleted Job");
                continue;
            }
            (_, Some(job)) => job,
        };
        if *reason == ReleaseReason::Suspended {
            // Suspended by a user: no longer admitted, so that it waits
            // for a slot again if it is resumed.
            let patch = json!({"metadata": {"annotations": not_admitted()}});
            if let Err(e) = patch_job(ctx, &pass.jobs_api, job, patch).await {
                warn!(error = %e, "could not mark a suspended Job as no longer admitted");
            }
        }
        let why = match reason {
            ReleaseReason::Finished => "finished",
            _ => "suspended",
        };
        let note = format!("slot freed: the Job {why}");
        publish(ctx, job, EventType::Normal, "Released", "Release", note);
    }
}

fn publish(ctx: &Context, job: &Job, type_: EventType, reason: &str, action: &str, note: String) {
    publish_on(ctx, job.object_ref(&()), type_, reason, action, note);
}

fn publish_on(
    ctx: &Context,
    target: k8s_openapi::api::core::v1::ObjectReference,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    let event = Event {
        type_,
        reason: reason.to_string(),
        note: Some(note),
        action: action.to_string(),
        secondary: None,
    };
    ctx.recorder.publish(&event, &target);
}

async fn update_status(
    group: &ConcurrencyGroup,
    ns: &str,
    name: &str,
    observed: &Observed,
    ctx: &Context,
) -> Result<Option<Duration>> {
    let status = status::build(group.status.as_ref(), observed, &now_rfc3339());
    if group.status.as_ref() == Some(&status) {
        return Ok(None);
    }
    let key = (ns.to_string(), name.to_string());
    let since = lock(&ctx.status_written).get(&key).map(|at| at.elapsed());
    if let Some(wait) = status::write_after(group.status.as_ref(), &status, since) {
        return Ok(Some(wait));
    }
    // Tell the group's users when it becomes usable or stops being so.
    let ready = |s: Option<&super::crd::ConcurrencyGroupStatus>| {
        s.and_then(|s| s.conditions.iter().find(|c| c.type_ == status::READY))
            .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
    };
    if let Some((now, reason, message)) = ready(Some(&status))
        && ready(group.status.as_ref()).map(|(s, r, _)| (s, r))
            != Some((now.clone(), reason.clone()))
    {
        let type_ = if now == "True" {
            EventType::Normal
        } else {
            EventType::Warning
        };
        publish_on(
            ctx,
            group.object_ref(&()),
            type_,
            &reason,
            "Reconcile",
            message,
        );
    }
    let api: Api<ConcurrencyGroup> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": "jobgate.dev/v1alpha1",
        "kind": "ConcurrencyGroup",
        "status": status,
    });
    let params = PatchParams::apply(FIELD_MANAGER).force();
    let result = timed(
        ctx,
        "patch_status",
        api.patch_status(name, &params, &Patch::Apply(&patch)),
    )
    .await;
    match result {
        Ok(_) => {
            lock(&ctx.status_written).insert(key, tokio::time::Instant::now());
            Ok(None)
        }
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
        Err(e) => Err(Error::UpdateStatus(e)),
    }
}

/// Adds (or removes) this controller's finalizer. Adding is guarded by the
/// group's resourceVersion; removing by a test of the finalizer list
/// itself, which status updates earlier in the pass do not change, so that a
/// concurrent change of the list is never lost either way.
async fn set_finalizer(ctx: &Context, group: &ConcurrencyGroup, ns: &str, on: bool) -> Result<()> {
    let current = group.finalizers().to_vec();
    let mut finalizers: Vec<String> = current
        .iter()
        .filter(|f| f.as_str() != FINALIZER)
        .cloned()
        .collect();
    let api: Api<ConcurrencyGroup> = Api::namespaced(ctx.client.clone(), ns);
    let name = group.name_any();
    let call = if on {
        finalizers.push(FINALIZER.to_string());
        let patch = json!({
            "metadata": {
                "finalizers": finalizers,
                "resourceVersion": group.resource_version(),
            }
        });
        timed(
            ctx,
            "patch_group",
            api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch)),
        )
        .await
    } else {
        let patch: json_patch::Patch = serde_json::from_value(json!([
            {"op": "test", "path": "/metadata/finalizers", "value": current},
            {"op": "replace", "path": "/metadata/finalizers", "value": finalizers},
        ]))
        // Built from strings only: cannot fail, but is never unwrapped.
        .map_err(|e| Error::FinalizerPatch(e.to_string()))?;
        timed(
            ctx,
            "patch_group",
            api.patch(&name, &PatchParams::default(), &Patch::<()>::Json(patch)),
        )
        .await
    };
    match call {
        Ok(_) => Ok(()),
        // Gone already: nothing to hold any more.
        Err(kube::Error::Api(e)) if e.code == 404 && !on => Ok(()),
        Err(e) => Err(Error::Finalizer(e)),
    }
}

/// The last step of a deleted group: this cluster's agent leaves the ledger
/// (unless `abandon` says why it cannot), its client stops, and the
/// finalizer goes.
async fn finish_deletion(
    ctx: &Context,
    group: &ConcurrencyGroup,
    ns: &str,
    abandon: Option<String>,
) -> Result<Action> {
    let name = group.name_any();
    match abandon {
        Some(why) => {
            warn!(group = %format!("{ns}/{name}"), %why, "dropping the finalizer");
            publish_on(
                ctx,
                group.object_ref(&()),
                EventType::Warning,
                "SlotsAbandoned",
                "Delete",
                why,
            );
        }
        None => {
            if let Some(gl) = ctx.ledgers.current(ns, &name).await {
                let left = gl.sem.leave().await.map_err(Error::WriteLedger)?;
                if left.agents.contains_key(&gl.agent) {
                    // A slot was granted meanwhile (cannot happen with
                    // admissions stopped, but never drop it silently).
                    return Ok(Action::requeue(ctx.poll_waiting));
                }
            }
            publish_on(
                ctx,
                group.object_ref(&()),
                EventType::Normal,
                "SlotsReleased",
                "Delete",
                "every slot this cluster held for the group was given back and its agent left the ledger; removing the finalizer".into(),
            );
        }
    }
    ctx.ledgers.forget(ns, &name).await;
    set_finalizer(ctx, group, ns, false).await?;
    Ok(Action::await_change())
}
