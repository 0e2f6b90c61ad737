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

/// What the pass learnt of the slots this cluster holds for the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    /// The ledger says this many.
    Known(u32),
    /// The ledger could not be read or written (store, credentials).
    LedgerUnusable,
    /// The pass failed elsewhere (an API call): the ledger is fine, so
    /// the deletion waits for the next pass without a deadline.
    Unknown,
}

/// `waited`: since the deletion. `abandon`: the group carries
/// `jobgate.dev/abandon-slots`.
pub fn step(held: Held, waited: Duration, timeout: Duration, abandon: bool) -> Step {
    match held {
        _ if abandon => Step::Abandon(format!(
            "removed without giving back its slots (annotation jobgate.dev/abandon-slots{}); any still held run out after leaseSeconds at the other agents",
            match held {
                Held::Known(n) => format!(", {n} held here"),
                _ => String::new(),
            }
        )),
        Held::Known(0) => Step::Leave,
        Held::Known(_) | Held::Unknown => Step::Drain,
        Held::LedgerUnusable if waited >= timeout => Step::Abandon(format!(
            "the ledger could not be used for {} s since the group was deleted; removed without giving back its slots, which run out after leaseSeconds at the other agents",
            waited.as_secs()
        )),
        Held::LedgerUnusable => Step::Drain,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TIMEOUT: Duration = Duration::from_secs(600);

    #[test]
    fn slots_are_given_back_before_the_finalizer_goes() {
        let early = Duration::from_secs(5);
        assert_eq!(step(Held::Known(2), early, TIMEOUT, false), Step::Drain);
        assert_eq!(step(Held::Known(0), early, TIMEOUT, false), Step::Leave);
        // Running Jobs are waited for however long they take, and so is an
        // API server that fails a pass while the ledger is fine.
        assert_eq!(
            step(Held::Known(1), TIMEOUT * 10, TIMEOUT, false),
            Step::Drain
        );
        assert_eq!(
            step(Held::Unknown, TIMEOUT * 10, TIMEOUT, false),
            Step::Drain
        );
    }

    #[test]
    fn an_unusable_ledger_blocks_deletion_only_for_the_timeout() {
        let unusable = Held::LedgerUnusable;
        let early = Duration::from_secs(30);
        assert_eq!(step(unusable, early, TIMEOUT, false), Step::Drain);
        let Step::Abandon(why) = step(unusable, TIMEOUT, TIMEOUT, false) else {
            panic!("kept waiting")
        };
        assert!(why.contains("could not be used for 600 s"), "{why}");
    }

    #[test]
    fn the_annotation_abandons_at_once() {
        let Step::Abandon(why) = step(Held::Known(3), Duration::ZERO, TIMEOUT, true) else {
            panic!("kept waiting")
        };
        assert!(why.contains("3 held here"), "{why}");
        let unknown = step(Held::Unknown, Duration::ZERO, TIMEOUT, true);
        assert!(matches!(unknown, Step::Abandon(_)));
    }
}
