//! Properties of the plan over generated passes: Jobs in every state,
//! slots held for some, permits (some lost) for some of those, pods left
//! for some.

use std::collections::{BTreeMap, BTreeSet};

use proptest::prelude::*;

use super::plan::*;
use crate::ledger::Ledger;
use crate::operator::admission::{self, Decision, WorkloadView};
use crate::operator::effects::{Effect, Told};

fn job(uid: &str) -> WorkloadView {
    WorkloadView::waiting(uid, &format!("2026-12-01T00:00:{uid:0>2}Z"))
}

/// A generated pass: Jobs in every state, slots held for some, permits
/// (some lost) for some of those, pods left for some.
#[derive(Debug, Clone)]
struct Generated {
    views: Vec<WorkloadView>,
    held: BTreeSet<String>,
    permits: BTreeSet<String>,
    lost: BTreeSet<String>,
    live_pods: BTreeSet<String>,
    suspend_on_loss: bool,
    admit_new: bool,
    granted_every: usize,
}

fn generated() -> impl Strategy<Value = Generated> {
    let view = (
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        any::<bool>(),
        0u32..3,
        prop_oneof![Just(30i64), Just(600)],
    );
    (
        proptest::collection::vec(view, 0..12),
        proptest::collection::vec(
            (any::<bool>(), any::<bool>(), any::<bool>(), any::<bool>()),
            14,
        ),
        any::<bool>(),
        any::<bool>(),
        1usize..4,
    )
        .prop_map(|(jobs, slots, suspend_on_loss, admit_new, granted_every)| {
            let mut g = Generated {
                views: Vec::new(),
                held: BTreeSet::new(),
                permits: BTreeSet::new(),
                lost: BTreeSet::new(),
                live_pods: BTreeSet::new(),
                suspend_on_loss,
                admit_new,
                granted_every,
            };
            for (i, (suspended, admitted, finished, active, slots, grace)) in
                jobs.into_iter().enumerate()
            {
                g.views.push(WorkloadView {
                    suspended,
                    admitted,
                    finished,
                    active_pods: active,
                    slots,
                    grace_seconds: grace,
                    ..job(&format!("{i:02}"))
                });
            }
            // Two more UIDs than Jobs: slots of Jobs that are gone.
            for (i, (held, permit, lost, pods)) in slots.into_iter().enumerate() {
                let uid = format!("{i:02}");
                if held {
                    g.held.insert(uid.clone());
                }
                if held && permit {
                    g.permits.insert(uid.clone());
                    if lost {
                        g.lost.insert(uid.clone());
                    }
                }
                if pods {
                    g.live_pods.insert(uid);
                }
            }
            g
        })
}

fn decide(g: &Generated) -> Decision {
    admission::decide(&admission::Inputs {
        jobs: &g.views,
        held_in_ledger: &g.held,
        permits: &g.permits,
        lost_permits: &g.lost,
        suspend_on_loss: g.suspend_on_loss,
        wait_recorded: false,
        max_grace_seconds: 60,
        live_pods: &g.live_pods,
        admit_new: g.admit_new,
        limit: 2,
    })
}

proptest! {
    /// A workload whose permit is lost is never unsuspended (nor adopted
    /// into its slot), whatever the write granted.
    #[test]
    fn never_unsuspend_a_workload_whose_permit_is_lost(g in generated()) {
        let decision = decide(&g);
        // Grant every n-th thing asked for, and anything held, as the
        // ledger would hand back a held slot.
        let granted: BTreeMap<String, u64> = decision
            .acquire()
            .into_iter()
            .enumerate()
            .filter(|(i, uid)| i % g.granted_every == 0 || g.held.contains(uid))
            .map(|(i, uid)| (uid, i as u64 + 1))
            .collect();
        let empty = BTreeMap::new();
        let ledger = Ledger::new(2);
        let planned = effects(
            &Inputs {
            decision: &decision,
            views: &g.views,
            granted: &granted,
            lost: &g.lost,
            keep_on_loss: !g.suspend_on_loss,
            group: "etl",
            deleting: false,
            max_grace_seconds: 60,
            limit: 2,
            ledger: Some((&ledger, "east/team/etl")),
            slots_asked: &empty,
            kueue_queues: &empty,
        },
            &Told::default(),
        );
        for effect in &planned.effects {
            if let Effect::Unsuspend { uid, .. } | Effect::Adopt { uid, .. } = effect {
                prop_assert!(!g.lost.contains(uid), "{effect:?} for a lost permit; {decision:?}");
            }
        }
        // And the decision itself never asks to unsuspend one.
        for uid in decision.unsuspend.iter().chain(&decision.admit) {
            if g.suspend_on_loss {
                prop_assert!(!g.lost.contains(uid), "{uid} asked for; {decision:?}");
            }
        }
    }

    /// A slot is given up only once its workload has stopped: a Job that
    /// exists and has not finished is released only when it is seen
    /// suspended with no pod left; and a Job being fenced in a pass is not
    /// released in it (its suspension comes first, its release in a later
    /// pass that sees it suspended).
    #[test]
    fn a_suspend_precedes_any_release_of_a_workloads_slot(g in generated()) {
        let decision = decide(&g);
        for (uid, reason) in &decision.release {
            prop_assert!(!decision.fence.contains(uid), "{uid} fenced and released at once");
            if let Some(view) = g.views.iter().find(|j| &j.uid == uid) {
                if !view.finished {
                    prop_assert!(view.suspended && !view.active_pods, "{reason:?} of a running {view:?}");
                }
                prop_assert!(!g.live_pods.contains(uid), "{reason:?} while pods may run: {view:?}");
            } else {
                prop_assert!(!g.live_pods.contains(uid), "a gone Job's slot freed while its pods may run");
            }
        }
    }
}
