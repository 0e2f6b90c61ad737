//! Lease expiry without trusting anyone's clock. An agent is expired only
//! after *this* process has watched its renewal counter stand still for the
//! agent's whole lease, measured on this process's monotonic clock. Wall-clock
//! times in the ledger are never compared.

use std::collections::HashMap;
use std::time::Duration;

use tokio::time::Instant;

use crate::ledger::Ledger;

#[derive(Debug, Default, Clone)]
pub struct Observations {
    seen: HashMap<String, Seen>,
}

#[derive(Debug, Clone, Copy)]
struct Seen {
    renewals: u64,
    since: Instant,
}

impl Observations {
    /// Records what a read at `now` showed. Call with the instant the read
    /// *returned*: a later instant only makes expiry more conservative.
    pub fn observe(&mut self, ledger: &Ledger, now: Instant) {
        self.seen
            .retain(|agent, _| ledger.agents.contains_key(agent));
        for (agent, entry) in &ledger.agents {
            match self.seen.get_mut(agent) {
                Some(s) if s.renewals == entry.renewals => {}
                Some(s) => {
                    s.renewals = entry.renewals;
                    s.since = now;
                }
                None => {
                    self.seen.insert(
                        agent.clone(),
                        Seen {
                            renewals: entry.renewals,
                            since: now,
                        },
                    );
                }
            }
        }
    }

    /// Agents (other than `me`) whose counter has stood still for at least
    /// their own declared lease.
    pub fn expired(&self, ledger: &Ledger, me: &str, now: Instant) -> Vec<String> {
        ledger
            .agents
            .iter()
            .filter(|(agent, _)| agent.as_str() != me)
            .filter_map(|(agent, entry)| {
                let seen = self.seen.get(agent)?;
                let lease = Duration::from_millis(entry.lease_ms);
                (seen.renewals == entry.renewals && now.duration_since(seen.since) >= lease)
                    .then(|| agent.clone())
            })
            .collect()
    }

    /// Whether `agent`'s counter has stood still for at least its declared
    /// lease (our own id included: another writer may hold it).
    pub fn stood_still(&self, ledger: &Ledger, agent: &str, now: Instant) -> bool {
        let (Some(entry), Some(seen)) = (ledger.agents.get(agent), self.seen.get(agent)) else {
            return false;
        };
        seen.renewals == entry.renewals
            && now.duration_since(seen.since) >= Duration::from_millis(entry.lease_ms)
    }

    /// How long until the earliest agent could expire, for scheduling a re-check.
    pub fn next_expiry(&self, ledger: &Ledger, me: &str, now: Instant) -> Option<Duration> {
        ledger
            .agents
            .iter()
            .filter(|(agent, _)| agent.as_str() != me)
            .filter_map(|(agent, entry)| {
                let seen = self.seen.get(agent)?;
                let deadline = seen.since + Duration::from_millis(entry.lease_ms);
                Some(deadline.saturating_duration_since(now))
            })
            .min()
    }
}

/// When a holder must stop working if renewals keep failing: well before any
/// observer could expire it. Observers start their clock only after they read
/// a renewal that we sent earlier, so measuring from the *send* time of our
/// last successful renewal leaves the whole lease as margin for the remaining
/// fraction, which covers clock-rate drift and the time to stop a child.
pub fn self_fence_after(lease: Duration) -> Duration {
    lease.mul_f64(0.6)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Batch, apply};

    fn ledger_with(agent: &str, renewals: u64, lease_ms: u64) -> Ledger {
        let mut b = Batch {
            agent: agent.into(),
            lease: Duration::from_millis(lease_ms),
            acquires: vec![format!("{agent}-h")],
            ..Default::default()
        };
        let mut l = apply(&Ledger::new(5), &b)
            .next
            .unwrap_or_else(|| Ledger::new(5));
        b.acquires.clear();
        b.renew = true;
        while l.agents[agent].renewals < renewals {
            l = apply(&l, &b).next.unwrap_or(l);
        }
        l
    }

    #[test]
    fn expires_only_after_a_full_lease_of_silence_on_our_clock() {
        let t0 = Instant::now();
        let l = ledger_with("a", 1, 1000);
        let mut obs = Observations::default();
        obs.observe(&l, t0);
        assert!(
            obs.expired(&l, "me", t0 + Duration::from_millis(999))
                .is_empty()
        );
        assert_eq!(
            obs.expired(&l, "me", t0 + Duration::from_millis(1000)),
            vec!["a".to_string()]
        );
    }

    #[test]
    fn a_renewal_restarts_the_clock() {
        let t0 = Instant::now();
        let mut obs = Observations::default();
        obs.observe(&ledger_with("a", 1, 1000), t0);
        let renewed = ledger_with("a", 2, 1000);
        obs.observe(&renewed, t0 + Duration::from_millis(900));
        assert!(
            obs.expired(&renewed, "me", t0 + Duration::from_millis(1500))
                .is_empty()
        );
        assert_eq!(
            obs.expired(&renewed, "me", t0 + Duration::from_millis(1900))
                .len(),
            1
        );
    }

    #[test]
    fn an_agent_never_seen_before_is_not_expired() {
        let l = ledger_with("a", 7, 10);
        let obs = Observations::default();
        assert!(
            obs.expired(&l, "me", Instant::now() + Duration::from_secs(3600))
                .is_empty()
        );
    }

    #[test]
    fn never_expires_itself() {
        let t0 = Instant::now();
        let l = ledger_with("me", 1, 10);
        let mut obs = Observations::default();
        obs.observe(&l, t0);
        assert!(
            obs.expired(&l, "me", t0 + Duration::from_secs(60))
                .is_empty()
        );
    }

    #[test]
    fn our_own_id_written_by_another_stands_still_only_after_its_lease() {
        // What a client asks of the entry under its own id that another
        // writer holds (`Batch::take_over`).
        let t0 = Instant::now();
        let l = ledger_with("me", 1, 1000);
        let mut obs = Observations::default();
        assert!(!obs.stood_still(&l, "me", t0), "never seen");
        obs.observe(&l, t0);
        assert!(!obs.stood_still(&l, "me", t0 + Duration::from_millis(999)));
        assert!(obs.stood_still(&l, "me", t0 + Duration::from_millis(1000)));
        let renewed = ledger_with("me", 2, 1000);
        obs.observe(&renewed, t0 + Duration::from_millis(1200));
        assert!(!obs.stood_still(&renewed, "me", t0 + Duration::from_millis(2000)));
    }

    #[test]
    fn self_fence_comes_before_expiry() {
        let lease = Duration::from_secs(30);
        assert!(self_fence_after(lease) < lease);
    }
}
