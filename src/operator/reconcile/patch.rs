//! Workload patches: the admission annotations, unsuspend, adopt, suspend,
//! each guarded by what the pass saw of the workload. Made through
//! `DynamicObject` for every kind, Jobs included (a merge patch is the
//! same request either way); what only Jobs have (their pod template,
//! deadlines) is added for Jobs alone.

use super::*;

/// The annotations that mark a Job as admitted with `token`.
pub(super) fn admitted(token: u64) -> serde_json::Value {
    json!({
        ADMITTED_AT_ANNOTATION: now_rfc3339(),
        TOKEN_ANNOTATION: token.to_string(),
    })
}

/// A merge patch's value that removes the admission annotations.
pub(super) fn not_admitted() -> serde_json::Value {
    json!({ADMITTED_AT_ANNOTATION: null, TOKEN_ANNOTATION: null})
}

pub(super) fn now_rfc3339() -> String {
    humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string()
}

/// The API of `obj`'s kind in its namespace.
pub(super) fn api_of(ctx: &Context, obj: &Object) -> Api<DynamicObject> {
    let ns = obj.meta().namespace.clone().unwrap_or_default();
    Api::namespaced_with(ctx.client.clone(), &ns, &obj.api_resource())
}

/// The request's name in the API latency metric.
fn patch_call(obj: &Object) -> &'static str {
    match obj {
        Object::Job(_) => "patch_job",
        Object::Other(..) => "patch_workload",
        Object::Pod(_) => "patch_pod",
    }
}

pub(super) async fn patch_job(
    ctx: &Context,
    job: &Object,
    mut patch: serde_json::Value,
) -> Result<()> {
    let name = job.name_any();
    // The UID makes the API server refuse the patch if the Job was deleted
    // and re-created under the same name since it was listed.
    patch["metadata"]["uid"] = json!(job.uid());
    let params = PatchParams::default();
    let api = api_of(ctx, job);
    let result = timed(
        ctx,
        patch_call(job),
        api.patch(&name, &params, &job.patch(patch)),
    )
    .await;
    match result {
        Ok(_) => Ok(()),
        // Deleted (or re-created) meanwhile: the next pass frees its slot.
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(Error::PatchJob { name, source }),
    }
}

/// Unsuspends `job` as seen and marks it admitted; `false` if it changed
/// since (its event brings another pass, which unsuspends it then).
pub(super) async fn unsuspend(
    ctx: &Context,
    job: &Object,
    token: u64,
    deadline: Option<(i64, Option<i64>)>,
    labels: &GroupLabels,
) -> Result<bool> {
    let mut patch = job.suspend_patch(false);
    patch["metadata"] = json!({"annotations": admitted(token)});
    // A Job's pods carry the group and the token (readable through the
    // downward API) when the template may still change: the API server
    // allows that only for a suspended Job that never started. Other
    // kinds' templates are where their own controllers put them.
    let never_started = job.as_job().is_some_and(|job| {
        job.status
            .as_ref()
            .and_then(|s| s.start_time.as_ref())
            .is_none()
    });
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
    if !patch_job_as_seen(ctx, job, patch).await? {
        return Ok(false);
    }
    if deadline.is_some() {
        ctx.metrics.deadline_patches.get_or_create(labels).inc();
    }
    info!(job = %job.name_any(), token, "admitted");
    ctx.metrics.admissions.get_or_create(labels).inc();
    if let Some(created) = &job.meta().creation_timestamp {
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
pub(super) async fn adopt(
    ctx: &Context,
    job: &Object,
    token: u64,
    deadline: Option<(i64, Option<i64>)>,
    group: &str,
    labels: &GroupLabels,
) -> Result<()> {
    let was_admitted = job.is_admitted();
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
    let running = |j: &Object| !j.is_suspended() && !j.is_finished();
    if !patch_while(ctx, job, running, patch).await? {
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
            "created without being suspended; a slot was free, so it keeps running (fencing token {token}). Create {kind}s of group {group} suspended so they never start before they have a slot",
            kind = job.kind_name()
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
pub(super) async fn patch_job_as_seen(
    ctx: &Context,
    job: &Object,
    mut patch: serde_json::Value,
) -> Result<bool> {
    let name = job.name_any();
    patch["metadata"]["uid"] = json!(job.uid());
    patch["metadata"]["resourceVersion"] = json!(job.meta().resource_version);
    let api = api_of(ctx, job);
    let result = timed(
        ctx,
        patch_call(job),
        api.patch(&name, &PatchParams::default(), &job.patch(patch)),
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
pub(super) async fn suspend(ctx: &Context, job: &Object, reason: &str, note: String) -> Result<()> {
    if let Object::Pod(_) = job {
        return delete_pod(ctx, job, reason, note).await;
    }
    let mut patch = job.suspend_patch(true);
    patch["metadata"] = json!({"annotations": not_admitted()});
    // Suspended meanwhile by someone else, who told it: nothing to do.
    let still_runs = |j: &Object| !j.is_suspended();
    if patch_while(ctx, job, still_runs, patch).await? {
        warn!(job = %job.name_any(), kind = job.kind_name(), reason, "suspended");
        publish(ctx, job, EventType::Warning, reason, "Suspend", note);
    }
    Ok(())
}

/// A plain Pod cannot be held again once ungated (a scheduling gate can
/// only be removed): where a Job would be suspended, the Pod is deleted,
/// within its grace period, and its slot waits until it is gone. The UID
/// precondition keeps a Pod re-created under the name from being deleted.
async fn delete_pod(ctx: &Context, pod: &Object, reason: &str, note: String) -> Result<()> {
    if pod.is_finished() {
        return Ok(());
    }
    let name = pod.name_any();
    let params = kube::api::DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match timed(ctx, "delete_pod", api_of(ctx, pod).delete(&name, &params)).await {
        Ok(_) => {
            warn!(pod = %name, reason, "deleted: a Pod cannot be held again once it ran");
            let note =
                format!("{note} (a Pod cannot be held again once it ran, so it was deleted)");
            publish(ctx, pod, EventType::Warning, reason, "Suspend", note);
            Ok(())
        }
        Err(kube::Error::Api(e)) if e.code == 404 || e.code == 409 => Ok(()),
        Err(source) => Err(Error::PatchJob { name, source }),
    }
}

/// [`patch_job_as_seen`] until the patch lands, while `wanted` holds for
/// the Job as it is: on a conflict it is read again. `false` if it no
/// longer needs the patch, or is gone (deleted, or re-created under the
/// same name). For patches no later pass would make again if this one
/// were dropped on a conflict.
pub(super) async fn patch_while(
    ctx: &Context,
    job: &Object,
    wanted: impl Fn(&Object) -> bool,
    patch: serde_json::Value,
) -> Result<bool> {
    // A few rounds: other writers (the Job controller's status updates)
    // change the resourceVersion too, but not many times in a row.
    const ROUNDS: usize = 5;
    let name = job.name_any();
    let api = api_of(ctx, job);
    let mut seen = job.clone();
    for _ in 0..ROUNDS {
        if !wanted(&seen) {
            return Ok(false);
        }
        if patch_job_as_seen(ctx, &seen, patch.clone()).await? {
            return Ok(true);
        }
        match timed(ctx, "get_job", api.get_opt(&name)).await {
            Ok(Some(now)) if now.metadata.uid == job.uid() => match job.with(now) {
                Some(now) => seen = now,
                None => return Ok(false),
            },
            Ok(_) => return Ok(false),
            Err(source) => return Err(Error::PatchJob { name, source }),
        }
    }
    Err(Error::JobKeepsChanging { name })
}
