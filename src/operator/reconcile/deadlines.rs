//! Deadlines of admitted Jobs under `onControllerLoss: FailJobs`: kept
//! moving on while this process renews their slots, so the Job controller
//! stops them if it stops.

use super::*;

/// `onControllerLoss: FailJobs`: moves on the deadline of each Job running
/// on a live permit here (see `deadline`); without it, gives Jobs back the
/// deadline they had. A Job whose patch fails is logged and left to the
/// next pass. Returns how soon to look again while any is managed.
pub(super) async fn keep_deadlines(
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
pub(super) fn deadline_for(gl: &GroupLedger, job: &Job, user: Option<i64>) -> Option<i64> {
    let now = tokio::time::Instant::now();
    let stop_at = gl.sem.safe_until().filter(|t| *t > now)?;
    let stop_in = (stop_at + deadline::AFTER_FENCE).duration_since(now);
    let running_for = started_at(job)
        .and_then(|t| std::time::SystemTime::now().duration_since(t).ok())
        .unwrap_or_default();
    Some(deadline::wanted(running_for, stop_in, user))
}

/// The Job's `status.startTime`: when it last started running.
pub(super) fn started_at(job: &Job) -> Option<std::time::SystemTime> {
    job.status
        .as_ref()
        .and_then(|s| s.start_time.as_ref())
        .map(|t| std::time::SystemTime::from(t.0))
}

/// Removes the `startTime` of a suspended Job that ran before (as Kueue
/// does), so that when it is resumed its deadline counts from the resume.
/// The Job as it is then, or `None` if it changed or went meanwhile (the
/// API server refuses the patch for a Job no longer suspended).
pub(super) async fn clear_start_time(
    ctx: &Context,
    api: &Api<Job>,
    job: &Job,
) -> Result<Option<Job>> {
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

/// With `onControllerLoss: FailJobs`: the deadline a Job starts with, set
/// in the patch that unsuspends it, so that it is covered even if this
/// controller dies before its next pass; and the user's own, to record.
pub(super) fn first_deadline(
    pass: &Pass,
    group: &ConcurrencyGroup,
    job: &Job,
) -> Option<(i64, Option<i64>)> {
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
