//! What a pass tells: the summary for the status, metrics, Events and the
//! status itself.

use super::*;

/// What the status says of a pass's outcome.
pub(super) fn observed(
    group: &ConcurrencyGroup,
    result: &Result<Summary>,
    kinds_missing: Option<Vec<String>>,
) -> Observed {
    let deleting = group.metadata.deletion_timestamp.is_some();
    let mut observed = Observed {
        generation: group.metadata.generation,
        ledger_key: group.ledger_key(),
        spec_limit: group.spec.limit,
        max_grace_seconds: group.spec.max_grace_period_seconds,
        suspended: group.spec.suspend,
        deleting: deleting.then(|| result.as_ref().map_or(0, |s| s.admitted_here)),
        kinds_missing,
        ..Default::default()
    };
    match result {
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
        }
        Err(e) => observed.problem = Some(plan::problem(e)),
    }
    observed
}

/// The group's gauges after a pass.
pub(super) fn export_summary(
    ctx: &Context,
    labels: &GroupLabels,
    result: &Result<Summary>,
    observed: &Observed,
) {
    let m = &ctx.metrics;
    if let Ok(s) = result {
        m.waiting
            .get_or_create(labels)
            .set(i64::from(s.waiting_here));
        m.in_use.get_or_create(labels).set(i64::from(s.in_use));
        m.admitted_here
            .get_or_create(labels)
            .set(i64::from(s.admitted_here));
        m.limit.get_or_create(labels).set(i64::from(s.ledger_limit));
    }
    // As the Ready condition says.
    m.group_ready
        .get_or_create(labels)
        .set(i64::from(observed.problem.is_none()));
}

/// `jobgate_oldest_waiting_job_seconds`: how long the group's longest-waiting
/// Job has waited, or no series while none waits.
pub(super) fn export_oldest_waiting(ctx: &Context, views: &[WorkloadView], labels: &GroupLabels) {
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

/// Exports the ledger client's write and conflict counters.
pub(super) fn export_counters(ctx: &Context, gl: &GroupLedger, labels: &GroupLabels) {
    let stats = gl.sem.stats();
    let commits = stats.commits.load(std::sync::atomic::Ordering::Relaxed);
    let conflicts = stats.conflicts.load(std::sync::atomic::Ordering::Relaxed);
    let mut state = lock(&gl.state);
    let exported = &mut state.exported;
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
pub(super) async fn summarize(
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
pub(super) fn longest_grace(views: &[WorkloadView], uids: &[String]) -> Option<(u32, i64)> {
    uids.iter().fold(None, |acc, uid| {
        let grace = views
            .iter()
            .find(|j| &j.uid == uid)
            .map_or(0, |j| j.grace_seconds);
        let (n, longest) = acc.unwrap_or((0, 0));
        Some((n + 1, longest.max(grace)))
    })
}

pub(super) async fn update_status(
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
    // Tell the group's users when it becomes usable or stops being so,
    // and when a kind it gates is missing or comes.
    for kind in [status::READY, status::KINDS_INSTALLED] {
        let of = |s: Option<&crate::operator::crd::ConcurrencyGroupStatus>| {
            s.and_then(|s| s.conditions.iter().find(|c| c.type_ == kind))
                .map(|c| (c.status.clone(), c.reason.clone(), c.message.clone()))
        };
        let Some((now, reason, message)) = of(Some(&status)) else {
            continue;
        };
        let before = of(group.status.as_ref()).map(|(s, r, _)| (s, r));
        // A kind installed from the start is no news.
        let news = match before {
            None => kind == status::READY || now != "True",
            Some(before) => before != (now.clone(), reason.clone()),
        };
        if news {
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
