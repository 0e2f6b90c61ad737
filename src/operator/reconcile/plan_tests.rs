//! The rules of the plan step, and properties of the effects over
//! generated passes.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use kube::runtime::events::EventType;

use super::plan::*;
use crate::ledger::Ledger;
use crate::operator::admission::{Decision, ReleaseReason, WorkloadView};
use crate::operator::effects::{Effect, Once, Told, tell_once};
use crate::operator::error::Error;

fn job(uid: &str) -> WorkloadView {
    WorkloadView::waiting(uid, &format!("2026-12-01T00:00:{uid:0>2}Z"))
}

fn running(uid: &str) -> WorkloadView {
    WorkloadView {
        suspended: false,
        admitted: true,
        active_pods: true,
        ..job(uid)
    }
}

fn ids(uids: &[&str]) -> Vec<String> {
    uids.iter().map(|s| s.to_string()).collect()
}

struct Fixture {
    decision: Decision,
    views: Vec<WorkloadView>,
    granted: BTreeMap<String, u64>,
    lost: BTreeSet<String>,
    ledger: Ledger,
    deleting: bool,
    keep_on_loss: bool,
}

impl Fixture {
    fn new(views: Vec<WorkloadView>, decision: Decision) -> Self {
        Fixture {
            decision,
            views,
            granted: BTreeMap::new(),
            lost: BTreeSet::new(),
            ledger: Ledger::new(2),
            deleting: false,
            keep_on_loss: false,
        }
    }

    fn effects(&self) -> Vec<Effect> {
        self.planned(&Told::default()).effects
    }

    fn planned(&self, told: &Told) -> Planned {
        let empty = BTreeMap::new();
        effects(
            &Inputs {
                decision: &self.decision,
                views: &self.views,
                granted: &self.granted,
                lost: &self.lost,
                keep_on_loss: self.keep_on_loss,
                group: "etl",
                deleting: self.deleting,
                max_grace_seconds: 60,
                limit: 2,
                ledger: Some((&self.ledger, "east/team/etl")),
                slots_asked: &empty,
                kueue_queues: &empty,
            },
            told,
        )
    }
}

fn reasons(effects: &[Effect]) -> Vec<String> {
    effects
        .iter()
        .map(|e| match e {
            Effect::Released { uid, .. } => format!("released {uid}"),
            Effect::Disown { uid } => format!("disown {uid}"),
            Effect::Suspend { uid, reason, .. } => format!("suspend {uid} {reason}"),
            Effect::Unsuspend { uid, token } => format!("unsuspend {uid} {token}"),
            Effect::Adopt { uid, token } => format!("adopt {uid} {token}"),
            Effect::Tell { uid, reason, .. } => format!("tell {uid} {reason}"),
        })
        .collect()
}

#[test]
fn releases_come_first_then_refusals_then_admissions_then_the_rest() {
    let too_slow = WorkloadView {
        grace_seconds: 600,
        ..running("s")
    };
    let views = vec![job("a"), job("b"), job("c"), too_slow, running("r")];
    let decision = Decision {
        release: vec![("gone".into(), ReleaseReason::Deleted)],
        too_slow_to_stop: ids(&["s"]),
        admit: ids(&["a", "b", "c"]),
        adopt: ids(&["r"]),
        ..Default::default()
    };
    let mut f = Fixture::new(views, decision);
    f.granted = BTreeMap::from([("a".into(), 7), ("r".into(), 8)]);
    assert_eq!(
        reasons(&f.effects()),
        vec![
            "released gone",
            "suspend s GracePeriodTooLong",
            "unsuspend a 7",
            "tell b Waiting",
            "tell c Waiting",
            "adopt r 8",
        ]
    );
}

#[test]
fn a_waiting_job_is_told_its_place_after_the_grants() {
    let mut f = Fixture::new(
        vec![job("a"), job("b"), job("c")],
        Decision {
            admit: ids(&["a", "b", "c"]),
            ..Default::default()
        },
    );
    f.granted = BTreeMap::from([("a".into(), 1)]);
    let notes: Vec<String> = f
        .effects()
        .into_iter()
        .filter_map(|e| match e {
            Effect::Tell { note, .. } => Some(note),
            _ => None,
        })
        .collect();
    assert_eq!(notes.len(), 2);
    assert!(notes[0].contains("position 1 of 2"), "{}", notes[0]);
    assert!(notes[1].contains("position 2 of 2"), "{}", notes[1]);
}

#[test]
fn a_job_that_may_not_run_is_suspended_if_it_runs_and_told_once_if_it_waits() {
    let bad_running = WorkloadView {
        slots: 0,
        ..running("x")
    };
    let bad_waiting = WorkloadView {
        slots: 9,
        ..job("y")
    };
    let slow_waiting = WorkloadView {
        grace_seconds: 600,
        ..job("z")
    };
    let f = Fixture::new(
        vec![bad_running, bad_waiting, slow_waiting],
        Decision {
            bad_slots: ids(&["x", "y"]),
            too_slow_to_stop: ids(&["z"]),
            ..Default::default()
        },
    );
    let planned = f.effects();
    assert_eq!(
        reasons(&planned),
        vec![
            "tell z GracePeriodTooLong",
            "suspend x InvalidSlots",
            "tell y InvalidSlots",
        ]
    );
    let Effect::Tell { note, .. } = &planned[2] else {
        unreachable!()
    };
    assert!(note.contains("more than the group's limit 2"), "{note}");
    let mut told = Told::default();
    assert_eq!(tell_once(&mut told, planned.clone()).len(), 3);
    // The next pass says the same: only the suspension is carried out
    // again (its patch is guarded by what the Job is by then).
    assert_eq!(
        reasons(&tell_once(&mut told, planned)),
        vec!["suspend x InvalidSlots"]
    );
}

#[test]
fn held_back_jobs_are_told_why_once_until_the_group_admits_again() {
    let mut f = Fixture::new(
        vec![job("a")],
        Decision {
            held_back: ids(&["a"]),
            ..Default::default()
        },
    );
    let mut told = Told::default();
    let first = tell_once(&mut told, f.effects());
    assert!(
        matches!(&first[..], [Effect::Tell { reason: "GroupSuspended", note, .. }] if note.contains("group etl is suspended"))
    );
    assert!(tell_once(&mut told, f.effects()).is_empty());
    // Being deleted is another reason: told again.
    f.deleting = true;
    assert!(matches!(
        &tell_once(&mut told, f.effects())[..],
        [Effect::Tell {
            reason: "GroupDeleting",
            ..
        }]
    ));
    // Admitting again: held back later, told again.
    told.forget(|_| true, true);
    assert_eq!(tell_once(&mut told, f.effects()).len(), 1);
}

#[test]
fn what_was_told_is_forgotten_when_the_job_goes_or_is_admitted() {
    let mut told = Told::default();
    let tell = |uid: &str, once: Once| Effect::Tell {
        uid: uid.into(),
        type_: EventType::Normal,
        reason: "Waiting",
        action: "Admit",
        note: String::new(),
        once: Some(once),
    };
    let planned = vec![
        tell("a", Once::Waiting("a".into())),
        tell("b", Once::Refused("InvalidSlots/b".into())),
        tell("c", Once::Held("GroupSuspended/c".into())),
    ];
    assert_eq!(tell_once(&mut told, planned.clone()).len(), 3);
    assert!(tell_once(&mut told, planned.clone()).is_empty());
    told.admitted("a");
    told.forget(|uid| uid != "b", false);
    assert_eq!(
        reasons(&tell_once(&mut told, planned)),
        vec!["tell a Waiting", "tell b Waiting"]
    );
    // Tells without a key are never filtered.
    let always = Effect::Tell {
        uid: "d".into(),
        type_: EventType::Warning,
        reason: "OverLimit",
        action: "Admit",
        note: String::new(),
        once: None,
    };
    assert_eq!(tell_once(&mut told, vec![always.clone(), always]).len(), 2);
}

#[test]
fn a_granted_job_whose_permit_is_lost_since_is_neither_unsuspended_nor_adopted() {
    let mut f = Fixture::new(
        vec![job("a"), running("r")],
        Decision {
            admit: ids(&["a"]),
            adopt: ids(&["r"]),
            ..Default::default()
        },
    );
    f.granted = BTreeMap::from([("a".into(), 1), ("r".into(), 2)]);
    f.lost = BTreeSet::from(["a".to_string(), "r".to_string()]);
    assert!(f.effects().is_empty(), "{:?}", f.effects());
}

#[test]
fn a_running_job_without_a_slot_is_suspended_or_kept_over_the_limit() {
    let created_running = WorkloadView {
        admitted: false,
        ..running("n")
    };
    let mut f = Fixture::new(
        vec![created_running, running("k")],
        Decision {
            adopt: ids(&["n", "k"]),
            ..Default::default()
        },
    );
    assert_eq!(
        reasons(&f.effects()),
        vec!["suspend n SuspendedNoSlot", "suspend k SuspendedNoSlot"]
    );
    f.keep_on_loss = true;
    // Only the one that lost its slot while it ran is kept.
    assert_eq!(
        reasons(&f.effects()),
        vec!["suspend n SuspendedNoSlot", "tell k OverLimit"]
    );
}

#[test]
fn only_waiting_jobs_and_jobs_suspended_for_want_of_a_slot_count_as_waiting() {
    let f = Fixture::new(
        vec![job("a"), running("n"), job("h")],
        Decision {
            admit: ids(&["a"]),
            adopt: ids(&["n"]),
            held_back: ids(&["h"]),
            ..Default::default()
        },
    );
    assert_eq!(f.planned(&Told::default()).waiting, 3);
    // Told already or not, they wait.
    let mut told = Told::default();
    tell_once(&mut told, f.effects());
    let again = f.planned(&told);
    assert_eq!(again.waiting, 3);
    assert_eq!(reasons(&again.effects), vec!["suspend n SuspendedNoSlot"]);
}

#[test]
fn a_write_asks_for_the_waiting_jobs_up_to_one_past_the_limit_and_counts_the_rest() {
    let decision = Decision {
        reacquire: ids(&["r"]),
        adopt: ids(&["n"]),
        admit: ids(&["a", "b", "c", "d", "e"]),
        ..Default::default()
    };
    let slots = |uid: &str| match uid {
        "b" => 2,
        "e" => 9,
        _ => 1,
    };
    let (asked, behind) = ask(&decision, slots, 2);
    let names: Vec<&str> = asked.iter().map(|(u, _)| u.as_str()).collect();
    // a (1) and b (2) reach 3, past the limit: c and d wait behind, and e
    // (more than the limit) is not counted.
    assert_eq!(names, vec!["r", "n", "a", "b"]);
    assert_eq!(asked[3], ("b".to_string(), 2));
    assert_eq!(behind, 2);
    // Few waiting: every one is asked for.
    let (asked, behind) = ask(&decision, |_| 1, 10);
    assert_eq!((asked.len(), behind), (7, 0));
}

#[test]
fn only_releases_other_than_finished_and_lost_slots_need_a_fresh_list() {
    let release = |why| Decision {
        release: vec![("a".into(), why)],
        ..Default::default()
    };
    assert!(!needs_fresh_list(&Decision::default()));
    assert!(!needs_fresh_list(&release(ReleaseReason::Finished)));
    assert!(needs_fresh_list(&release(ReleaseReason::Deleted)));
    assert!(needs_fresh_list(&release(ReleaseReason::Suspended)));
    assert!(needs_fresh_list(&release(ReleaseReason::LeaseLost)));
    let lost = Decision {
        lost: ids(&["a"]),
        ..Default::default()
    };
    assert!(needs_fresh_list(&lost));
}

#[test]
fn a_first_pass_waits_a_third_of_the_fence_period_for_the_ledger() {
    let fence_after = Duration::from_secs(30);
    assert_eq!(
        startup_fence_wait(fence_after, false, true),
        Some(Duration::from_secs(10))
    );
    assert_eq!(startup_fence_wait(fence_after, true, true), None);
    assert_eq!(startup_fence_wait(fence_after, false, false), None);
}

#[test]
fn the_permit_watcher_suspends_only_for_a_true_loss_under_suspend() {
    assert!(fence_on_loss(true, true, true, true));
    // Released, or the client stopped or was replaced.
    assert!(!fence_on_loss(false, true, true, true));
    assert!(!fence_on_loss(true, false, true, true));
    // onLeaseLoss: Keep, or fencing waits for the ledger.
    assert!(!fence_on_loss(true, true, false, true));
    assert!(!fence_on_loss(true, true, true, false));
}

#[test]
fn errors_become_the_condition_a_user_can_act_on() {
    let e = Error::CredentialsMissing {
        name: "s3".into(),
        namespace: "team".into(),
    };
    assert_eq!(problem(&e).reason, "CredentialsUnavailable");
    let e = Error::LedgerNotAllowed("not under jobgate/team/".into());
    let p = problem(&e);
    assert_eq!(
        (p.reason, p.message.as_str()),
        ("LedgerNotAllowed", "not under jobgate/team/")
    );
    let e = Error::MissingField("metadata.namespace");
    assert_eq!(problem(&e).reason, "ReconcileFailed");
}

#[test]
fn a_deleted_group_knows_what_it_holds_unless_the_ledger_is_unusable() {
    use crate::operator::deletion::Held;
    assert_eq!(held_for_deletion(Ok(3), true), Held::Known(3));
    let refused = Error::LedgerNotAllowed("no".into());
    // Refused before any client was built here: nothing was admitted.
    assert_eq!(held_for_deletion(Err(&refused), false), Held::Known(0));
    assert_eq!(held_for_deletion(Err(&refused), true), Held::LedgerUnusable);
    let api = Error::MissingField("metadata.name");
    assert_eq!(held_for_deletion(Err(&api), true), Held::Unknown);
}

#[test]
fn a_group_is_looked_at_soon_while_jobs_wait_and_rarely_when_idle() {
    let base = Requeue {
        waiting_here: 0,
        admit_new: true,
        deleting: false,
        poll_waiting: Duration::from_secs(2),
        poll_idle: Duration::from_secs(60),
        deadline_every: None,
        status_due: None,
    };
    assert_eq!(requeue_after(&base), Duration::from_secs(60));
    let waiting = Requeue {
        waiting_here: 3,
        ..base
    };
    assert_eq!(requeue_after(&waiting), Duration::from_secs(2));
    // A suspended group's waiting Jobs need no polling.
    let suspended = Requeue {
        admit_new: false,
        ..waiting
    };
    assert_eq!(requeue_after(&suspended), Duration::from_secs(60));
    let deleting = Requeue {
        deleting: true,
        ..base
    };
    assert_eq!(requeue_after(&deleting), Duration::from_secs(2));
    let deadlines = Requeue {
        deadline_every: Some(Duration::from_secs(5)),
        status_due: Some(Duration::from_millis(300)),
        ..base
    };
    assert_eq!(requeue_after(&deadlines), Duration::from_millis(300));
}

#[test]
fn a_failed_pass_of_a_fail_jobs_group_is_retried_within_a_quarter_of_its_fence_period() {
    let fence = Some(Duration::from_secs(12));
    assert_eq!(retry_after(false, fence), Duration::from_secs(5));
    assert_eq!(retry_after(true, fence), Duration::from_secs(3));
    assert_eq!(retry_after(true, None), Duration::from_secs(5));
    assert_eq!(
        retry_after(true, Some(Duration::from_secs(60))),
        Duration::from_secs(5)
    );
}
