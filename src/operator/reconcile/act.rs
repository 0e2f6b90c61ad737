//! The act step: carries out the plan's effects on the Jobs (release
//! reports, refusals, admissions, adoptions, Events), after "tell once" has
//! filtered them.

use super::*;
use crate::operator::effects::{Effect, tell_once};

/// Plans the effects of the grants and carries them out. Returns how many
/// Jobs wait for a slot here, and the ledger if it read it.
pub(super) async fn patch_jobs(
    ctx: &Arc<Context>,
    pass: &Pass,
    group: &ConcurrencyGroup,
    decision: &Decision,
    granted: &BTreeMap<String, u64>,
    labels: &GroupLabels,
) -> Result<(u32, Option<Ledger>)> {
    let gl = &pass.gl;
    count_releases(ctx, decision, labels);
    let asks = !(decision.unsuspend.is_empty()
        && decision.admit.is_empty()
        && decision.adopt.is_empty()
        && decision.unslotted.is_empty());
    // For the messages: the ledger as of this pass's write.
    let now = match asks {
        true => Some(known_ledger(gl, ctx).await?),
        false => None,
    };
    let (_, lost) = gl.permits();
    let of_jobs = |uids: &[String], value: &dyn Fn(&Object) -> Option<String>| {
        uids.iter()
            .filter_map(|uid| {
                let job = pass.jobs.get(uid)?;
                Some((uid.clone(), value(job).unwrap_or_default()))
            })
            .collect::<BTreeMap<String, String>>()
    };
    let slots_asked = of_jobs(&decision.bad_slots, &|j| {
        j.annotations().get(SLOTS_ANNOTATION).cloned()
    });
    let kueue_queues = of_jobs(&decision.in_kueue, &|j| {
        j.labels().get(KUEUE_QUEUE_LABEL).cloned()
    });
    let name = group.name_any();
    let inputs = plan::Inputs {
        decision,
        views: &pass.views,
        granted,
        lost: &lost,
        keep_on_loss: group.spec.on_lease_loss == LeaseLossPolicy::Keep,
        group: &name,
        deleting: group.metadata.deletion_timestamp.is_some(),
        max_grace_seconds: i64::from(group.spec.max_grace_period_seconds),
        limit: pass.limit,
        ledger: now.as_ref().map(|l| (l, gl.agent.as_str())),
        slots_asked: &slots_asked,
        kueue_queues: &kueue_queues,
    };
    // Planned under the lock (pure, no await): what was told already is
    // thousands of Jobs at depth, not to be copied every pass.
    let (waiting, effects) = {
        let mut state = lock(&gl.state);
        state.told.forget(
            |uid| pass.jobs.contains_key(uid),
            decision.held_back.is_empty(),
        );
        let planned = plan::effects(&inputs, &state.told);
        (planned.waiting, tell_once(&mut state.told, planned.effects))
    };
    carry_out(ctx, pass, group, effects, labels).await?;
    Ok((waiting, now))
}

/// Counts every release of the pass.
fn count_releases(ctx: &Context, decision: &Decision, labels: &GroupLabels) {
    for (_, reason) in &decision.release {
        ctx.metrics
            .releases
            .get_or_create(&ReleaseLabels {
                namespace: labels.namespace.clone(),
                group: labels.group.clone(),
                reason: reason.label().to_string(),
            })
            .inc();
    }
}

/// Carries the effects out in order; the admissions, which the plan puts
/// together, several at once: the next pass (and the next freed slot's
/// admission) waits for this one. A bounded number in flight, a new one
/// started as each ends (not in chunks, which wait for their slowest
/// patch); pushed in a loop, not mapped by a closure, which the compiler
/// cannot prove Send here.
async fn carry_out(
    ctx: &Context,
    pass: &Pass,
    group: &ConcurrencyGroup,
    effects: Vec<Effect>,
    labels: &GroupLabels,
) -> Result<()> {
    let first = effects
        .iter()
        .position(|e| matches!(e, Effect::Unsuspend { .. }))
        .unwrap_or(effects.len());
    let mut effects = effects.into_iter();
    for effect in effects.by_ref().take(first) {
        carry_out_one(ctx, pass, group, effect, labels).await?;
    }
    let mut rest = effects.peekable();
    let mut admit = Vec::new();
    while let Some(Effect::Unsuspend { uid, token }) =
        rest.next_if(|e| matches!(e, Effect::Unsuspend { .. }))
    {
        admit.push((uid, token));
    }
    let mut admitted = Vec::new();
    let mut next = admit.iter();
    let mut in_flight = futures::stream::FuturesUnordered::new();
    for (uid, token) in next.by_ref().take(JOB_PATCHES_AT_ONCE) {
        in_flight.push(admit_one(ctx, pass, group, uid, *token, labels));
    }
    while let Some(result) = futures::StreamExt::next(&mut in_flight).await {
        admitted.push(result);
        if let Some((uid, token)) = next.next() {
            in_flight.push(admit_one(ctx, pass, group, uid, *token, labels));
        }
    }
    drop(in_flight);
    admitted.into_iter().collect::<Result<()>>()?;
    for effect in rest {
        carry_out_one(ctx, pass, group, effect, labels).await?;
    }
    Ok(())
}

async fn carry_out_one(
    ctx: &Context,
    pass: &Pass,
    group: &ConcurrencyGroup,
    effect: Effect,
    labels: &GroupLabels,
) -> Result<()> {
    match effect {
        Effect::Released { uid, reason } => release_told(ctx, pass, &uid, reason, labels).await,
        Effect::Disown { uid } => {
            let Some(job) = pass.jobs.get(&uid) else {
                return Ok(());
            };
            let paused = |j: &Object| j.is_suspended() && j.is_admitted();
            let patch = json!({"metadata": {"annotations": not_admitted()}});
            if patch_while(ctx, job, paused, patch).await? {
                info!(job = %job.name_any(), "a suspended Job without a slot is no longer admitted; resumed, it waits for one");
            }
        }
        Effect::Suspend { uid, reason, note } => {
            if let Some(job) = pass.jobs.get(&uid) {
                suspend(ctx, job, reason, note).await?;
            }
        }
        Effect::Unsuspend { uid, token } => {
            admit_one(ctx, pass, group, &uid, token, labels).await?;
        }
        Effect::Adopt { uid, token } => {
            let Some(job) = pass.jobs.get(&uid) else {
                return Ok(());
            };
            // Lost since the plan: a later pass gives the slot up instead.
            if lock(&pass.gl.state)
                .permits
                .get(&uid)
                .is_some_and(Permit::is_lost)
            {
                return Ok(());
            }
            let deadline = first_deadline(pass, group, job);
            let name = group.name_any();
            adopt(ctx, job, token, deadline, &name, labels).await?;
        }
        Effect::Tell {
            uid,
            type_,
            reason,
            action,
            note,
            ..
        } => {
            if let Some(job) = pass.jobs.get(&uid) {
                publish(ctx, job, type_, reason, action, note);
            }
        }
    }
    Ok(())
}

/// Tells a Job that still exists that its slot was freed; a Job suspended
/// by a user is marked no longer admitted, so that it waits for a slot
/// again if it is resumed.
async fn release_told(
    ctx: &Context,
    pass: &Pass,
    uid: &str,
    reason: ReleaseReason,
    labels: &GroupLabels,
) {
    let job = match (reason, pass.jobs.get(uid)) {
        (ReleaseReason::LeaseLost, _) => return,
        (_, None) => {
            info!(group = %labels.group, holder = uid, "released the slot of a deleted Job");
            return;
        }
        (_, Some(job)) => job,
    };
    if reason == ReleaseReason::Suspended {
        let patch = json!({"metadata": {"annotations": not_admitted()}});
        if let Err(e) = patch_job(ctx, job, patch).await {
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

/// Unsuspends a Job granted a slot in this pass, unless the slot was lost
/// since the write (the ledger read before can be slow): a later pass gives
/// it up instead.
pub(super) async fn admit_one(
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
    if lock(&pass.gl.state)
        .permits
        .get(uid)
        .is_some_and(Permit::is_lost)
    {
        return Ok(());
    }
    // A Job that ran before keeps its old startTime while suspended: the
    // Job controller checks the deadline against it as it resumes the Job,
    // then restarts the clock, so a deadline set now would either fail the
    // Job at once or, counted from the old start, end it late by its
    // earlier run time until the next pass. Without a startTime it counts
    // from the resume, as the deadline set here does.
    let cleared;
    let job = match job.as_job() {
        Some(ran)
            if group.spec.on_controller_loss == ControllerLossPolicy::FailJobs
                && started_at(ran).is_some() =>
        {
            match clear_start_time(ctx, &pass.jobs_api, ran).await? {
                Some(fresh) => {
                    cleared = Object::Job(Arc::new(fresh));
                    &cleared
                }
                // Changed meanwhile: its event brings another pass.
                None => return Ok(()),
            }
        }
        _ => job,
    };
    let deadline = first_deadline(pass, group, job);
    if unsuspend(ctx, job, token, deadline, labels).await? {
        lock(&pass.gl.state).told.admitted(uid);
    }
    Ok(())
}

/// How many Job patches (or Events) one pass has in flight at once.
pub(super) const JOB_PATCHES_AT_ONCE: usize = 16;
