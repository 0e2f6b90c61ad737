//! The plan step, pure: from what `admission::decide` said and what the
//! ledger write granted, the effects on the group's workloads, in the order
//! `act` carries them out; and the small rules of the pass around it (when
//! a release must be decided again from a fresh LIST, how long a first pass
//! waits for the ledger before fencing, when the permit-loss watcher
//! suspends, which condition an error becomes, when to look again).
//!
//! Nothing here does IO or reads a clock: every input is passed in, so the
//! rules are unit-tested (`plan_tests`), and properties of the effects are
//! checked over generated inputs.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::runtime::events::EventType;

use super::super::admission::{self, Decision, JobAction, ReleaseReason, WorkloadView};
use super::super::crd::{KUEUE_QUEUE_LABEL, SLOTS_ANNOTATION};
use super::super::deletion::Held;
use super::super::effects::{Effect, Once, Told};
use super::super::error::Error;
use super::super::explain;
use super::super::status::Problem;
use crate::ledger::Ledger;

/// What `effects` plans from.
pub struct Inputs<'a> {
    pub decision: &'a Decision,
    pub views: &'a [WorkloadView],
    /// Slot tokens granted by this pass's write, by UID.
    pub granted: &'a BTreeMap<String, u64>,
    /// Permits whose lease could not be renewed in time, as of now: never
    /// unsuspended or adopted on (a later pass gives them up).
    pub lost: &'a BTreeSet<String>,
    /// `onLeaseLoss: Keep`.
    pub keep_on_loss: bool,
    /// The group's name, for the messages.
    pub group: &'a str,
    /// The group is being deleted (else, if it holds Jobs back, suspended).
    pub deleting: bool,
    /// `maxGracePeriodSeconds`.
    pub max_grace_seconds: i64,
    /// The ledger's limit as read.
    pub limit: u32,
    /// The ledger as of this pass's write, and this cluster's agent id, for
    /// the messages of Jobs that wait; `None` when no Job asked.
    pub ledger: Option<(&'a Ledger, &'a str)>,
    /// The `jobgate.dev/slots` annotation of each Job refused for it.
    pub slots_asked: &'a BTreeMap<String, String>,
    /// The Kueue queue each Job left to Kueue names.
    pub kueue_queues: &'a BTreeMap<String, String>,
}

/// What a pass is to do, and how many Jobs wait for a slot here (for the
/// status): Jobs that wait, held back, or suspended for want of a slot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Planned {
    pub effects: Vec<Effect>,
    pub waiting: u32,
}

/// The effects of one pass, in order: releases, disowned Jobs, refusals,
/// Jobs left to Kueue, Jobs held back, then what follows from the grants
/// (admissions first, then Jobs that wait, are adopted, kept over the
/// limit or suspended for want of a slot). Tells already in `told` are
/// left out before their notes are written: at depth a pass has thousands
/// of Jobs that wait, told so once; `tell_once` then records the rest.
pub fn effects(i: &Inputs, told: &Told) -> Planned {
    let d = i.decision;
    // Built only when a Job is refused: at depth a pass has thousands.
    let views: BTreeMap<&str, &WorkloadView> =
        if d.too_slow_to_stop.is_empty() && d.bad_slots.is_empty() {
            BTreeMap::new()
        } else {
            i.views.iter().map(|j| (j.uid.as_str(), j)).collect()
        };
    let mut out = Vec::new();
    for (uid, reason) in &d.release {
        out.push(Effect::Released {
            uid: uid.clone(),
            reason: *reason,
        });
    }
    for uid in &d.disown {
        out.push(Effect::Disown { uid: uid.clone() });
    }
    for uid in &d.too_slow_to_stop {
        let Some(view) = views.get(uid.as_str()) else {
            continue;
        };
        let note = format!(
            "its pods may take {} s to stop (terminationGracePeriodSeconds), more than the group's maxGracePeriodSeconds {}, so its slot could not be given up in time if this cluster lost its lease; not admitted. Lower the grace period, or raise the group's maxGracePeriodSeconds and leaseSeconds",
            view.grace_seconds, i.max_grace_seconds
        );
        if let Some(effect) = refuse(
            view,
            "GracePeriodTooLong",
            note,
            Once::Waiting(uid.clone()),
            told,
        ) {
            out.push(effect);
        }
    }
    for uid in &d.bad_slots {
        let Some(view) = views.get(uid.as_str()) else {
            continue;
        };
        let asked = i.slots_asked.get(uid).cloned().unwrap_or_default();
        let note = if view.slots == 0 {
            format!(
                "annotation {SLOTS_ANNOTATION}: {asked:?} is not a positive whole number; not admitted. Set it to how many units of the group's limit the Job takes, e.g. \"2\""
            )
        } else {
            format!(
                "annotation {SLOTS_ANNOTATION}: {asked:?} is more than the group's limit {}, so it could never run; not admitted. Lower it, or raise the limit",
                i.limit
            )
        };
        if let Some(effect) = refuse(
            view,
            "InvalidSlots",
            note,
            Once::Refused(format!("InvalidSlots/{uid}")),
            told,
        ) {
            out.push(effect);
        }
    }
    for uid in &d.in_kueue {
        let once = Once::Refused(format!("ManagedByKueue/{uid}"));
        if told.knows(&once) {
            continue;
        }
        let queue = i.kueue_queues.get(uid).cloned().unwrap_or_default();
        out.push(Effect::Tell {
            uid: uid.clone(),
            type_: EventType::Warning,
            reason: "ManagedByKueue",
            action: "Admit",
            note: format!(
                "this Job also names Kueue queue {queue:?} ({KUEUE_QUEUE_LABEL}); Kueue suspends and resumes it, so jobgate neither admits nor suspends it and its group's limit does not count it. Remove one of the two labels"
            ),
            once: Some(once),
        });
    }
    let (held_reason, held_note) = if i.deleting {
        (
            "GroupDeleting",
            format!(
                "group {} is being deleted: this Job is not admitted. Recreate the group to admit it, or delete the Job",
                i.group
            ),
        )
    } else {
        (
            "GroupSuspended",
            format!(
                "group {} is suspended (spec.suspend: true): this Job keeps its place and is admitted once the group is resumed",
                i.group
            ),
        )
    };
    for uid in &d.held_back {
        let once = Once::Held(format!("{held_reason}/{uid}"));
        if told.knows(&once) {
            continue;
        }
        out.push(Effect::Tell {
            uid: uid.clone(),
            type_: EventType::Normal,
            reason: held_reason,
            action: "Admit",
            note: held_note.clone(),
            once: Some(once),
        });
    }
    let actions = admission::on_grants(d, i.views, i.granted, i.keep_on_loss);
    // A waiting Job's place in the queue as it is after this pass's grants.
    let queue: Vec<&String> = d
        .admit
        .iter()
        .filter(|u| !i.granted.contains_key(*u))
        .collect();
    // Built only when a Job not told yet waits.
    let mut place: Option<BTreeMap<&str, usize>> = None;
    // The same for every Job that waits in this pass.
    let usage = i
        .ledger
        .map(|(ledger, agent)| explain::usage(ledger, agent));
    let mut waiting = d.held_back.len();
    let mut after = Vec::new();
    for action in actions {
        match action {
            JobAction::Unsuspend { uid, token } if !i.lost.contains(&uid) => {
                out.push(Effect::Unsuspend { uid, token });
            }
            JobAction::Adopt { uid, token } if !i.lost.contains(&uid) => {
                after.push(Effect::Adopt { uid, token });
            }
            // Lost since the write (the ledger read after it can be
            // slow): a later pass gives the slot up instead.
            JobAction::Unsuspend { .. } | JobAction::Adopt { .. } => {}
            JobAction::Wait { uid } => {
                waiting += 1;
                let Some(usage) = &usage else {
                    continue;
                };
                if told.waiting.contains(&uid) {
                    continue;
                }
                let place = place.get_or_insert_with(|| {
                    queue
                        .iter()
                        .enumerate()
                        .map(|(at, uid)| (uid.as_str(), at))
                        .collect()
                });
                let note = match place.get(uid.as_str()) {
                    Some(at) => explain::waiting(at + 1, queue.len(), usage),
                    // Holds a slot not confirmed yet (not in the queue).
                    None => format!("waiting for its slot to be confirmed; {usage}"),
                };
                after.push(Effect::Tell {
                    uid: uid.clone(),
                    type_: EventType::Normal,
                    reason: "Waiting",
                    action: "Admit",
                    note,
                    once: Some(Once::Waiting(uid)),
                });
            }
            JobAction::KeepOverLimit { uid } => after.push(Effect::Tell {
                uid,
                type_: EventType::Warning,
                reason: "OverLimit",
                action: "Admit",
                note: "this Job lost its slot and keeps running because onLeaseLoss is Keep; the limit may be exceeded until it ends".into(),
                once: None,
            }),
            JobAction::SuspendNoSlot { uid } => {
                waiting += 1;
                let in_use = i.ledger.map_or(0, |(l, _)| l.in_use());
                let limit = i.ledger.map_or(i.limit, |(l, _)| l.limit);
                after.push(Effect::Suspend {
                    uid,
                    reason: "SuspendedNoSlot",
                    note: format!(
                        "created without spec.suspend: true and no slot is free ({in_use}/{limit} in use); suspended until one is. Create Jobs of group {} with spec.suspend: true",
                        i.group
                    ),
                });
            }
        }
    }
    out.extend(after);
    Planned {
        effects: out,
        waiting: waiting as u32,
    }
}

/// A Job that may not be admitted: suspended if it runs, else told once.
fn refuse(
    view: &WorkloadView,
    reason: &'static str,
    note: String,
    once: Once,
    told: &Told,
) -> Option<Effect> {
    if !view.suspended {
        return Some(Effect::Suspend {
            uid: view.uid.clone(),
            reason,
            note,
        });
    }
    (!told.knows(&once)).then(|| Effect::Tell {
        uid: view.uid.clone(),
        type_: EventType::Warning,
        reason,
        action: "Admit",
        note,
        once: Some(once),
    })
}

/// What the ledger write asks for, in order: every slot to take up again,
/// unsuspend or adopt, and of the Jobs that wait only as many as one write
/// could grant: their units up to the first past `limit` (a write grants no
/// more than the limit, strictly in order, so every Job behind that one
/// waits whatever the ledger says). The units the rest want are returned
/// apart, to be recorded as waiting as if they had asked: at depth that is
/// thousands of Jobs a pass no longer asks for one by one.
pub fn ask(
    decision: &Decision,
    slots: impl Fn(&str) -> u32,
    limit: u32,
) -> (Vec<(String, u32)>, u32) {
    let weight = |uid: &str| slots(uid).max(1);
    let mut asked: Vec<(String, u32)> = decision
        .reacquire
        .iter()
        .chain(&decision.unsuspend)
        .chain(&decision.adopt)
        .map(|uid| (uid.clone(), weight(uid)))
        .collect();
    let mut units: u64 = 0;
    let mut behind: u32 = 0;
    for uid in &decision.admit {
        let w = weight(uid);
        if units <= u64::from(limit) {
            // One wanting more than the limit holds back nobody behind it.
            if w <= limit {
                units += u64::from(w);
            }
            asked.push((uid.clone(), w));
        } else if w <= limit {
            // One wanting more than the limit never waits in the ledger.
            behind = behind.saturating_add(w);
        }
    }
    (asked, behind)
}

/// Whether the pass must decide again from a LIST made now: the watch
/// cache can lag behind this process's own writes (a Job it just
/// unsuspended still shown suspended, without pods) or miss a Job another
/// replica admitted, and a slot freed on such a view would be taken
/// elsewhere while the Job's pods run. Finished is final; every other
/// release, and any lost slot, is not.
pub fn needs_fresh_list(decision: &Decision) -> bool {
    !decision.lost.is_empty()
        || decision
            .release
            .iter()
            .any(|(_, why)| *why != ReleaseReason::Finished)
}

/// How long a pass with no ledger client for its group yet (this process
/// just started, or rebuilt it) waits for the ledger before it suspends the
/// running Jobs no permit vouches for; `None`: it does not (no fencing
/// without the ledger, or a client is there). Those Jobs are safe only
/// while the previous process's renewals are: up to `fence_after` after
/// its last one, which came at most a third of that before it stopped.
pub fn startup_fence_wait(
    fence_after: Duration,
    has_client: bool,
    fence_without_ledger: bool,
) -> Option<Duration> {
    (!has_client && fence_without_ledger).then_some(fence_after / 3)
}

/// Whether the watcher of a permit suspends its Job when the permit ends:
/// only when the lease was truly lost (not released, not its client
/// stopped or replaced, which mark permits lost as they stop), the group
/// says suspend, and fencing does not wait for the ledger.
pub fn fence_on_loss(
    lost: bool,
    client_in_use: bool,
    suspend_on_loss: bool,
    fence_without_ledger: bool,
) -> bool {
    lost && client_in_use && suspend_on_loss && fence_without_ledger
}

/// What a deleted group's pass (the slots it found held here, or why it
/// failed) says this process still holds for it, for `deletion::step`.
/// `open_here`: this process has a ledger client for it.
pub fn held_for_deletion(outcome: Result<u32, &Error>, open_here: bool) -> Held {
    match outcome {
        Ok(held) => Held::Known(held),
        // Refused with no client in this process: nothing was admitted
        // through it here (Jobs admitted before a restart with a narrower
        // allowlist were suspended by the pass that refused it).
        Err(Error::LedgerNotAllowed(_)) if !open_here => Held::Known(0),
        Err(e) if e.is_ledger_unusable() => Held::LedgerUnusable,
        // Anything else (an API call failed): keep trying, with no timeout,
        // since the ledger itself is fine.
        Err(_) => Held::Unknown,
    }
}

/// The condition a failed pass puts on its group.
pub fn problem(e: &Error) -> Problem {
    match e {
        Error::OpenLedger(inner) | Error::ReadLedger(inner) | Error::WriteLedger(inner) => {
            Problem::from_ledger(inner)
        }
        Error::Credentials { .. }
        | Error::CredentialsMissing { .. }
        | Error::CredentialsForbidden { .. }
        | Error::CredentialsIncomplete { .. } => {
            Problem::new("CredentialsUnavailable", e.to_string())
        }
        Error::InvalidTiming(_) => Problem::new("LeaseTooShort", e.to_string()),
        Error::LedgerNotAllowed(why) => Problem::new("LedgerNotAllowed", why.clone()),
        other => Problem::new("ReconcileFailed", other.to_string()),
    }
}

/// What a pass that succeeded asks of the next one.
#[derive(Debug, Clone, Copy)]
pub struct Requeue {
    pub waiting_here: u32,
    pub admit_new: bool,
    pub deleting: bool,
    pub poll_waiting: Duration,
    pub poll_idle: Duration,
    /// With `onControllerLoss: FailJobs`: how often deadlines need looking at.
    pub deadline_every: Option<Duration>,
    /// Counts not written to the status yet are written this soon.
    pub status_due: Option<Duration>,
}

/// When to look at the group again: soon while Jobs wait to be admitted
/// (or the group is being deleted), rarely when idle, and never later than
/// deadlines or a status write need.
pub fn requeue_after(r: &Requeue) -> Duration {
    let wait = if r.waiting_here > 0 && r.admit_new || r.deleting {
        r.poll_waiting
    } else {
        r.poll_idle
    };
    let wait = r.deadline_every.map_or(wait, |every| wait.min(every));
    r.status_due.map_or(wait, |due| wait.min(due))
}

/// When a failed pass is tried again: in 5 s, or sooner for a group whose
/// Jobs' deadlines (`onControllerLoss: FailJobs`) must be moved on however
/// the rest of the pass fares: a quarter of the fence period.
pub fn retry_after(fail_jobs: bool, fence_after: Option<Duration>) -> Duration {
    let retry = Duration::from_secs(5);
    match fence_after {
        Some(fence_after) if fail_jobs => retry.min(fence_after / 4),
        _ => retry,
    }
}
