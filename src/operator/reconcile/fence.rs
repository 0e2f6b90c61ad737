//! Fencing: suspending Jobs whose slots are lost, from this process's own
//! permits, with or without the ledger.

use super::*;

/// Suspends the running Jobs that nothing vouches for without a ledger read:
/// with `lost_only`, those whose permit here is lost; else also those this
/// process holds no permit for (see `admission::fence_without_ledger`).
pub(super) async fn fence_without_ledger(
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
    let jobs = match list_workloads(ctx, jobs_api, &ns, &group.name_any()).await {
        Ok(listed) => listed,
        Err(e) => {
            warn!(error = %e, "could not list Jobs to fence; using the watch's copy");
            ctx.jobs.workloads_of_group(&ns, &group.name_any()).0
        }
    };
    let views: Vec<WorkloadView> = jobs.iter().filter_map(|j| j.view()).collect();
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
        suspend(ctx, job, "LeaseLost", note.into()).await?;
    }
    Ok(())
}

/// Fence: suspend Jobs whose slot is lost before anything touches the
/// ledger, so that they stop even when it cannot be reached.
pub(super) async fn fence(ctx: &Context, pass: &Pass, decision: &Decision) -> Result<()> {
    for uid in &decision.fence {
        if let Some(job) = pass.jobs.get(uid) {
            suspend(
                ctx,
                job,
                "LeaseLost",
                "this cluster could not renew its lease on the ledger in time; suspended to keep the limit, it waits for a slot again".into(),
            )
            .await?;
        }
    }
    Ok(())
}

/// Remembers a permit and watches it. When its lease cannot be renewed in
/// time, the Job is suspended from here at once (with `onLeaseLoss:
/// Suspend`), not by the next pass, which may be stuck reading a ledger that
/// does not answer; then a pass is asked for.
pub(super) fn track(
    gl: &Arc<GroupLedger>,
    ctx: &Arc<Context>,
    group: &ConcurrencyGroup,
    job: Option<&Object>,
    permit: Permit,
) {
    let mut state = lock(&gl.state);
    let permits = &mut state.permits;
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
    let job = job.cloned();
    tokio::spawn(async move {
        watch.lost().await;
        // Also ends when the slot is released (not lost) or the client stops.
        let in_use = client.upgrade().is_some();
        if plan::fence_on_loss(
            watch.is_lost(),
            in_use,
            suspend_on_loss,
            ctx.fence_without_ledger,
        ) && let Some(job) = &job
        {
            fence_lost_job(&ctx, job, &watch.holder).await;
        }
        let _ = ctx.trigger.send(target);
    });
}

/// Suspends the workload whose slot was just lost, if it still runs.
pub(super) async fn fence_lost_job(ctx: &Context, seen: &Object, uid: &str) {
    let api = api_of(ctx, seen);
    let name = seen.name_any();
    // Read until the API server answers (a pass would fence it too, but a
    // pass may be stuck on the ledger): every moment it runs counts.
    let mut pause = Duration::from_millis(200);
    let job = loop {
        match timed(ctx, "get_job", api.get_opt(&name)).await {
            Ok(Some(job)) if job.metadata.uid.as_deref() == Some(uid) => match seen.with(job) {
                Some(job) => break job,
                None => return,
            },
            Ok(_) => return,
            Err(e) => {
                warn!(job = name, error = %e, "could not read a Job whose slot was lost; trying again");
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(Duration::from_secs(5));
            }
        }
    };
    if job.is_finished() || job.is_suspended() {
        return;
    }
    let note = "this cluster could not renew its lease on the ledger in time; suspended to keep the limit, it waits for a slot again";
    if let Err(e) = suspend(ctx, &job, "LeaseLost", note.into()).await {
        warn!(job = name, error = %e, "could not suspend a Job whose slot was lost");
    }
}
