use super::*;

pub(super) fn job(uid: &str, created: &str) -> WorkloadView {
    WorkloadView::waiting(uid, created)
}

pub(super) fn running(uid: &str) -> WorkloadView {
    WorkloadView {
        suspended: false,
        admitted: true,
        active_pods: true,
        ..job(uid, "t")
    }
}

pub(super) fn set(uids: &[&str]) -> BTreeSet<String> {
    uids.iter().map(|s| s.to_string()).collect()
}

pub(super) fn ids(uids: &[&str]) -> Vec<String> {
    uids.iter().map(|s| s.to_string()).collect()
}

/// A pass where this process holds a permit for every held slot and
/// none is lost, under `onLeaseLoss: Suspend`.
pub(super) fn decide_with(jobs: &[WorkloadView], held: &[&str]) -> Decision {
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
fn decide_with_pods(jobs: &[WorkloadView], uid: &str, lost: bool) -> Decision {
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
fn decide_lost(jobs: &[WorkloadView], uid: &str, suspend_on_loss: bool) -> Decision {
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
    let inputs = |jobs: &[WorkloadView]| {
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
