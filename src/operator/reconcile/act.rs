//! The act step: carries the decision out on the Jobs (admit, wait, adopt,
//! refuse, hold back, leave to Kueue).

use super::*;

/// Patch Jobs: report releases, then act on the grants. Returns how many
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
    lock(&gl.state)
        .announced_waiting
        .retain(|uid| pass.jobs.contains_key(uid));
    lock(&gl.state).announced_refused.retain(|key| {
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
                if lock(&gl.state).announced_waiting.insert(uid.clone()) {
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
                if lock(&gl.state)
                    .permits
                    .get(&uid)
                    .is_some_and(Permit::is_lost)
                {
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
pub(super) async fn disown(ctx: &Context, pass: &Pass, decision: &Decision) -> Result<()> {
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
        lock(&pass.gl.state).announced_waiting.remove(uid);
    }
    Ok(())
}

/// How many Job patches (or Events) one pass has in flight at once.
pub(super) const JOB_PATCHES_AT_ONCE: usize = 16;

/// Jobs whose `jobgate.dev/slots` cannot be served are not admitted:
/// running ones are suspended, waiting ones told once why.
pub(super) async fn refuse_bad_slots(
    ctx: &Context,
    pass: &Pass,
    decision: &Decision,
) -> Result<()> {
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
        } else if lock(&pass.gl.state)
            .announced_refused
            .insert(format!("InvalidSlots/{uid}"))
        {
            publish(ctx, job, EventType::Warning, "InvalidSlots", "Admit", note);
        }
    }
    Ok(())
}

/// Jobs that name a Kueue queue are told once that jobgate leaves them to
/// Kueue: both controllers toggling `spec.suspend` would fight.
pub(super) fn leave_to_kueue(ctx: &Context, pass: &Pass, decision: &Decision) {
    for uid in &decision.in_kueue {
        let Some(job) = pass.jobs.get(uid) else {
            continue;
        };
        if lock(&pass.gl.state)
            .announced_refused
            .insert(format!("ManagedByKueue/{uid}"))
        {
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
pub(super) async fn hold_back(
    ctx: &Context,
    pass: &Pass,
    group: &ConcurrencyGroup,
    decision: &Decision,
) -> u32 {
    let mut told = lock(&pass.gl.state).announced_held.clone();
    if decision.held_back.is_empty() {
        // Admitting again: tell them again next time.
        lock(&pass.gl.state).announced_held.clear();
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
    lock(&pass.gl.state).announced_held = told;
    decision.held_back.len() as u32
}

/// Jobs whose pods may take longer to stop than the group allows are not
/// admitted: running ones are suspended, waiting ones told once why.
pub(super) async fn refuse_too_slow(
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
        } else if lock(&pass.gl.state).announced_waiting.insert(uid.clone()) {
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
