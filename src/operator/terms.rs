//! The leadership loop's decisions, as pure functions: what ends a term of
//! admitting, and what the controller does next. `controller::run` carries
//! them out.

/// What ended a term's wait.
#[derive(Debug)]
pub enum TermEnd<E> {
    /// SIGTERM or SIGINT.
    Stop,
    /// Leadership ran out.
    Lost,
    /// The term's Controller task itself: `Ok` when it returned, `Err`
    /// when it failed (a panic).
    Ended(Result<(), E>),
}

/// What the controller does once a term's wait ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AfterTerm {
    /// A signal: let the passes in flight finish (unless leadership runs
    /// out meanwhile), then stop.
    Drain,
    /// Leadership lost: stop every pass now, mid-flight (each step is
    /// idempotent, and another replica may already admit for this
    /// cluster), then wait to lead again.
    Reelect,
    /// The term ended because the process is stopping: stop.
    Stop,
    /// The Controller task ended or failed on its own: nothing would admit
    /// or fence any more while this replica kept the Lease, so exit, and a
    /// restart (or the standby) takes over.
    Exit,
}

/// `stopping`: a signal has been seen. A signal ends the term too (graceful
/// shutdown), and the wait may see the term's end before the signal: that
/// is a stop like any other.
pub fn after_term<E>(end: &TermEnd<E>, stopping: bool) -> AfterTerm {
    match end {
        TermEnd::Stop => AfterTerm::Drain,
        TermEnd::Lost => AfterTerm::Reelect,
        TermEnd::Ended(Ok(())) if stopping => AfterTerm::Stop,
        TermEnd::Ended(_) => AfterTerm::Exit,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_term_ends_in_a_drain_a_reelection_a_stop_or_an_exit() {
        let ok: TermEnd<()> = TermEnd::Ended(Ok(()));
        let failed: TermEnd<()> = TermEnd::Ended(Err(()));
        assert_eq!(after_term(&TermEnd::<()>::Stop, false), AfterTerm::Drain);
        assert_eq!(after_term(&TermEnd::<()>::Stop, true), AfterTerm::Drain);
        assert_eq!(after_term(&TermEnd::<()>::Lost, false), AfterTerm::Reelect);
        // The term ended because of the signal the wait had not seen yet.
        assert_eq!(after_term(&ok, true), AfterTerm::Stop);
        // On its own: nothing would fence while the Lease is kept.
        assert_eq!(after_term(&ok, false), AfterTerm::Exit);
        assert_eq!(after_term(&failed, true), AfterTerm::Exit);
        assert_eq!(after_term(&failed, false), AfterTerm::Exit);
    }
}
