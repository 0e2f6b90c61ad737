//! The whole admission decision of one pass for one group in one cluster,
//! as pure functions: `decide` says, from the group's Jobs, the slots the
//! ledger says this cluster holds and the permits this process renews, what
//! to fence, release and ask for; `on_grants` says, from what the ledger
//! write granted, what to do to each Job that asked. The reconciler gathers
//! the inputs, calls these, and carries out what they say.

use std::collections::{BTreeMap, BTreeSet};

pub use super::workload::WorkloadView;

/// Everything one pass decides from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub jobs: &'a [WorkloadView],
    /// Slots the ledger says this cluster holds.
    pub held_in_ledger: &'a BTreeSet<String>,
    /// Slots this process holds a permit for (and so renews).
    pub permits: &'a BTreeSet<String>,
    /// Of those, the ones whose lease could not be renewed in time.
    pub lost_permits: &'a BTreeSet<String>,
    /// `onLeaseLoss: Suspend`: Jobs whose slot is lost are suspended.
    pub suspend_on_loss: bool,
    /// The ledger records that this cluster waits for slots.
    pub wait_recorded: bool,
    /// `maxGracePeriodSeconds`: Jobs whose pods may take longer to stop are
    /// not admitted, since the fence leaves only that much of the lease.
    pub max_grace_seconds: i64,
    /// Job UIDs, among held slots whose Job is gone or finished, that still
    /// have pods that may run (pending, running or terminating): their slot
    /// is kept until those pods end.
    pub live_pods: &'a BTreeSet<String>,
    /// False while the group is suspended or being deleted: no Job gets a
    /// new slot; held slots are kept and freed as usual.
    pub admit_new: bool,
    /// The ledger's limit: a Job asking for more slots could never run.
    pub limit: u32,
}

/// Why a slot is given up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReleaseReason {
    /// The Job is gone.
    Deleted,
    /// The Job completed, failed or is being deleted.
    Finished,
    /// A user suspended the admitted Job again and its pods are gone.
    Suspended,
    /// The slot's lease was lost, the Job is suspended and its pods are gone.
    LeaseLost,
}

impl ReleaseReason {
    /// The `reason` label of the releases metric.
    pub fn label(self) -> &'static str {
        match self {
            ReleaseReason::Deleted => "deleted",
            ReleaseReason::Finished => "finished",
            ReleaseReason::Suspended => "suspended",
            ReleaseReason::LeaseLost => "lease_lost",
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Decision {
    /// Running Jobs whose slot is lost: suspend them first, before and
    /// whatever the ledger write does, so that they stop even when the
    /// ledger cannot be reached.
    pub fence: Vec<String>,
    /// Lost slots of Jobs still running or suspended with pods left: never
    /// unsuspended or asked for in this pass.
    pub lost: Vec<String>,
    /// Slots to give up in this pass's ledger write.
    pub release: Vec<(String, ReleaseReason)>,
    /// Slots held in the ledger that this process has no permit for (it
    /// restarted, or rebuilt its client): asked for again, which returns
    /// the same token without a write and resumes renewing them.
    pub reacquire: Vec<String>,
    /// Hold a slot but are still suspended (the controller stopped between
    /// the ledger write and the patch): unsuspended once the slot is
    /// confirmed, which is free.
    pub unsuspend: Vec<String>,
    /// Running without a slot (created without `suspend: true`, or lost it
    /// under `onLeaseLoss: Keep`): take a slot if one is free.
    pub adopt: Vec<String>,
    /// Waiting Jobs in admission order: priority, then age, then name.
    pub admit: Vec<String>,
    /// Jobs without a slot that are not admitted because their pods may
    /// take longer to stop than the group allows; the running ones among
    /// them are suspended.
    pub too_slow_to_stop: Vec<String>,
    /// Running Jobs that hold a slot but whose pods may take longer to stop
    /// than the group now allows (`maxGracePeriodSeconds` was lowered after
    /// they were admitted): left running, and reported.
    pub held_too_slow: Vec<String>,
    /// Nothing waits here any more: stop asking other clusters to defer.
    pub withdraw_wait: bool,
    /// Waiting Jobs, in admission order, not asked for because the group
    /// admits nothing new.
    pub held_back: Vec<String>,
    /// Running without a slot while the group admits nothing new: suspended.
    pub unslotted: Vec<String>,
    /// Jobs without a slot whose `jobgate.dev/slots` is not a positive
    /// integer or is more than the limit: not admitted (suspended if
    /// running), and told why.
    pub bad_slots: Vec<String>,
    /// Jobs without a slot that also name a Kueue queue: Kueue suspends and
    /// resumes them, so jobgate neither admits nor suspends them, and tells
    /// them why once.
    pub in_kueue: Vec<String>,
    /// Suspended Jobs still marked admitted that hold no slot: a Job that
    /// lost its slot (kept running under `onLeaseLoss: Keep`, or released
    /// by hand) and was then suspended by a user. Marked no longer
    /// admitted, so that resumed it waits for a slot like any other rather
    /// than being taken for a Job that lost its slot while it ran. (A Job
    /// giving its slot up in this pass is marked with the release.)
    pub disown: Vec<String>,
}

impl Decision {
    /// Every slot to ask for in the ledger write, in order.
    pub fn acquire(&self) -> Vec<String> {
        self.reacquire
            .iter()
            .chain(&self.unsuspend)
            .chain(&self.adopt)
            .chain(&self.admit)
            .cloned()
            .collect()
    }

    /// Every slot to give up in the ledger write.
    pub fn release_ids(&self) -> Vec<String> {
        self.release.iter().map(|(uid, _)| uid.clone()).collect()
    }

    pub fn writes_nothing(&self) -> bool {
        self.release.is_empty()
            && self.reacquire.is_empty()
            && self.unsuspend.is_empty()
            && self.adopt.is_empty()
            && self.admit.is_empty()
    }
}

pub fn decide(inputs: &Inputs) -> Decision {
    let jobs: BTreeMap<&str, &WorkloadView> =
        inputs.jobs.iter().map(|j| (j.uid.as_str(), j)).collect();
    let mut out = Decision::default();

    // Lost slots of Jobs that may still run. Their pods still count, so the
    // slot is given up only once the Job is suspended and its pods are gone.
    if inputs.suspend_on_loss {
        for uid in inputs.lost_permits {
            let Some(job) = jobs.get(uid.as_str()) else {
                continue;
            };
            if job.finished {
                continue;
            }
            out.lost.push(uid.clone());
            if !job.suspended {
                out.fence.push(uid.clone());
            }
        }
    }

    for holder in inputs.held_in_ledger {
        let pods_left = inputs.live_pods.contains(holder);
        let reason = match jobs.get(holder.as_str()) {
            None if pods_left => None,
            None => Some(ReleaseReason::Deleted),
            Some(j) if j.finished && pods_left => None,
            Some(j) if j.finished => Some(ReleaseReason::Finished),
            Some(j) if j.suspended && j.admitted && !j.active_pods && !pods_left => {
                Some(ReleaseReason::Suspended)
            }
            Some(j) if j.suspended && !j.admitted && !out.lost.contains(holder) => {
                out.unsuspend.push(holder.clone());
                None
            }
            Some(_) => None,
        };
        if let Some(reason) = reason {
            out.release.push((holder.clone(), reason));
        }
    }
    for uid in &out.lost {
        let gone = jobs
            .get(uid.as_str())
            .is_some_and(|j| j.suspended && !j.active_pods)
            && !inputs.live_pods.contains(uid);
        if gone && !out.release.iter().any(|(r, _)| r == uid) {
            out.release.push((uid.clone(), ReleaseReason::LeaseLost));
        }
    }

    let releasing: BTreeSet<&str> = out.release.iter().map(|(uid, _)| uid.as_str()).collect();
    out.disown = inputs
        .jobs
        .iter()
        .filter(|j| j.suspended && j.admitted && !j.finished)
        .filter(|j| !inputs.held_in_ledger.contains(&j.uid))
        .map(|j| j.uid.clone())
        .collect();
    out.reacquire = inputs
        .held_in_ledger
        .iter()
        .filter(|uid| {
            !inputs.permits.contains(*uid)
                && !releasing.contains(uid.as_str())
                && !out.unsuspend.contains(uid)
        })
        .cloned()
        .collect();

    let mut waiting: Vec<&WorkloadView> = Vec::new();
    for j in inputs.jobs {
        if j.finished {
            continue;
        }
        if inputs.held_in_ledger.contains(&j.uid) {
            if !j.suspended && j.grace_seconds > inputs.max_grace_seconds {
                out.held_too_slow.push(j.uid.clone());
            }
            continue;
        }
        if j.in_kueue {
            out.in_kueue.push(j.uid.clone());
            continue;
        }
        if j.grace_seconds > inputs.max_grace_seconds && !(j.suspended && j.admitted) {
            out.too_slow_to_stop.push(j.uid.clone());
            continue;
        }
        if (j.slots == 0 || j.slots > inputs.limit) && !(j.suspended && j.admitted) {
            out.bad_slots.push(j.uid.clone());
            continue;
        }
        if !j.suspended {
            // A Job fenced for a lost slot is being suspended: it waits for
            // a slot again once it is, rather than being re-admitted while
            // it stops.
            if !out.lost.contains(&j.uid) {
                out.adopt.push(j.uid.clone());
            }
        } else if !j.admitted {
            waiting.push(j);
        }
    }
    waiting.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.created.cmp(&b.created))
            .then_with(|| a.name.cmp(&b.name))
    });
    out.admit = waiting.into_iter().map(|j| j.uid.clone()).collect();
    if !inputs.admit_new {
        out.held_back = std::mem::take(&mut out.admit);
        out.unslotted = std::mem::take(&mut out.adopt);
    }
    out.withdraw_wait = inputs.wait_recorded && out.admit.is_empty() && out.adopt.is_empty();
    out
}

/// When the longest-waiting Job of the group was created: suspended, never
/// admitted, unfinished and not Kueue's. For "waiting too long" alerts.
pub fn oldest_waiting(jobs: &[WorkloadView]) -> Option<&str> {
    jobs.iter()
        .filter(|j| j.suspended && !j.admitted && !j.finished && !j.in_kueue)
        .map(|j| j.created.as_str())
        .min()
}

/// The Jobs to suspend when the ledger cannot be read, so that the limit
/// holds without it (with `onLeaseLoss: Suspend`): every running Job this
/// process holds no valid permit for. That is a lost permit; a Job admitted
/// before a restart (or by a client since rebuilt), whose lease's last
/// renewal is unknown, so other clusters may already have taken its slot;
/// and a Job created running, which has no slot at all.
pub fn fence_without_ledger(
    jobs: &[WorkloadView],
    permits: &BTreeSet<String>,
    lost_permits: &BTreeSet<String>,
    suspend_on_loss: bool,
) -> Vec<String> {
    if !suspend_on_loss {
        return Vec::new();
    }
    jobs.iter()
        .filter(|j| !j.finished && !j.suspended && !j.in_kueue)
        .filter(|j| lost_permits.contains(&j.uid) || !permits.contains(&j.uid))
        .map(|j| j.uid.clone())
        .collect()
}

/// Whether freeing the slot of a Job (`None`: gone) waits on a list of its
/// pods. A slot is free only when its work has stopped, and a Job's status
/// counts lag behind its pods: a pod created just before a suspension is not
/// in `status.active` yet. So: a Job gone or finished, or suspended with its
/// slot to give up, by a user (still admitted) or by a fence (`lost`). A Job
/// granted a slot and not yet unsuspended is none of these, so admissions
/// cost no pod list.
pub fn frees_on_pods(job: Option<&WorkloadView>, lost: bool) -> bool {
    job.is_none_or(|j| j.finished || (j.suspended && (j.admitted || lost)))
}

/// What to do to one Job after the ledger write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum JobAction {
    /// Got (or kept) its slot: unsuspend and mark admitted with the token.
    Unsuspend { uid: String, token: u64 },
    /// No slot yet: tell it once that it waits.
    Wait { uid: String },
    /// Running without a slot and got one: mark it admitted.
    Adopt { uid: String, token: u64 },
    /// Admitted earlier, lost its slot, and the group says keep it running:
    /// it stays over the limit until it ends.
    KeepOverLimit { uid: String },
    /// Running without a slot and none is free: suspend it until one is.
    SuspendNoSlot { uid: String },
}

/// The Job actions that follow from `granted` (slot tokens by Job UID) for
/// every Job that asked. `keep_on_loss` is `onLeaseLoss: Keep`.
pub fn on_grants(
    decision: &Decision,
    jobs: &[WorkloadView],
    granted: &BTreeMap<String, u64>,
    keep_on_loss: bool,
) -> Vec<JobAction> {
    // Still marked admitted while it runs without a slot: it lost the slot
    // while it ran. A Job suspended meanwhile is no longer marked (see
    // `Decision::disown`), so resumed it has no claim to the limit.
    let lost_while_running: BTreeSet<&str> = jobs
        .iter()
        .filter(|j| j.admitted)
        .map(|j| j.uid.as_str())
        .collect();
    let mut out = Vec::new();
    for uid in decision.unsuspend.iter().chain(&decision.admit) {
        let uid = uid.clone();
        out.push(match granted.get(&uid) {
            Some(&token) => JobAction::Unsuspend { uid, token },
            None => JobAction::Wait { uid },
        });
    }
    for uid in decision.adopt.iter().chain(&decision.unslotted) {
        let uid = uid.clone();
        out.push(match granted.get(&uid) {
            Some(&token) => JobAction::Adopt { uid, token },
            None if keep_on_loss && lost_while_running.contains(uid.as_str()) => {
                JobAction::KeepOverLimit { uid }
            }
            None => JobAction::SuspendNoSlot { uid },
        });
    }
    out
}

#[cfg(test)]
mod grant_tests;
#[cfg(test)]
mod tests;
