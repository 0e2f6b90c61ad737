//! Reconciliation of one ConcurrencyGroup, as a pipeline:
//! gather (Jobs, credentials, ledger) → decide (`admission::plan`, pure) →
//! write the ledger (one batch) → patch Jobs → update status.
//!
//! Every step is idempotent, so a controller killed anywhere finishes the
//! work on its next pass: a slot granted but not yet acted on shows up as a
//! held slot of a suspended Job, which `plan` turns into an unsuspend.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::admission::{self, JobView, Plan};
use super::crd::{
    ADMITTED_AT_ANNOTATION, ConcurrencyGroup, GROUP_LABEL, LeaseLossPolicy, PRIORITY_ANNOTATION,
    TOKEN_ANNOTATION,
};
use super::error::{Error, Result};
use super::ledgers::{Credentials, GroupLedger, LedgerSettings, Ledgers, lock};
use super::metrics::{GroupLabels, Metrics, ReleaseLabels};
use super::status::{self, Observed, Problem};
use crate::semaphore::Permit;

/// The field manager of every write this controller makes.
pub const FIELD_MANAGER: &str = "jobgate-controller";

pub struct Context {
    pub client: kube::Client,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub ledgers: Ledgers,
    pub settings: LedgerSettings,
    /// How often to look again while Jobs wait, and when nothing waits.
    pub poll_waiting: Duration,
    pub poll_idle: Duration,
    /// Asks for a reconciliation of a group (e.g. when a slot is lost).
    pub trigger: mpsc::UnboundedSender<ObjectRef<ConcurrencyGroup>>,
}

/// What a pass did, for the status and the requeue interval.
struct Summary {
    ledger_limit: u32,
    in_use: u32,
    admitted_here: u32,
    waiting_here: u32,
}

pub async fn reconcile(group: Arc<ConcurrencyGroup>, ctx: Arc<Context>) -> Result<Action> {
    ctx.metrics.reconciles.inc();
    let ns = group
        .namespace()
        .ok_or(Error::MissingField("metadata.namespace"))?;
    let name = group.name_any();
    if group.metadata.deletion_timestamp.is_some() {
        ctx.ledgers.forget(&ns, &name).await;
        return Ok(Action::await_change());
    }
    let labels = GroupLabels {
        namespace: ns.clone(),
        group: name.clone(),
    };
    let result = admit(&group, &ns, &name, &ctx, &labels).await;
    let mut observed = Observed {
        generation: group.metadata.generation,
        ledger_key: group.ledger_key(),
        spec_limit: group.spec.limit,
        ..Default::default()
    };
    match &result {
        Ok(s) => {
            observed.ledger_limit = Some(s.ledger_limit);
            observed.in_use = Some(s.in_use);
            observed.admitted_here = Some(s.admitted_here);
            observed.waiting_here = Some(s.waiting_here);
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
                Error::Ledger(inner) => Problem::from_ledger(inner),
                Error::Credentials { .. } | Error::CredentialsIncomplete { .. } => {
                    Problem::new("CredentialsUnavailable", e.to_string())
                }
                other => Problem::new("ReconcileFailed", other.to_string()),
            });
        }
    }
    let status_result = update_status(&group, &ns, &name, &observed, &ctx).await;
    let summary = result?;
    status_result?;
    let wait = if summary.waiting_here > 0 {
        ctx.poll_waiting
    } else {
        ctx.poll_idle
    };
    Ok(Action::requeue(wait))
}

pub fn error_policy(_group: Arc<ConcurrencyGroup>, error: &Error, ctx: Arc<Context>) -> Action {
    warn!(error = %error, kind = error.kind(), "reconciliation failed");
    ctx.metrics
        .reconcile_errors
        .get_or_create(&super::metrics::ErrorLabels {
            kind: error.kind().to_string(),
        })
        .inc();
    Action::requeue(Duration::from_secs(5))
}

/// The pipeline. Returns what the status should say.
async fn admit(
    group: &ConcurrencyGroup,
    ns: &str,
    name: &str,
    ctx: &Context,
    labels: &GroupLabels,
) -> Result<Summary> {
    // Gather.
    let creds = credentials(group, ns, ctx).await?;
    let gl = ctx
        .ledgers
        .get(group, creds, &ctx.settings, &ctx.metrics)
        .await
        .map_err(Error::Ledger)?;
    // The ledger first, then the Jobs: every slot held in this snapshot was
    // granted before the list, so the list shows its Job unless it is gone.
    let ledger = gl.sem.snapshot().await.map_err(Error::Ledger)?;
    let jobs_api: Api<Job> = Api::namespaced(ctx.client.clone(), ns);
    let selector = ListParams::default().labels(&format!("{GROUP_LABEL}={name}"));
    let started = std::time::Instant::now();
    let listed = jobs_api.list(&selector).await;
    ctx.metrics.observe_api("list_jobs", started.elapsed());
    let jobs: BTreeMap<String, Job> = listed
        .map_err(Error::GatherJobs)?
        .items
        .into_iter()
        .filter_map(|j| j.uid().map(|uid| (uid, j)))
        .collect();
    let held_here: BTreeSet<String> = ledger.holders_of(&gl.agent).cloned().collect();

    // Decide.
    let views: Vec<JobView> = jobs.values().filter_map(job_view).collect();
    let mut plan = admission::plan(&views, &held_here);
    let lost = lost_slots(&gl, group, &jobs);
    plan.unsuspend.retain(|uid| !lost.contains(uid));
    let mut releases = plan.release.clone();
    // A lost slot is given up only once its Job's pods are gone, as when a
    // user suspends a Job: until then its pods still count.
    let lost_released: Vec<String> = lost
        .iter()
        .filter(|uid| {
            jobs.get(*uid).is_none_or(|j| {
                j.spec.as_ref().and_then(|s| s.suspend) == Some(true)
                    && job_view(j).is_some_and(|v| !v.active_pods)
            })
        })
        .filter(|uid| !releases.contains(uid))
        .cloned()
        .collect();
    releases.extend(lost_released.iter().cloned());
    // Slots held here that this process has no permit for (it restarted, or
    // the client was rebuilt): ask again, which returns the same token and
    // resumes renewing them.
    let known: BTreeSet<String> = lock(&gl.permits).keys().cloned().collect();
    let mut acquires: Vec<String> = held_here
        .iter()
        .filter(|uid| {
            !known.contains(*uid) && !releases.contains(uid) && !plan.unsuspend.contains(uid)
        })
        .cloned()
        .collect();
    // Slots already granted for Jobs still suspended: asking again is free
    // (no write) and hands back their token.
    acquires.extend(plan.unsuspend.iter().cloned());
    acquires.extend(plan.adopt.iter().cloned());
    acquires.extend(plan.acquire.iter().cloned());

    // Nothing waits here any more: stop asking the other clusters to defer.
    if plan.acquire.is_empty()
        && plan.adopt.is_empty()
        && ledger.agents.get(&gl.agent).is_some_and(|a| a.waiting > 0)
    {
        gl.sem.withdraw_wait().map_err(Error::Ledger)?;
    }

    // Suspend Jobs whose slot is lost before the slot is given up, so that
    // they stop even when the ledger cannot be reached.
    for uid in &lost {
        if let Some(job) = jobs.get(uid)
            && job.spec.as_ref().and_then(|s| s.suspend) != Some(true)
        {
            suspend(
                ctx,
                &jobs_api,
                job,
                "LeaseLost",
                "this cluster could not renew its lease on the ledger in time; suspended to keep the limit, it waits for a slot again".into(),
            )
            .await?;
        }
    }

    // Write the ledger: every release and acquire of this pass in one batch.
    let answers = if releases.is_empty() && acquires.is_empty() {
        Vec::new()
    } else {
        gl.sem
            .release_and_try_acquire(&releases, &acquires)
            .await
            .map_err(Error::Ledger)?
    };
    let mut granted: BTreeMap<String, u64> = BTreeMap::new();
    for (uid, answer) in acquires.iter().zip(answers) {
        match answer {
            Ok(Some(permit)) => {
                granted.insert(uid.clone(), permit.token);
                track(&gl, ctx, group, permit);
            }
            Ok(None) => {}
            Err(crate::Error::HolderTaken { agent, .. }) => {
                warn!(job = uid, %agent, "the Job's UID is held by another agent in the ledger");
            }
            Err(e) => return Err(Error::Ledger(e)),
        }
    }
    {
        let mut permits = lock(&gl.permits);
        for uid in &releases {
            permits.remove(uid);
        }
    }

    // Patch Jobs.
    lock(&gl.announced_waiting).retain(|uid| jobs.contains_key(uid));
    let mut waiting_here = 0u32;
    report_releases(ctx, group, &jobs, &plan, &lost_released, labels).await;
    // The ledger as it is now (a conditional GET; usually unchanged).
    let after = gl.sem.snapshot().await.map_err(Error::Ledger)?;
    let in_use = after.holders.len();
    let limit = after.limit;
    for uid in plan.unsuspend.iter().chain(plan.acquire.iter()) {
        let Some(job) = jobs.get(uid) else { continue };
        match granted.get(uid) {
            Some(token) => {
                unsuspend(ctx, &jobs_api, job, *token, labels).await?;
                lock(&gl.announced_waiting).remove(uid);
            }
            None => {
                waiting_here += 1;
                let first = lock(&gl.announced_waiting).insert(uid.clone());
                if first {
                    let note =
                        format!("waiting for a slot: {in_use}/{limit} in use in all clusters");
                    publish(ctx, job, EventType::Normal, "Waiting", "Admit", note).await;
                }
            }
        }
    }
    for uid in &plan.adopt {
        let Some(job) = jobs.get(uid) else { continue };
        match granted.get(uid) {
            Some(token) => adopt(ctx, &jobs_api, job, *token, name, labels).await?,
            None if is_admitted(job) && group.spec.on_lease_loss == LeaseLossPolicy::Keep => {
                // Admitted earlier and lost its slot; the group says keep
                // such Jobs running, so it stays over the limit until it ends.
                publish(ctx, job, EventType::Warning, "OverLimit",
                    "Admit",
                    "this Job lost its slot and keeps running because onLeaseLoss is Keep; the limit may be exceeded until it ends".into()).await;
            }
            None => {
                waiting_here += 1;
                let note = format!(
                    "created without spec.suspend: true and no slot is free ({in_use}/{limit} in use); suspended until one is. Create Jobs of group {name} with spec.suspend: true"
                );
                suspend(ctx, &jobs_api, job, "SuspendedNoSlot", note).await?;
            }
        }
    }

    // Export client counters.
    let stats = gl.sem.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let conflicts = stats.conflicts.load(std::sync::atomic::Ordering::Relaxed);
    {
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

    let admitted_here = after.holders_of(&gl.agent).count() as u32;
    debug!(group = name, ?plan, granted = granted.len(), "reconciled");
    Ok(Summary {
        ledger_limit: after.limit,
        in_use: in_use as u32,
        admitted_here,
        waiting_here,
    })
}

/// Slots this process held whose lease could not be renewed in time, for
/// Jobs that are still running, when the group says to suspend them.
fn lost_slots(
    gl: &GroupLedger,
    group: &ConcurrencyGroup,
    jobs: &BTreeMap<String, Job>,
) -> Vec<String> {
    if group.spec.on_lease_loss != LeaseLossPolicy::Suspend {
        return Vec::new();
    }
    lock(&gl.permits)
        .iter()
        .filter(|(uid, p)| p.is_lost() && jobs.get(*uid).is_some_and(|j| !is_finished(j)))
        .map(|(uid, _)| uid.clone())
        .collect()
}

/// Remembers a permit and asks for a reconciliation when it is lost.
fn track(gl: &GroupLedger, ctx: &Context, group: &ConcurrencyGroup, permit: Permit) {
    let mut permits = lock(&gl.permits);
    if permits.get(&permit.holder).is_some_and(|p| !p.is_lost()) {
        return;
    }
    let mut watch = permit.clone();
    permits.insert(permit.holder.clone(), permit);
    let trigger = ctx.trigger.clone();
    let target = ObjectRef::from_obj(group);
    tokio::spawn(async move {
        watch.lost().await;
        // Also ends when the slot is released or the client stops; an extra
        // reconciliation is harmless.
        let _ = trigger.send(target);
    });
}

async fn credentials(
    group: &ConcurrencyGroup,
    ns: &str,
    ctx: &Context,
) -> Result<Option<Credentials>> {
    let Some(secret_ref) = &group.spec.ledger.credentials_secret_ref else {
        return Ok(None);
    };
    let api: Api<Secret> = Api::namespaced(ctx.client.clone(), ns);
    let started = std::time::Instant::now();
    let secret = api.get(&secret_ref.name).await;
    ctx.metrics.observe_api("get_secret", started.elapsed());
    let secret = secret.map_err(|source| Error::Credentials {
        name: secret_ref.name.clone(),
        source,
    })?;
    let data = secret.data.unwrap_or_default();
    let field = |key: &'static str| {
        data.get(key)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .map(|v| v.trim().to_string())
            .filter(|v| !v.is_empty())
            .ok_or_else(|| Error::CredentialsIncomplete {
                name: secret_ref.name.clone(),
                key,
            })
    };
    Ok(Some(Credentials {
        access_key_id: field("AWS_ACCESS_KEY_ID")?,
        secret_access_key: field("AWS_SECRET_ACCESS_KEY")?,
        version: secret.metadata.resource_version.unwrap_or_default(),
    }))
}

fn is_finished(job: &Job) -> bool {
    job.metadata.deletion_timestamp.is_some()
        || job
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| {
                cs.iter()
                    .any(|c| (c.type_ == "Complete" || c.type_ == "Failed") && c.status == "True")
            })
}

fn is_admitted(job: &Job) -> bool {
    job.annotations().contains_key(ADMITTED_AT_ANNOTATION)
}

pub fn job_view(job: &Job) -> Option<JobView> {
    let status = job.status.as_ref();
    let count = |f: fn(&k8s_openapi::api::batch::v1::JobStatus) -> Option<i32>| {
        status.and_then(f).unwrap_or(0)
    };
    Some(JobView {
        uid: job.uid()?,
        name: job.name_any(),
        created: job
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|t| t.0.to_string())
            .unwrap_or_default(),
        priority: job
            .annotations()
            .get(PRIORITY_ANNOTATION)
            .and_then(|p| p.trim().parse().ok())
            .unwrap_or(0),
        suspended: job.spec.as_ref().and_then(|s| s.suspend) == Some(true),
        admitted: is_admitted(job),
        finished: is_finished(job),
        active_pods: count(|s| s.active) > 0 || count(|s| s.terminating) > 0,
    })
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
    let started = std::time::Instant::now();
    let result = api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await;
    ctx.metrics.observe_api("patch_job", started.elapsed());
    match result {
        Ok(_) => Ok(()),
        // Deleted (or re-created) meanwhile: the next pass frees its slot.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(Error::PatchJob { name, source }),
    }
}

async fn unsuspend(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    token: u64,
    labels: &GroupLabels,
) -> Result<()> {
    let patch = json!({
        "metadata": {"annotations": admitted(token)},
        "spec": {"suspend": false},
    });
    patch_job(ctx, api, job, patch).await?;
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
    )
    .await;
    Ok(())
}

/// A Job found running without a slot got one: record it as admitted.
async fn adopt(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
    token: u64,
    group: &str,
    labels: &GroupLabels,
) -> Result<()> {
    let was_admitted = is_admitted(job);
    let patch = json!({
        "metadata": {"annotations": admitted(token)},
    });
    patch_job(ctx, api, job, patch).await?;
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
    )
    .await;
    Ok(())
}

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
    patch_job(ctx, api, job, patch).await?;
    warn!(job = %job.name_any(), reason, "suspended");
    publish(ctx, job, EventType::Warning, reason, "Suspend", note).await;
    Ok(())
}

async fn report_releases(
    ctx: &Context,
    group: &ConcurrencyGroup,
    jobs: &BTreeMap<String, Job>,
    plan: &Plan,
    lost: &[String],
    labels: &GroupLabels,
) {
    let count = |reason: &str| {
        ctx.metrics
            .releases
            .get_or_create(&ReleaseLabels {
                namespace: labels.namespace.clone(),
                group: labels.group.clone(),
                reason: reason.to_string(),
            })
            .inc();
    };
    for uid in &plan.release {
        match jobs.get(uid) {
            None => {
                count("deleted");
                info!(group = %group.name_any(), holder = uid, "released the slot of a deleted Job");
            }
            Some(job) => {
                let reason = if is_finished(job) {
                    "finished"
                } else {
                    "suspended"
                };
                count(reason);
                if reason == "suspended" {
                    // Suspended by a user: no longer admitted, so that it
                    // waits for a slot again if it is resumed.
                    let api: Api<Job> =
                        Api::namespaced(ctx.client.clone(), &job.namespace().unwrap_or_default());
                    let patch = json!({"metadata": {"annotations": not_admitted()}});
                    if let Err(e) = patch_job(ctx, &api, job, patch).await {
                        warn!(error = %e, "could not mark a suspended Job as no longer admitted");
                    }
                }
                publish(
                    ctx,
                    job,
                    EventType::Normal,
                    "Released",
                    "Release",
                    format!("slot freed: the Job {reason}"),
                )
                .await;
            }
        }
    }
    for _ in lost {
        count("lease_lost");
    }
}

async fn publish(
    ctx: &Context,
    job: &Job,
    type_: EventType,
    reason: &str,
    action: &str,
    note: String,
) {
    publish_on(ctx, job.object_ref(&()), type_, reason, action, note).await;
}

async fn publish_on(
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
    let started = std::time::Instant::now();
    let result = ctx.recorder.publish(&event, &target).await;
    ctx.metrics.observe_api("publish_event", started.elapsed());
    if let Err(e) = result {
        // Events are for humans; never fail a reconciliation over one.
        debug!(error = %e, "could not publish an event");
    }
}

async fn update_status(
    group: &ConcurrencyGroup,
    ns: &str,
    name: &str,
    observed: &Observed,
    ctx: &Context,
) -> Result<()> {
    let status = status::build(group.status.as_ref(), observed, &now_rfc3339());
    if group.status.as_ref() == Some(&status) {
        return Ok(());
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
        )
        .await;
    }
    let api: Api<ConcurrencyGroup> = Api::namespaced(ctx.client.clone(), ns);
    let patch = json!({
        "apiVersion": "jobgate.dev/v1alpha1",
        "kind": "ConcurrencyGroup",
        "status": status,
    });
    let started = std::time::Instant::now();
    let result = api
        .patch_status(
            name,
            &PatchParams::apply(FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await;
    ctx.metrics.observe_api("patch_status", started.elapsed());
    match result {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        Err(e) => Err(Error::UpdateStatus(e)),
    }
}
