//! What a deleted group does next, as a pure function. A group being
//! deleted keeps its finalizer while this cluster may hold slots for it, so
//! that its slots are given back rather than left to run out at the other
//! clusters while its Jobs run on outside any limit.

use std::time::Duration;

/// The next step for a group being deleted that still has our finalizer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Admitted Jobs still run (or their pods still stop): admit nothing,
    /// free slots as they end, look again.
    Drain,
    /// No slot held here any more: take this cluster's agent out of the
    /// ledger, then drop the finalizer.
    Leave,
    /// Drop the finalizer without the ledger, with this Warning.
    Abandon(String),
}

/// `held_here`: slots the ledger says this cluster holds for the group, or
/// `None` when the ledger could not be read in this pass. `waited`: since
/// the deletion. `abandon`: the group carries `jobgate.dev/abandon-slots`.
pub fn step(held_here: Option<u32>, waited: Duration, timeout: Duration, abandon: bool) -> Step {
    match held_here {
        _ if abandon => Step::Abandon(format!(
            "removed without giving back its slots (annotation jobgate.dev/abandon-slots{}); any still held run out after leaseSeconds at the other agents",
            held_here.map_or_else(String::new, |n| format!(", {n} held here"))
        )),
        Some(0) => Step::Leave,
        Some(_) => Step::Drain,
        None if waited >= timeout => Step::Abandon(format!(
            "the ledger could not be read for {} s since the group was deleted; removed without giving back its slots, which run out after leaseSeconds at the other agents",
            waited.as_secs()
        )),
        None => Step::Drain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(600);

    #[test]
    fn slots_are_given_back_before_the_finalizer_goes() {
        let early = Duration::from_secs(5);
        assert_eq!(step(Some(2), early, TIMEOUT, false), Step::Drain);
        assert_eq!(step(Some(0), early, TIMEOUT, false), Step::Leave);
        // Running Jobs are waited for however long they take.
        assert_eq!(step(Some(1), TIMEOUT * 10, TIMEOUT, false), Step::Drain);
    }

    #[test]
    fn an_unreachable_ledger_blocks_deletion_only_for_the_timeout() {
        assert_eq!(
            step(None, Duration::from_secs(30), TIMEOUT, false),
            Step::Drain
        );
        let Step::Abandon(why) = step(None, TIMEOUT, TIMEOUT, false) else {
            panic!("kept waiting")
        };
        assert!(why.contains("could not be read for 600 s"), "{why}");
    }

    #[test]
    fn the_annotation_abandons_at_once() {
        let Step::Abandon(why) = step(Some(3), Duration::ZERO, TIMEOUT, true) else {
            panic!("kept waiting")
        };
        assert!(why.contains("3 held here"), "{why}");
        assert!(matches!(
            step(None, Duration::ZERO, TIMEOUT, true),
            Step::Abandon(_)
        ));
    }
}
