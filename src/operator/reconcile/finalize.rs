//! The finalizer, and the end of a deleted group.

use super::*;

/// The finalize step, first in every pass: a deleted group without the
/// finalizer is forgotten; a group without it gets it; a deleted group
/// marked to abandon its slots is let go at once. `Some`: the pass ends
/// there.
pub(super) async fn finalize_first(
    ctx: &Context,
    group: &ConcurrencyGroup,
    ns: &str,
    name: &str,
) -> Result<Option<Action>> {
    let finalized = group.finalizers().iter().any(|f| f == FINALIZER);
    let deleting = group.metadata.deletion_timestamp.is_some();
    if deleting && !finalized {
        ctx.ledgers.forget(ns, name).await;
        return Ok(Some(Action::await_change()));
    }
    if !finalized {
        set_finalizer(ctx, group, ns, true).await?;
    }
    if deleting && group.annotations().contains_key(ABANDON_ANNOTATION) {
        // What this process holds for it, for the message.
        let held = match ctx.ledgers.current(ns, name).await {
            Some(gl) => Held::Known(gl.permits().0.len() as u32),
            None => Held::Unknown,
        };
        if let Step::Abandon(why) = deletion::step(held, Duration::ZERO, ctx.deletion_timeout, true)
        {
            return finish_deletion(ctx, group, ns, Some(why)).await.map(Some);
        }
    }
    Ok(None)
}

/// Runs a pass of a group that is not being deleted, and gives it up
/// (`None`) if the group's deletion begins meanwhile. A pass can be held for
/// minutes by a store that does not answer (request timeouts times
/// retries), and passes of one group never overlap: the deletion's own
/// pass, which is bounded by the deletion timeout, would wait behind it.
/// Giving a pass up is safe: each pass decides afresh from the ledger and
/// the Jobs, and a grant it leaves unused is taken up again by holder id.
pub(super) async fn unless_deleted<T>(
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

/// Adds (or removes) this controller's finalizer. Adding is guarded by the
/// group's resourceVersion; removing by a test of the finalizer list
/// itself, which status updates earlier in the pass do not change, so that a
/// concurrent change of the list is never lost either way.
pub(super) async fn set_finalizer(
    ctx: &Context,
    group: &ConcurrencyGroup,
    ns: &str,
    on: bool,
) -> Result<()> {
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
pub(super) async fn finish_deletion(
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
