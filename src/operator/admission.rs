//! The whole admission decision of one pass for one group in one cluster,
//! as pure functions: `decide` says, from the group's Jobs, the slots the
//! ledger says this cluster holds and the permits this process renews, what
//! to fence, release and ask for; `on_grants` says, from what the ledger
//! write granted, what to do to each Job that asked. The reconciler gathers
//! the inputs, calls these, and carries out what they say.

use std::collections::{BTreeMap, BTreeSet};

/// What the controller knows about one Job of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// The holder id in the ledger.
    pub uid: String,
    pub name: String,
    /// Creation time as a sortable RFC 3339 string.
    pub created: String,
    /// `jobgate.dev/priority`; higher goes first.
    pub priority: i32,
    pub suspended: bool,
    /// Carries the admitted-at annotation (this controller let it run).
    pub admitted: bool,
    /// Has a `Complete` or `Failed` condition, or is being deleted.
    pub finished: bool,
    /// Has pods that are not finished.
    pub active_pods: bool,
    /// The pod template's `terminationGracePeriodSeconds` (Kubernetes'
    /// default, 30, when unset): how long its pods may take to stop.
    pub grace_seconds: i64,
    /// Units of the limit it takes (`jobgate.dev/slots`); 0 when the
    /// annotation is not a positive integer.
    pub slots: u32,
    /// Names a Kueue queue: Kueue suspends and resumes it, not jobgate.
    pub in_kueue: bool,
}

/// Everything one pass decides from.
#[derive(Debug, Clone, Copy)]
pub struct Inputs<'a> {
    pub jobs: &'a [JobView],
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
    let jobs: BTreeMap<&str, &JobView> = inputs.jobs.iter().map(|j| (j.uid.as_str(), j)).collect();
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

    let mut waiting: Vec<&JobView> = Vec::new();
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
pub fn oldest_waiting(jobs: &[JobView]) -> Option<&str> {
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
    jobs: &[JobView],
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
pub fn frees_on_pods(job: Option<&JobView>, lost: bool) -> bool {
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
    jobs: &[JobView],
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
mod tests {
    use super::*;

    fn job(uid: &str, created: &str) -> JobView {
        JobView {
            uid: uid.into(),
            name: format!("job-{uid}"),
            created: created.into(),
            priority: 0,
            suspended: true,
            admitted: false,
            finished: false,
            active_pods: false,
            grace_seconds: 30,
            slots: 1,
            in_kueue: false,
        }
    }

    fn running(uid: &str) -> JobView {
        JobView {
            suspended: false,
            admitted: true,
            active_pods: true,
            ..job(uid, "t")
        }
    }

    fn set(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    fn ids(uids: &[&str]) -> Vec<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    /// A pass where this process holds a permit for every held slot and
    /// none is lost, under `onLeaseLoss: Suspend`.
    fn decide_with(jobs: &[JobView], held: &[&str]) -> Decision {
        let held = set(held);
        decide(&Inputs {
            jobs,
            held_in_ledger: &held,
            permits: &held,
            lost_permits: &BTreeSet::new(),
            suspend_on_loss: true,
            wait_recorded: false,
            admit_new: true,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &BTreeSet::new(),
        })
    }

    #[test]
    fn a_group_that_admits_nothing_new_keeps_held_slots_and_frees_finished_ones() {
        let mut done = running("done");
        done.finished = true;
        let mut unslotted = running("created-running");
        unslotted.admitted = false;
        let jobs = [
            running("runs"),
            done,
            unslotted,
            job("w2", "2026-01-02T00:00:00Z"),
            job("w1", "2026-01-01T00:00:00Z"),
        ];
        let held = set(&["runs", "done"]);
        let d = decide(&Inputs {
            jobs: &jobs,
            held_in_ledger: &held,
            permits: &held,
            lost_permits: &BTreeSet::new(),
            suspend_on_loss: true,
            wait_recorded: true,
            admit_new: false,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &BTreeSet::new(),
        });
        assert_eq!(
            d.release,
            vec![("done".to_string(), ReleaseReason::Finished)]
        );
        assert!(d.acquire().is_empty(), "nothing new is asked for: {d:?}");
        assert_eq!(d.held_back, ids(&["w1", "w2"]), "in admission order");
        assert_eq!(d.unslotted, ids(&["created-running"]));
        assert!(
            d.withdraw_wait,
            "other clusters stop deferring to a paused one"
        );
        let actions = on_grants(&d, &jobs, &BTreeMap::new(), false);
        assert_eq!(
            actions,
            vec![JobAction::SuspendNoSlot {
                uid: "created-running".into()
            }]
        );
    }

    #[test]
    fn jobs_asking_for_impossible_slots_are_not_admitted() {
        let mut zero = job("zero", "1");
        zero.slots = 0;
        let mut huge = job("huge", "2");
        huge.slots = 101;
        let mut fits = job("fits", "3");
        fits.slots = 100;
        let d = decide_with(&[zero, huge, fits], &[]);
        assert_eq!(d.bad_slots, ids(&["zero", "huge"]));
        assert_eq!(d.admit, ids(&["fits"]));
    }

    #[test]
    fn waiting_jobs_go_by_priority_then_age() {
        let mut urgent = job("c", "2026-01-03T00:00:00Z");
        urgent.priority = 10;
        let jobs = [
            job("b", "2026-01-02T00:00:00Z"),
            job("a", "2026-01-01T00:00:00Z"),
            urgent,
        ];
        let d = decide_with(&jobs, &[]);
        assert_eq!(d.admit, ids(&["c", "a", "b"]));
        assert_eq!(d.acquire(), ids(&["c", "a", "b"]));
    }

    #[test]
    fn equal_priority_and_age_go_by_name() {
        let mut b = job("1", "t");
        b.name = "b".into();
        let mut a = job("2", "t");
        a.name = "a".into();
        assert_eq!(decide_with(&[b, a], &[]).admit, ids(&["2", "1"]));
    }

    #[test]
    fn finished_and_deleted_jobs_free_their_slots() {
        let mut done = running("a");
        done.finished = true;
        let d = decide_with(&[done], &["a", "gone"]);
        assert_eq!(
            d.release,
            vec![
                ("a".into(), ReleaseReason::Finished),
                ("gone".into(), ReleaseReason::Deleted)
            ]
        );
        assert_eq!(d.release_ids(), ids(&["a", "gone"]));
        assert!(d.acquire().is_empty());
    }

    #[test]
    fn a_finished_job_without_a_slot_asks_for_nothing() {
        let mut done = job("a", "t");
        done.finished = true;
        assert!(decide_with(&[done], &[]).writes_nothing());
    }

    #[test]
    fn a_slot_held_for_a_suspended_job_is_finished_by_unsuspending() {
        let d = decide_with(&[job("a", "t")], &["a"]);
        assert_eq!(d.unsuspend, ids(&["a"]));
        assert!(d.admit.is_empty(), "must not ask for a second slot");
        assert_eq!(d.acquire(), ids(&["a"]), "asked again to get its token");
    }

    #[test]
    fn a_job_suspended_again_by_a_user_is_released_once_its_pods_are_gone() {
        let mut paused = running("a");
        paused.suspended = true;
        assert!(decide_with(&[paused.clone()], &["a"]).release.is_empty());
        paused.active_pods = false;
        assert_eq!(
            decide_with(&[paused], &["a"]).release,
            vec![("a".into(), ReleaseReason::Suspended)]
        );
    }

    /// A pass where Job `uid` holds its slot, lost or not, and its pods may
    /// still run.
    fn decide_with_pods(jobs: &[JobView], uid: &str, lost: bool) -> Decision {
        let held = set(&[uid]);
        decide(&Inputs {
            jobs,
            held_in_ledger: &held,
            permits: &held,
            lost_permits: &if lost { held.clone() } else { BTreeSet::new() },
            suspend_on_loss: true,
            wait_recorded: false,
            admit_new: true,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &held,
        })
    }

    /// The Job controller may not have counted a pod yet when the Job is
    /// suspended: its slot waits for the pod list, not the counts.
    #[test]
    fn a_suspended_jobs_slot_is_kept_while_a_pod_not_yet_counted_may_run() {
        let mut paused = running("a");
        paused.suspended = true;
        paused.active_pods = false;
        let d = decide_with_pods(std::slice::from_ref(&paused), "a", false);
        assert!(d.release.is_empty(), "a pod may still run: {d:?}");
        // Fenced (un-admitted by the fence's patch) with a pod left: the
        // lost slot waits too.
        let mut fenced = paused.clone();
        fenced.admitted = false;
        let d = decide_with_pods(&[fenced], "a", true);
        assert!(d.release.is_empty(), "a pod may still run: {d:?}");
        assert_eq!(
            decide_with(&[paused], &["a"]).release,
            vec![("a".into(), ReleaseReason::Suspended)],
            "no pod left"
        );
    }

    #[test]
    fn slots_wait_on_pods_when_the_job_is_gone_finished_or_suspended_to_give_one_up() {
        assert!(frees_on_pods(None, false));
        let mut done = running("a");
        done.finished = true;
        assert!(frees_on_pods(Some(&done), false));
        let mut paused = running("a");
        paused.suspended = true;
        assert!(frees_on_pods(Some(&paused), false), "suspended by a user");
        let mut fenced = paused.clone();
        fenced.admitted = false;
        assert!(frees_on_pods(Some(&fenced), true), "suspended by a fence");
        assert!(
            !frees_on_pods(Some(&fenced), false),
            "granted, not yet unsuspended"
        );
        assert!(!frees_on_pods(Some(&running("a")), false));
        assert!(!frees_on_pods(Some(&running("a")), true), "still runs");
    }

    #[test]
    fn running_jobs_without_a_slot_are_adopted() {
        let mut rogue = job("a", "t");
        rogue.suspended = false;
        let d = decide_with(&[rogue], &[]);
        assert_eq!(d.adopt, ids(&["a"]));
        assert!(d.admit.is_empty());
        assert_eq!(d.acquire(), ids(&["a"]));
    }

    #[test]
    fn admitted_running_jobs_are_left_alone() {
        assert_eq!(decide_with(&[running("a")], &["a"]), Decision::default());
    }

    #[test]
    fn held_slots_without_a_permit_are_asked_for_again() {
        // A restarted controller: the ledger says it holds a, b and c; it
        // has permits for none. a runs, b waits to be unsuspended, c is done.
        let mut done = running("c");
        done.finished = true;
        let held = set(&["a", "b", "c"]);
        let d = decide(&Inputs {
            jobs: &[running("a"), job("b", "t"), done],
            held_in_ledger: &held,
            permits: &BTreeSet::new(),
            lost_permits: &BTreeSet::new(),
            suspend_on_loss: true,
            wait_recorded: false,
            admit_new: true,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &BTreeSet::new(),
        });
        assert_eq!(d.reacquire, ids(&["a"]));
        assert_eq!(d.unsuspend, ids(&["b"]));
        assert_eq!(d.release, vec![("c".into(), ReleaseReason::Finished)]);
        assert_eq!(d.acquire(), ids(&["a", "b"]));
    }

    /// A lost permit for `uid` whose slot is still in the ledger.
    fn decide_lost(jobs: &[JobView], uid: &str, suspend_on_loss: bool) -> Decision {
        let held = set(&[uid]);
        decide(&Inputs {
            jobs,
            held_in_ledger: &held,
            permits: &held,
            lost_permits: &held,
            suspend_on_loss,
            wait_recorded: false,
            admit_new: true,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &BTreeSet::new(),
        })
    }

    #[test]
    fn a_running_job_whose_slot_is_lost_is_fenced_and_keeps_its_slot_until_its_pods_are_gone() {
        let d = decide_lost(&[running("a")], "a", true);
        assert_eq!(d.fence, ids(&["a"]));
        assert_eq!(d.lost, ids(&["a"]));
        assert!(d.release.is_empty(), "its pods still run");
        assert!(d.acquire().is_empty());
    }

    #[test]
    fn a_lost_slot_is_given_up_once_the_job_is_suspended_and_its_pods_are_gone() {
        let mut stopping = running("a");
        stopping.suspended = true;
        let d = decide_lost(&[stopping.clone()], "a", true);
        assert!(d.fence.is_empty(), "already suspended");
        assert!(d.release.is_empty(), "pods still terminating");
        stopping.active_pods = false;
        // Suspended and admitted without pods is also a user's suspension;
        // the reason the ledger scan finds comes first.
        let d = decide_lost(&[stopping.clone()], "a", true);
        assert_eq!(d.release, vec![("a".into(), ReleaseReason::Suspended)]);
        // Un-admitted by the fence's patch: only the loss explains it.
        stopping.admitted = false;
        let d = decide_lost(&[stopping], "a", true);
        assert_eq!(d.release, vec![("a".into(), ReleaseReason::LeaseLost)]);
        assert!(d.unsuspend.is_empty(), "a lost slot is never unsuspended");
    }

    #[test]
    fn a_lost_slot_already_evicted_from_the_ledger_is_given_up_once_pods_are_gone() {
        let mut stopped = job("a", "t");
        stopped.active_pods = false;
        let d = decide(&Inputs {
            jobs: &[stopped],
            held_in_ledger: &BTreeSet::new(),
            permits: &set(&["a"]),
            lost_permits: &set(&["a"]),
            suspend_on_loss: true,
            wait_recorded: false,
            admit_new: true,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &BTreeSet::new(),
        });
        assert_eq!(d.release, vec![("a".into(), ReleaseReason::LeaseLost)]);
        assert_eq!(d.admit, ids(&["a"]), "it waits for a slot again");
    }

    #[test]
    fn lost_slots_of_finished_or_deleted_jobs_are_not_fenced() {
        let mut done = running("a");
        done.finished = true;
        let d = decide_lost(&[done], "a", true);
        assert!(d.fence.is_empty() && d.lost.is_empty());
        assert_eq!(d.release, vec![("a".into(), ReleaseReason::Finished)]);
        let d = decide_lost(&[], "a", true);
        assert!(d.fence.is_empty());
        assert_eq!(d.release, vec![("a".into(), ReleaseReason::Deleted)]);
    }

    #[test]
    fn under_keep_a_lost_slot_is_not_fenced() {
        let d = decide_lost(&[running("a")], "a", false);
        assert!(d.fence.is_empty() && d.lost.is_empty());
        assert!(d.release.is_empty());
    }

    #[test]
    fn the_recorded_wait_is_withdrawn_when_nothing_waits() {
        let inputs = |jobs: &[JobView]| {
            decide(&Inputs {
                jobs,
                held_in_ledger: &BTreeSet::new(),
                permits: &BTreeSet::new(),
                lost_permits: &BTreeSet::new(),
                suspend_on_loss: true,
                wait_recorded: true,
                admit_new: true,
                limit: 100,
                max_grace_seconds: 30,
                live_pods: &BTreeSet::new(),
            })
        };
        assert!(inputs(&[]).withdraw_wait);
        assert!(!inputs(&[job("a", "t")]).withdraw_wait);
        assert!(!decide_with(&[], &[]).withdraw_wait, "nothing recorded");
    }

    #[test]
    fn a_job_whose_slot_was_lost_and_evicted_is_fenced_not_adopted_again() {
        let d = decide(&Inputs {
            jobs: &[running("a")],
            held_in_ledger: &BTreeSet::new(),
            permits: &set(&["a"]),
            lost_permits: &set(&["a"]),
            suspend_on_loss: true,
            wait_recorded: false,
            admit_new: true,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &BTreeSet::new(),
        });
        assert_eq!(d.fence, ids(&["a"]));
        assert!(d.adopt.is_empty(), "{d:?}");
        assert!(d.acquire().is_empty());
    }

    #[test]
    fn without_the_ledger_lost_and_unvouched_running_jobs_are_fenced() {
        let mut unadmitted = running("rogue");
        unadmitted.admitted = false;
        let mut paused = running("paused");
        paused.suspended = true;
        let mut done = running("done");
        done.finished = true;
        let jobs = [
            running("lost"),
            running("held"),
            running("restarted"),
            unadmitted,
            paused,
            done,
            job("waiting", "t"),
        ];
        let permits = set(&["lost", "held"]);
        let lost = set(&["lost"]);
        assert_eq!(
            fence_without_ledger(&jobs, &permits, &lost, true),
            ids(&["lost", "restarted", "rogue"])
        );
        assert!(fence_without_ledger(&jobs, &permits, &lost, false).is_empty());
    }

    #[test]
    fn jobs_whose_pods_may_stop_too_slowly_are_not_admitted() {
        let mut slow = job("slow", "0");
        slow.grace_seconds = 31;
        let mut slow_running = job("rogue", "1");
        slow_running.grace_seconds = 600;
        slow_running.suspended = false;
        let mut fits = job("fits", "2");
        fits.grace_seconds = 30;
        // Admitted before and still holding its slot: left alone.
        let mut held = running("held");
        held.grace_seconds = 600;
        let d = decide_with(&[slow, slow_running, fits, held], &["held"]);
        assert_eq!(d.too_slow_to_stop, ids(&["slow", "rogue"]));
        assert_eq!(d.held_too_slow, ids(&["held"]), "reported");
        assert_eq!(d.admit, ids(&["fits"]));
        assert!(d.adopt.is_empty());
        assert!(d.release.is_empty());
    }

    #[test]
    fn a_slot_is_kept_while_pods_of_its_gone_or_finished_job_may_run() {
        let mut failed = running("failed");
        failed.finished = true;
        let held = set(&["gone", "failed"]);
        let live = set(&["gone", "failed"]);
        let d = decide(&Inputs {
            jobs: &[failed.clone()],
            held_in_ledger: &held,
            permits: &held,
            lost_permits: &BTreeSet::new(),
            suspend_on_loss: true,
            wait_recorded: false,
            admit_new: true,
            limit: 100,
            max_grace_seconds: 30,
            live_pods: &live,
        });
        assert!(d.release.is_empty(), "{d:?}");
        assert!(d.acquire().is_empty(), "a kept slot is not asked for again");
        let d = decide_with(&[failed], &["gone", "failed"]);
        assert_eq!(d.release_ids(), ids(&["failed", "gone"]));
    }

    fn grants(pairs: &[(&str, u64)]) -> BTreeMap<String, u64> {
        pairs.iter().map(|(u, t)| (u.to_string(), *t)).collect()
    }

    #[test]
    fn granted_jobs_are_unsuspended_and_the_rest_wait() {
        let d = decide_with(&[job("held", "0"), job("a", "1"), job("b", "2")], &["held"]);
        let actions = on_grants(&d, &[], &grants(&[("held", 4), ("a", 7)]), false);
        assert_eq!(
            actions,
            vec![
                JobAction::Unsuspend {
                    uid: "held".into(),
                    token: 4
                },
                JobAction::Unsuspend {
                    uid: "a".into(),
                    token: 7
                },
                JobAction::Wait { uid: "b".into() },
            ]
        );
    }

    #[test]
    fn running_jobs_without_a_slot_are_adopted_kept_or_suspended() {
        let mut rogue = job("new", "t");
        rogue.suspended = false;
        let mut evicted = running("old");
        evicted.active_pods = true;
        let jobs = [rogue, evicted];
        let d = decide_with(&jobs, &[]);
        assert_eq!(d.adopt, ids(&["new", "old"]));
        assert_eq!(
            on_grants(&d, &jobs, &grants(&[("new", 9)]), false),
            vec![
                JobAction::Adopt {
                    uid: "new".into(),
                    token: 9
                },
                JobAction::SuspendNoSlot { uid: "old".into() },
            ]
        );
        assert_eq!(
            on_grants(&d, &jobs, &grants(&[]), true),
            vec![
                JobAction::SuspendNoSlot { uid: "new".into() },
                JobAction::KeepOverLimit { uid: "old".into() },
            ]
        );
    }

    #[test]
    fn a_job_suspended_without_a_slot_is_no_longer_admitted_and_resumed_waits_even_under_keep() {
        // Lost its slot while it ran (kept under Keep), then suspended by a
        // user: no longer admitted.
        let mut paused = running("paused");
        paused.suspended = true;
        paused.active_pods = false;
        let d = decide_with(std::slice::from_ref(&paused), &[]);
        assert_eq!(d.disown, ids(&["paused"]));
        // Still holding its slot: left to the release, which marks it.
        let d = decide_with(std::slice::from_ref(&paused), &["paused"]);
        assert_eq!(d.release, vec![("paused".into(), ReleaseReason::Suspended)]);
        assert!(d.disown.is_empty());

        // Resumed by a user with no slot free, under Keep: only a Job still
        // marked admitted lost its slot while running and may go on.
        let mut resumed = paused.clone();
        resumed.suspended = false;
        resumed.admitted = false;
        let jobs = [resumed, running("kept")];
        let d = decide_with(&jobs, &[]);
        assert!(d.disown.is_empty(), "{d:?}");
        assert_eq!(
            on_grants(&d, &jobs, &grants(&[]), true),
            vec![
                JobAction::SuspendNoSlot {
                    uid: "paused".into()
                },
                JobAction::KeepOverLimit { uid: "kept".into() },
            ]
        );
    }

    #[test]
    fn a_job_in_a_kueue_queue_is_neither_admitted_nor_suspended() {
        let mut waiting = job("queued", "t");
        waiting.in_kueue = true;
        let mut running_in_kueue = running("kueue-ran");
        running_in_kueue.admitted = false;
        running_in_kueue.in_kueue = true;
        let jobs = [waiting, running_in_kueue, job("plain", "u")];
        let d = decide_with(&jobs, &[]);
        assert_eq!(d.in_kueue, ids(&["queued", "kueue-ran"]));
        assert_eq!(d.admit, ids(&["plain"]));
        assert!(d.adopt.is_empty() && d.unslotted.is_empty(), "{d:?}");
        // Nor suspended when the ledger cannot be read: Kueue let it run.
        assert!(fence_without_ledger(&jobs, &BTreeSet::new(), &BTreeSet::new(), true).is_empty());
        assert_eq!(
            on_grants(&d, &jobs, &grants(&[]), false),
            vec![JobAction::Wait {
                uid: "plain".into()
            }]
        );
    }

    #[test]
    fn the_oldest_waiting_job_is_the_oldest_suspended_one_never_admitted() {
        let mut jobs = vec![
            view("running", "2026-01-01T00:00:00Z", false, true),
            view("done", "2026-01-01T00:00:01Z", true, false),
            view("late", "2026-01-01T00:00:09Z", true, false),
            view("early", "2026-01-01T00:00:05Z", true, false),
        ];
        jobs[1].finished = true;
        assert_eq!(oldest_waiting(&jobs), Some("2026-01-01T00:00:05Z"));
        jobs[3].in_kueue = true;
        assert_eq!(oldest_waiting(&jobs), Some("2026-01-01T00:00:09Z"));
        assert_eq!(oldest_waiting(&jobs[..1]), None);
    }

    fn view(name: &str, created: &str, suspended: bool, admitted: bool) -> JobView {
        JobView {
            uid: name.into(),
            name: name.into(),
            created: created.into(),
            priority: 0,
            suspended,
            admitted,
            finished: false,
            active_pods: admitted,
            grace_seconds: 30,
            slots: 1,
            in_kueue: false,
        }
    }
}
