//! The gather step: the group's Jobs (from the watch cache, or a LIST when
//! a release must be sure), their live pods, the ledger and the
//! credentials, as one `Pass`.

use super::*;

/// What one pass works from, read in this order.
pub(super) struct Pass {
    pub(super) gl: Arc<GroupLedger>,
    pub(super) jobs_api: Api<Job>,
    /// The group's workloads, of every kind, by UID.
    pub(super) jobs: BTreeMap<String, Object>,
    pub(super) views: Vec<WorkloadView>,
    /// The slots the ledger says this cluster holds.
    pub(super) held_in_ledger: BTreeSet<String>,
    pub(super) wait_recorded: bool,
    /// Of the held slots whose Job is gone or finished, those with pods that
    /// may still run.
    pub(super) live_pods: BTreeSet<String>,
    pub(super) spec_limit_applied: u32,
    /// The ledger's limit as read.
    pub(super) limit: u32,
}

/// Gather: the allowlist check, credentials, the ledger client, the
/// ledger, then the Jobs.
pub(super) async fn gather(
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
        .allowed(group.spec.ledger.place(), &group.ledger_key(), ns, name)
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
    let applied = lock(&gl.state)
        .limit_applied
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
    lock(&gl.state).limit_applied = Some(plan.applied);
    let jobs = by_uid(group_workloads(ctx, &jobs_api, ns, name).await?);
    let held_in_ledger: BTreeSet<String> = ledger.holders_of(&gl.agent).cloned().collect();
    let live_pods = pods_left(ctx, ns, &gl, &held_in_ledger, &jobs).await?;
    Ok(Pass {
        spec_limit_applied: plan.applied,
        limit: ledger.limit,
        views: jobs.values().filter_map(|j| j.view()).collect(),
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
pub(super) async fn group_jobs(
    ctx: &Context,
    api: &Api<Job>,
    ns: &str,
    group: &str,
) -> Result<Vec<Arc<Job>>> {
    // Shared with the cache, not copied: a pass at depth reads thousands.
    if ctx.jobs.is_ready() {
        return Ok(ctx.jobs.of_group(ns, group));
    }
    list_jobs(ctx, api, group).await
}

/// The group's workloads of every kind, from the watches' caches, or
/// listed while a first LIST is not in yet.
pub(super) async fn group_workloads(
    ctx: &Context,
    api: &Api<Job>,
    ns: &str,
    group: &str,
) -> Result<Vec<Object>> {
    if !ctx.jobs.is_ready() {
        return list_workloads(ctx, api, ns, group).await;
    }
    let (mut all, not_ready) = ctx.jobs.workloads_of_group(ns, group);
    for kind in &not_ready {
        all.extend(list_kind(ctx, kind, ns, group).await?);
    }
    Ok(all)
}

/// The group's workloads of every kind, listed now.
pub(super) async fn list_workloads(
    ctx: &Context,
    api: &Api<Job>,
    ns: &str,
    group: &str,
) -> Result<Vec<Object>> {
    let mut all: Vec<Object> = list_jobs(ctx, api, group)
        .await?
        .into_iter()
        .map(Object::Job)
        .collect();
    for kind in ctx.kinds.iter() {
        all.extend(list_kind(ctx, kind, ns, group).await?);
    }
    if ctx.gate_pods {
        let api: Api<Pod> = Api::namespaced(ctx.client.clone(), ns);
        let selector = format!("{},{GROUP_LABEL}={group}", job_cache::plain_pods_selector());
        let params = ListParams::default().labels(&selector);
        let listed = timed(ctx, "list_pods", api.list(&params))
            .await
            .map_err(Error::GatherPods)?;
        all.extend(
            listed
                .items
                .into_iter()
                .filter(|p| !crate::operator::gated_pods::has_controller(p))
                .map(|mut p| {
                    p.metadata.managed_fields = None;
                    Object::Pod(Arc::new(p))
                }),
        );
    }
    Ok(all)
}

/// The group's objects of one other kind, listed now.
async fn list_kind(
    ctx: &Context,
    kind: &Arc<KindSpec>,
    ns: &str,
    group: &str,
) -> Result<Vec<Object>> {
    let api: Api<DynamicObject> =
        Api::namespaced_with(ctx.client.clone(), ns, &kind.api_resource());
    let params = ListParams::default().labels(&format!("{GROUP_LABEL}={group}"));
    match timed(ctx, "list_workloads", api.list(&params)).await {
        Ok(listed) => Ok(listed
            .items
            .into_iter()
            .map(|mut obj| {
                job_cache::prune_other(&mut obj);
                Object::Other(kind.clone(), Arc::new(obj))
            })
            .collect()),
        // Its CRD is not installed: none of it can exist here (its watch
        // says so once).
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(Vec::new()),
        Err(e) => Err(Error::GatherJobs(e)),
    }
}

/// The group's Jobs listed now, pruned as the cache's are. In pages, each
/// pruned as it comes: a group's whole list at once would hold every Job in
/// full (pod template, managed fields) in memory together, which at depth
/// was most of the controller's peak.
pub(super) async fn list_jobs(ctx: &Context, api: &Api<Job>, group: &str) -> Result<Vec<Arc<Job>>> {
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

pub(super) fn by_uid(jobs: Vec<Object>) -> BTreeMap<String, Object> {
    jobs.into_iter()
        .filter_map(|j| j.uid().map(|uid| (uid, j)))
        .collect()
}

/// Of the slots held here (in the ledger, or lost), those whose freeing
/// waits on pods ([`admission::frees_on_pods`]) and whose pods may still
/// run: a pod list per kind concerned, and only in passes that may free
/// such a slot.
pub(super) async fn pods_left(
    ctx: &Context,
    ns: &str,
    gl: &GroupLedger,
    held: &BTreeSet<String>,
    jobs: &BTreeMap<String, Object>,
) -> Result<BTreeSet<String>> {
    if !ctx.count_pods {
        return Ok(BTreeSet::new());
    }
    let (_, lost) = gl.permits();
    let candidates: Vec<&String> = held
        .union(&lost)
        .filter(|uid| {
            let view = jobs.get(*uid).and_then(|j| j.view());
            admission::frees_on_pods(view.as_ref(), lost.contains(*uid))
        })
        .collect();
    let queries = {
        let mut state = lock(&gl.state);
        remember_pod_keys(&mut state.pod_keys, held, &lost, jobs);
        pods::queries(&candidates, jobs, &ctx.kinds, &state.pod_keys)
    };
    let mut live = pods::run(ctx, ns, &queries).await?;
    live.extend(pods::plain_pods_live(&candidates, jobs));
    Ok(live)
}

/// Keeps every pod-label value seen for each held workload whose pods
/// carry its name or a field's value, for when it is gone or has moved
/// on; forgets those no longer held.
fn remember_pod_keys(
    keys: &mut BTreeMap<String, BTreeSet<(String, String)>>,
    held: &BTreeSet<String>,
    lost: &BTreeSet<String>,
    jobs: &BTreeMap<String, Object>,
) {
    keys.retain(|uid, _| held.contains(uid) || lost.contains(uid));
    for uid in held.union(lost) {
        if let Some(Object::Other(kind, obj)) = jobs.get(uid) {
            let seen: Vec<(String, String)> = kind
                .pods
                .iter()
                .zip(kind.pod_keys(obj))
                .filter(|(link, _)| link.value != LabelValue::Uid)
                .filter_map(|(_, (label, key))| Some((label.to_string(), key?)))
                .collect();
            if !seen.is_empty() {
                keys.entry(uid.clone()).or_default().extend(seen);
            }
        }
    }
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
pub(super) async fn known_ledger(gl: &GroupLedger, ctx: &Context) -> Result<Ledger> {
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

pub(super) async fn credentials(
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
    crate::operator::ledgers::credentials_from_secret(&secret_ref.name, secret).map(Some)
}
