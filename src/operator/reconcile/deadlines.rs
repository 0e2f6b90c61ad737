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
    let (patches, managing) = deadline_patches(
        &jobs,
        fail_jobs,
        &permits,
        &lost,
        stop_in(gl),
        std::time::SystemTime::now(),
    );
    for (job, patch) in patches {
        // As seen: a deadline counted from a startTime the cache has not
        // caught up with could fall after the fence. A conflict's event
        // brings another pass.
        let seen = Object::Job(Arc::new(job.clone()));
        match patch_job_as_seen(ctx, &seen, patch).await {
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

/// The deadline patches of one pass, pure: for each Job, the merge patch
/// it needs, and whether any Job's deadline is kept from here. With
/// `FailJobs`, a running admitted Job on a live permit here gets the
/// deadline that ends it [`deadline::AFTER_FENCE`] after this cluster's
/// slots stop being safe (`stop_in` from now; `None` while none is safe),
/// counted from its `startTime`; without it, a Job with a recorded deadline
/// gets its own back.
pub(super) fn deadline_patches<'a>(
    jobs: &'a [Arc<Job>],
    fail_jobs: bool,
    permits: &BTreeSet<String>,
    lost: &BTreeSet<String>,
    stop_in: Option<Duration>,
    now: std::time::SystemTime,
) -> (Vec<(&'a Job, serde_json::Value)>, bool) {
    let mut patches = Vec::new();
    let mut managing = false;
    for job in jobs {
        // Borrowed, not cloned: every pass looks at every Job of the group.
        let Some(uid) = job.metadata.uid.as_deref() else {
            continue;
        };
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
            let running = !job.is_suspended() && !is_finished(job) && is_admitted(job);
            if !running || !permits.contains(uid) || lost.contains(uid) {
                continue;
            }
            let Some(want) = deadline_for(job, user, stop_in, now) else {
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
        patches.push((job.as_ref(), patch));
    }
    (patches, managing)
}

/// How long from now until this cluster's slots of the group stop being
/// safe, plus [`deadline::AFTER_FENCE`]; `None` while none is safe.
pub(super) fn stop_in(gl: &GroupLedger) -> Option<Duration> {
    let now = tokio::time::Instant::now();
    let stop_at = gl.sem.safe_until().filter(|t| *t > now)?;
    Some((stop_at + deadline::AFTER_FENCE).duration_since(now))
}

/// The `activeDeadlineSeconds` that ends `job` at `stop_in` from `now`,
/// counted from the Job's `startTime` (the old one, for a Job that resumes
/// with one: the Job controller checks against it before resetting it;
/// admissions clear it first under `FailJobs`). `None` while no slot is
/// safe.
pub(super) fn deadline_for(
    job: &Job,
    user: Option<i64>,
    stop_in: Option<Duration>,
    now: std::time::SystemTime,
) -> Option<i64> {
    let running_for = started_at(job)
        .and_then(|t| now.duration_since(t).ok())
        .unwrap_or_default();
    Some(deadline::wanted(running_for, stop_in?, user))
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
    job: &Object,
) -> Option<(i64, Option<i64>)> {
    // Only Jobs have a deadline the API server enforces.
    let job = job.as_job()?;
    if group.spec.on_controller_loss != ControllerLossPolicy::FailJobs {
        return None;
    }
    let current = job.spec.as_ref().and_then(|s| s.active_deadline_seconds);
    let recorded = job
        .annotations()
        .get(deadline::USER_DEADLINE_ANNOTATION)
        .map(String::as_str);
    let user = deadline::user_deadline(recorded, current);
    let now = std::time::SystemTime::now();
    Some((deadline_for(job, user, stop_in(&pass.gl), now)?, user))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(
        suspended: bool,
        admitted: bool,
        recorded: Option<&str>,
        deadline: Option<i64>,
    ) -> Arc<Job> {
        let mut annotations = serde_json::Map::new();
        if admitted {
            annotations.insert(ADMITTED_AT_ANNOTATION.into(), json!("2026-12-01T00:00:00Z"));
        }
        if let Some(r) = recorded {
            annotations.insert(deadline::USER_DEADLINE_ANNOTATION.into(), json!(r));
        }
        Arc::new(
            serde_json::from_value(json!({
                "metadata": {"name": "etl", "uid": "u1", "annotations": annotations},
                "spec": {"suspend": suspended, "activeDeadlineSeconds": deadline, "template": {}},
                "status": {"startTime": "2026-12-01T00:00:00Z"},
            }))
            .unwrap(),
        )
    }

    fn uids(u: &[&str]) -> BTreeSet<String> {
        u.iter().map(|s| s.to_string()).collect()
    }

    fn at(seconds_after_start: u64) -> std::time::SystemTime {
        humantime::parse_rfc3339("2026-12-01T00:00:00Z").unwrap()
            + Duration::from_secs(seconds_after_start)
    }

    #[test]
    fn a_running_job_on_a_live_permit_gets_a_deadline_past_the_fence_counted_from_its_start() {
        let jobs = vec![job(false, true, None, None)];
        let stop_in = Some(Duration::from_secs(20));
        let (patches, managing) =
            deadline_patches(&jobs, true, &uids(&["u1"]), &uids(&[]), stop_in, at(100));
        assert!(managing);
        assert_eq!(patches.len(), 1);
        let want = deadline::wanted(Duration::from_secs(100), Duration::from_secs(20), None);
        assert_eq!(patches[0].1["spec"]["activeDeadlineSeconds"], json!(want));
        // Already there: managed, nothing to patch.
        let jobs = vec![job(false, true, Some(&deadline::record(None)), Some(want))];
        let (patches, managing) =
            deadline_patches(&jobs, true, &uids(&["u1"]), &uids(&[]), stop_in, at(100));
        assert!(managing && patches.is_empty());
    }

    #[test]
    fn no_deadline_is_moved_on_for_a_lost_permit_a_stopped_job_or_with_no_safe_slot() {
        let stop_in = Some(Duration::from_secs(20));
        let running = vec![job(false, true, None, None)];
        let none = |jobs: &[Arc<Job>], permits: &[&str], lost: &[&str], stop_in| {
            let (patches, managing) =
                deadline_patches(jobs, true, &uids(permits), &uids(lost), stop_in, at(5));
            patches.is_empty() && !managing
        };
        assert!(none(&running, &["u1"], &["u1"], stop_in), "lost");
        assert!(none(&running, &[], &[], stop_in), "no permit here");
        assert!(none(&running, &["u1"], &[], None), "no slot safe");
        assert!(
            none(&[job(true, true, None, None)], &["u1"], &[], stop_in),
            "suspended"
        );
        assert!(
            none(&[job(false, false, None, None)], &["u1"], &[], stop_in),
            "not admitted"
        );
    }

    #[test]
    fn without_fail_jobs_a_job_gets_its_own_deadline_back() {
        let jobs = vec![
            job(false, true, Some(&deadline::record(Some(3600))), Some(40)),
            job(false, true, None, Some(40)),
        ];
        let (patches, managing) =
            deadline_patches(&jobs, false, &uids(&["u1"]), &uids(&[]), None, at(5));
        assert!(!managing);
        assert_eq!(patches.len(), 1);
        assert_eq!(patches[0].1["spec"]["activeDeadlineSeconds"], json!(3600));
        assert_eq!(
            patches[0].1["metadata"]["annotations"][deadline::USER_DEADLINE_ANNOTATION],
            serde_json::Value::Null
        );
    }
}
