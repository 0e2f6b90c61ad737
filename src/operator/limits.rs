//! Runtime limit changes: when this cluster's `spec.limit` goes into the
//! shared ledger. Pure, so that each case is unit tested.
//!
//! The rule: a new value in `spec.limit` is a deliberate change and is
//! written to the ledger (compare-and-swap, recorded with this cluster's
//! agent id and the group's generation). A value this cluster already
//! applied, or found when it joined, is not: a cluster whose spec is older
//! than a change made elsewhere (another cluster, `jobgate limit`) leaves
//! the ledger alone and reports `LimitAgreed=False`. So the latest
//! deliberate change wins and clusters never flip the limit back and forth.

use crate::decide::LimitChange;
use crate::ledger::{Ledger, LimitSet};

/// What to do about the limit in one pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitPlan {
    /// The change to write first, if any.
    pub change: Option<LimitChange>,
    /// `status.specLimitApplied` once the change (if any) is written.
    pub applied: u32,
}

/// `applied`: the spec limit this cluster last applied or accepted (kept
/// by the process, and in `status.specLimitApplied` across restarts);
/// `None` for a group never reconciled.
/// `ledger`: the ledger as read, `None` while it does not exist (it is then
/// created with `spec_limit`).
pub fn plan(
    spec_limit: u32,
    generation: Option<i64>,
    applied: Option<u32>,
    ledger: Option<&Ledger>,
    agent: &str,
) -> LimitPlan {
    let keep = LimitPlan {
        change: None,
        applied: spec_limit,
    };
    let Some(ledger) = ledger else {
        return keep;
    };
    let Some(applied) = applied else {
        // Joining a ledger is not a change of its limit.
        return keep;
    };
    if applied == spec_limit || ledger.limit == spec_limit {
        return keep;
    }
    LimitPlan {
        change: Some(LimitChange {
            limit: spec_limit,
            by: agent.to_string(),
            generation,
        }),
        applied: spec_limit,
    }
}

/// Who set the ledger's limit, for the `LimitAgreed` message.
pub fn describe_source(set: Option<&LimitSet>) -> String {
    match set {
        None => "by the cluster that created the ledger".to_string(),
        Some(s) => {
            let generation = s
                .generation
                .map_or_else(String::new, |g| format!(" from generation {g}"));
            format!("by {}{generation} at {} (was {})", s.by, s.at, s.previous)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide;

    const ME: &str = "east/batch/etl";

    fn ledger(limit: u32, set: Option<(&str, Option<i64>)>) -> Ledger {
        let mut l = Ledger::new(limit);
        l.limit_set = set.map(|(by, generation)| LimitSet {
            by: by.into(),
            generation,
            previous: 1,
            at: "t".into(),
        });
        l
    }

    #[test]
    fn a_new_ledger_and_a_first_look_change_nothing() {
        assert_eq!(plan(3, Some(1), None, None, ME).change, None);
        let p = plan(3, Some(1), None, Some(&ledger(2, None)), ME);
        assert_eq!(
            p,
            LimitPlan {
                change: None,
                applied: 3
            },
            "joining keeps the ledger's limit"
        );
    }

    #[test]
    fn a_new_spec_value_is_written_with_its_source() {
        let p = plan(4, Some(2), Some(2), Some(&ledger(2, None)), ME);
        assert_eq!(
            p.change,
            Some(LimitChange {
                limit: 4,
                by: ME.into(),
                generation: Some(2)
            })
        );
        assert_eq!(p.applied, 4);
    }

    #[test]
    fn a_stale_spec_does_not_set_back_a_change_made_elsewhere() {
        // West set 5; east's spec still says 2, which east applied before.
        let l = ledger(5, Some(("west/batch/etl", Some(7))));
        assert_eq!(plan(2, Some(1), Some(2), Some(&l), ME).change, None);
        // Nor does `jobgate limit`'s change get undone.
        let l = ledger(6, Some(("jobgate-limit@host", None)));
        assert_eq!(plan(2, Some(1), Some(2), Some(&l), ME).change, None);
    }

    #[test]
    fn a_value_the_ledger_already_has_is_not_written() {
        assert_eq!(
            plan(4, Some(3), Some(2), Some(&ledger(4, None)), ME).change,
            None
        );
    }

    #[test]
    fn the_latest_deliberate_change_wins_and_nobody_flips_it_back() {
        // Two clusters on one ledger; each pass applies its plan.
        let mut l = ledger(2, None);
        let (mut east, mut west) = (Some(2), Some(2));
        let pass =
            |spec: u32, generation: i64, applied: &mut Option<u32>, who: &str, l: &mut Ledger| {
                let p = plan(spec, Some(generation), *applied, Some(l), who);
                if let Some(c) = &p.change {
                    decide::set_limit(l, c, "t");
                }
                *applied = Some(p.applied);
            };
        pass(4, 2, &mut east, "east", &mut l);
        assert_eq!(l.limit, 4);
        for _ in 0..3 {
            pass(2, 1, &mut west, "west", &mut l);
            pass(4, 2, &mut east, "east", &mut l);
        }
        assert_eq!(l.limit, 4, "west's older spec never set it back");
        pass(7, 2, &mut west, "west", &mut l);
        pass(4, 2, &mut east, "east", &mut l);
        assert_eq!(l.limit, 7, "west's later change wins");
    }

    #[test]
    fn the_source_is_described_for_people() {
        assert_eq!(
            describe_source(None),
            "by the cluster that created the ledger"
        );
        let l = ledger(5, Some(("west/batch/etl", Some(7))));
        assert_eq!(
            describe_source(l.limit_set.as_ref()),
            "by west/batch/etl from generation 7 at t (was 1)"
        );
    }
}
