use super::tests::{decide_with, ids, job, running};
use super::*;

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

fn view(name: &str, created: &str, suspended: bool, admitted: bool) -> WorkloadView {
    WorkloadView {
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
