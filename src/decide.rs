//! Pure decision logic: given a ledger and a batch of requests, compute the
//! next ledger and each request's outcome. No I/O and no clocks; the caller
//! passes the wall-clock label and the list of agents it has seen expire.

use std::collections::BTreeSet;
use std::time::Duration;

use crate::ledger::{Agent, Holder, Ledger};

/// Everything one commit of one agent may do at once (group commit).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub agent: String,
    pub agent_description: Option<String>,
    pub lease: Duration,
    /// Holders asking for a slot, in the order they should be served.
    pub acquires: Vec<String>,
    /// Holders to free (ours or, for a manual release, anyone's).
    pub releases: Vec<String>,
    /// Holders this agent believes it holds: any that are missing are lost.
    pub held: Vec<String>,
    /// Agents whose lease this agent has seen run out.
    pub evict: Vec<String>,
    /// Bump our renewal counter even if nothing else changes.
    pub renew: bool,
    /// Wall-clock label for humans.
    pub wall_now: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Outcome {
    /// The ledger to write, or `None` when nothing would change.
    pub next: Option<Ledger>,
    /// Granted holders with their fencing tokens (including ones already held).
    pub granted: Vec<(String, u64)>,
    /// Holders that must keep waiting: no slot is free.
    pub waiting: Vec<String>,
    /// Holders that belong to another agent already.
    pub taken: Vec<(String, String)>,
    /// Holders we believed we held that are gone (evicted or released by hand).
    pub lost: Vec<String>,
    pub released: Vec<String>,
    pub evicted_agents: Vec<String>,
}

/// Applies a batch to a ledger. Idempotent: applying the same batch to its own
/// result changes nothing except the renewal counter when `renew` is set, which
/// is what makes "re-read and re-apply" safe after an ambiguous write.
pub fn apply(current: &Ledger, batch: &Batch) -> Outcome {
    let mut next = current.clone();
    let mut out = Outcome::default();
    let mut changed = false;

    for agent in &batch.evict {
        if agent == &batch.agent {
            continue;
        }
        if next.agents.remove(agent).is_some() {
            next.holders.retain(|_, h| &h.agent != agent);
            out.evicted_agents.push(agent.clone());
            changed = true;
        }
    }

    for holder in &batch.held {
        match next.holders.get(holder) {
            Some(h) if h.agent == batch.agent => {}
            _ if batch.releases.contains(holder) => {}
            _ => out.lost.push(holder.clone()),
        }
    }

    for holder in &batch.releases {
        // Only our own: after an eviction the same holder id may have been
        // granted to another agent, whose slot is not ours to free.
        if next
            .holders
            .get(holder)
            .is_some_and(|h| h.agent == batch.agent)
        {
            next.holders.remove(holder);
            changed = true;
        }
        out.released.push(holder.clone());
    }

    let mut seen = BTreeSet::new();
    for holder in &batch.acquires {
        if !seen.insert(holder) {
            continue;
        }
        if let Some(h) = next.holders.get(holder) {
            if h.agent == batch.agent {
                out.granted.push((holder.clone(), h.token));
            } else {
                out.taken.push((holder.clone(), h.agent.clone()));
            }
            continue;
        }
        if next.holders.len() >= next.limit as usize {
            out.waiting.push(holder.clone());
            continue;
        }
        let token = next.next_token;
        next.next_token += 1;
        next.holders.insert(
            holder.clone(),
            Holder {
                agent: batch.agent.clone(),
                token,
                granted_seq: current.seq + 1,
                granted_at: batch.wall_now.clone(),
            },
        );
        out.granted.push((holder.clone(), token));
        changed = true;
    }

    let holds_any = next.holders.values().any(|h| h.agent == batch.agent);
    if holds_any {
        if changed || batch.renew || !next.agents.contains_key(&batch.agent) {
            let entry = next.agents.entry(batch.agent.clone()).or_insert(Agent {
                renewals: 0,
                lease_ms: 0,
                renewed_at: String::new(),
                description: None,
            });
            // The commit number never repeats, so an observer can never see
            // an old value come back after this agent left and rejoined.
            entry.renewals = current.seq + 1;
            entry.lease_ms = batch.lease.as_millis() as u64;
            entry.renewed_at = batch.wall_now.clone();
            entry.description = batch.agent_description.clone();
            changed = true;
        }
    } else if next.agents.remove(&batch.agent).is_some() {
        changed = true;
    }

    if changed {
        next.seq = current.seq + 1;
        next.written_by = Some(batch.agent.clone());
        next.written_at = Some(batch.wall_now.clone());
        out.next = Some(next);
    }
    out
}

/// An operator's release of one holder, whoever holds it. Leaves the owning
/// agent's entry in place (it drops itself when it next commits).
pub fn release_by_hand(
    current: &Ledger,
    holder: &str,
    who: &str,
    wall_now: &str,
) -> Option<Ledger> {
    let mut next = current.clone();
    next.holders.remove(holder)?;
    next.seq = current.seq + 1;
    next.written_by = Some(who.to_string());
    next.written_at = Some(wall_now.to_string());
    Some(next)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn batch(agent: &str) -> Batch {
        Batch {
            agent: agent.into(),
            lease: Duration::from_secs(30),
            wall_now: "now".into(),
            ..Default::default()
        }
    }

    fn acquire(l: &Ledger, agent: &str, holders: &[&str]) -> Outcome {
        let mut b = batch(agent);
        b.acquires = holders.iter().map(|s| s.to_string()).collect();
        apply(l, &b)
    }

    #[test]
    fn grants_up_to_the_limit_in_order_with_increasing_tokens() {
        let l = Ledger::new(2);
        let out = acquire(&l, "a", &["h1", "h2", "h3"]);
        assert_eq!(out.granted, vec![("h1".into(), 1), ("h2".into(), 2)]);
        assert_eq!(out.waiting, vec!["h3".to_string()]);
        let next = out.next.unwrap();
        assert_eq!(next.seq, 1);
        assert_eq!(next.next_token, 3);
        assert_eq!(next.agents["a"].renewals, 1);
    }

    #[test]
    fn releases_only_free_our_own_holders() {
        let l = acquire(&Ledger::new(2), "b", &["h1"]).next.unwrap();
        let mut a = batch("a");
        a.releases = vec!["h1".into()];
        let out = apply(&l, &a);
        assert_eq!(out.next, None, "agent a must not free agent b's slot");
        assert_eq!(out.released, vec!["h1".to_string()]);
    }

    #[test]
    fn renewal_counters_never_repeat_across_leave_and_rejoin() {
        let l = acquire(&Ledger::new(2), "a", &["h1"]).next.unwrap();
        let first = l.agents["a"].renewals;
        let mut rel = batch("a");
        rel.releases = vec!["h1".into()];
        let l = apply(&l, &rel).next.unwrap();
        let l = acquire(&l, "a", &["h2"]).next.unwrap();
        assert!(l.agents["a"].renewals > first);
    }

    #[test]
    fn acquire_is_idempotent() {
        let l = acquire(&Ledger::new(2), "a", &["h1"]).next.unwrap();
        let again = acquire(&l, "a", &["h1"]);
        assert_eq!(again.granted, vec![("h1".into(), 1)]);
        assert_eq!(
            again.next, None,
            "re-applying a landed acquire must not write"
        );
    }

    #[test]
    fn holder_of_another_agent_is_reported_not_stolen() {
        let l = acquire(&Ledger::new(2), "a", &["h1"]).next.unwrap();
        let out = acquire(&l, "b", &["h1"]);
        assert_eq!(out.taken, vec![("h1".into(), "a".into())]);
        assert!(out.granted.is_empty());
        assert_eq!(out.next, None);
    }

    #[test]
    fn release_and_acquire_share_one_commit() {
        let l = acquire(&Ledger::new(1), "a", &["h1"]).next.unwrap();
        let mut b = batch("a");
        b.releases = vec!["h1".into()];
        b.acquires = vec!["h2".into()];
        b.held = vec!["h1".into()];
        let out = apply(&l, &b);
        assert_eq!(out.granted, vec![("h2".into(), 2)]);
        assert!(out.lost.is_empty());
        let next = out.next.unwrap();
        assert_eq!(next.holders.len(), 1);
        assert_eq!(next.seq, 2);
    }

    #[test]
    fn last_release_removes_the_agent_and_repeating_it_is_a_no_op() {
        let l = acquire(&Ledger::new(1), "a", &["h1"]).next.unwrap();
        let mut b = batch("a");
        b.releases = vec!["h1".into()];
        let next = apply(&l, &b).next.unwrap();
        assert!(next.holders.is_empty());
        assert!(next.agents.is_empty());
        assert_eq!(apply(&next, &b).next, None);
    }

    #[test]
    fn eviction_frees_the_slots_of_expired_agents_only() {
        let l = acquire(&Ledger::new(2), "a", &["h1"]).next.unwrap();
        let l = acquire(&l, "b", &["h2"]).next.unwrap();
        let mut c = batch("c");
        c.acquires = vec!["h3".into()];
        c.evict = vec!["a".into()];
        let out = apply(&l, &c);
        assert_eq!(out.evicted_agents, vec!["a".to_string()]);
        assert_eq!(out.granted, vec![("h3".into(), 3)]);
        let next = out.next.unwrap();
        assert!(next.holders.contains_key("h2"));
        assert!(!next.agents.contains_key("a"));
    }

    #[test]
    fn missing_holders_are_reported_lost() {
        let l = acquire(&Ledger::new(2), "a", &["h1", "h2"]).next.unwrap();
        let l = release_by_hand(&l, "h1", "operator", "now").unwrap();
        let mut b = batch("a");
        b.held = vec!["h1".into(), "h2".into()];
        b.renew = true;
        let out = apply(&l, &b);
        assert_eq!(out.lost, vec!["h1".to_string()]);
        let next = out.next.unwrap();
        assert_eq!(next.agents["a"].renewals, next.seq);
    }

    #[test]
    fn renewal_without_holders_writes_nothing() {
        let mut b = batch("a");
        b.renew = true;
        assert_eq!(apply(&Ledger::new(1), &b).next, None);
    }

    #[test]
    fn an_agent_never_evicts_itself() {
        let l = acquire(&Ledger::new(1), "a", &["h1"]).next.unwrap();
        let mut b = batch("a");
        b.evict = vec!["a".into()];
        assert_eq!(apply(&l, &b).next, None);
    }

    #[test]
    fn lowered_limit_admits_nobody_until_holders_drop_below_it() {
        let mut l = acquire(&Ledger::new(3), "a", &["h1", "h2", "h3"])
            .next
            .unwrap();
        l.limit = 2;
        let out = acquire(&l, "b", &["h4"]);
        assert_eq!(out.waiting, vec!["h4".to_string()]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            Acquire(usize, Vec<u8>),
            Release(usize, Vec<u8>),
            Evict(usize, usize),
        }

        fn step() -> impl Strategy<Value = Step> {
            let holders = prop::collection::vec(0u8..12, 0..5);
            prop_oneof![
                (0usize..3, holders.clone()).prop_map(|(a, h)| Step::Acquire(a, h)),
                (0usize..3, holders).prop_map(|(a, h)| Step::Release(a, h)),
                (0usize..3, 0usize..3).prop_map(|(a, b)| Step::Evict(a, b)),
            ]
        }

        proptest! {
            /// Whatever the interleaving of agents' batches: never more holders
            /// than the limit, tokens unique and below `next_token`, `seq` +1
            /// per write, and re-applying a batch writes nothing new.
            #[test]
            fn invariants_hold(limit in 1u32..5, steps in prop::collection::vec(step(), 1..40)) {
                let mut l = Ledger::new(limit);
                for s in steps {
                    let mut b = batch("");
                    match s {
                        Step::Acquire(a, hs) => { b.agent = format!("a{a}"); b.acquires = hs.iter().map(|h| format!("h{h}")).collect(); }
                        Step::Release(a, hs) => { b.agent = format!("a{a}"); b.releases = hs.iter().map(|h| format!("h{h}")).collect(); }
                        Step::Evict(a, v) => { b.agent = format!("a{a}"); b.evict = vec![format!("a{v}")]; }
                    }
                    let out = apply(&l, &b);
                    if let Some(next) = out.next.clone() {
                        prop_assert_eq!(next.seq, l.seq + 1);
                        prop_assert!(next.next_token >= l.next_token);
                        prop_assert!(next.holders.len() <= limit as usize);
                        let mut tokens: Vec<u64> = next.holders.values().map(|h| h.token).collect();
                        tokens.sort();
                        tokens.dedup();
                        prop_assert_eq!(tokens.len(), next.holders.len());
                        prop_assert!(next.holders.values().all(|h| h.token < next.next_token && next.agents.contains_key(&h.agent)));
                        prop_assert!(Ledger::parse(&next.to_bytes()).is_ok());
                        let again = apply(&next, &b);
                        prop_assert_eq!(again.next, None, "re-applying a landed batch must not write");
                        prop_assert_eq!(again.granted, out.granted.clone());
                        l = next;
                    }
                }
            }
        }
    }
}
