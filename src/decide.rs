//! Pure decision logic: given a ledger and a batch of requests, compute the
//! next ledger and each request's outcome. No I/O and no clocks; the caller
//! passes the wall-clock label and the list of agents it has seen expire.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::ledger::{Holder, Ledger, LimitSet};

/// Everything one commit of one agent may do at once (group commit).
#[derive(Debug, Clone, Default)]
pub struct Batch {
    pub agent: String,
    pub agent_description: Option<String>,
    pub lease: Duration,
    /// Holders asking for a slot, in the order they should be served.
    pub acquires: Vec<String>,
    /// Of those, the ones that take more than one unit of the limit.
    pub slots: BTreeMap<String, u32>,
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
    /// Record that nothing of this agent waits any more, even though this
    /// batch has no acquires. (A batch without acquires otherwise leaves the
    /// recorded wait as it is: callers that only poll keep their place.)
    pub withdraw_wait: bool,
    /// Record in the ledger how many of this agent's acquires wait, so that
    /// agents holding more slots leave free ones to it (see below).
    pub record_wait: bool,
    /// Units of the limit wanted by holders of this agent that queue behind
    /// `acquires` but were not put in them: a caller with thousands of
    /// holders waiting asks only for those that could be granted. Once one
    /// of `acquires` does not fit, every holder behind it waits, so these
    /// are recorded as waiting with the rest, as if they had been asked.
    pub waiting_behind: u32,
    /// Change the ledger's limit first (a deliberate change: a new spec or
    /// `jobgate limit`).
    pub set_limit: Option<LimitChange>,
    /// Who this agent is beyond its id (a controller's cluster UID): see
    /// `Agent::instance`.
    pub instance: Option<String>,
    /// The agent's entry names another instance, whose renewals this agent
    /// has seen stand still for its whole lease: it is gone, and its slots
    /// are expired as any agent's would be.
    pub take_over: bool,
}

/// A deliberate change of the ledger's limit.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitChange {
    pub limit: u32,
    /// Recorded as `limit_set.by`.
    pub by: String,
    pub generation: Option<i64>,
}

/// Applies a limit change. Idempotent: the same change again (same limit,
/// author and generation) changes nothing. Lowering the limit frees no
/// slot: grants stop until use falls below the new limit. `None` for a
/// limit of 0, which no ledger may have.
pub fn set_limit(ledger: &mut Ledger, change: &LimitChange, wall_now: &str) -> Option<bool> {
    if change.limit == 0 {
        return None;
    }
    let same_source = ledger
        .limit_set
        .as_ref()
        .is_some_and(|s| s.by == change.by && s.generation == change.generation);
    if ledger.limit == change.limit && same_source {
        return Some(false);
    }
    ledger.limit_set = Some(LimitSet {
        by: change.by.clone(),
        generation: change.generation,
        previous: ledger.limit,
        at: wall_now.to_string(),
    });
    ledger.limit = change.limit;
    Some(true)
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
    /// Another instance writes as this agent (see `Agent::instance`):
    /// nothing was done, and its instance.
    pub claimed_by: Option<String>,
}

/// Applies a batch to a ledger. Idempotent: applying the same batch to its own
/// result changes nothing except the renewal counter when `renew` is set, which
/// is what makes "re-read and re-apply" safe after an ambiguous write.
pub fn apply(current: &Ledger, batch: &Batch) -> Outcome {
    let mut next = current.clone();
    let mut out = Outcome::default();
    let mut changed = false;

    // Two writers under one agent id (two clusters given the same name)
    // would each take the other's holders for their own and free them as
    // gone. The one that finds the entry another's does nothing at all
    // until that one has stood still for its lease.
    if let Some(theirs) = claimed_by_another(current, batch) {
        if !batch.take_over {
            out.claimed_by = Some(theirs.to_string());
            out.lost = batch.held.clone();
            return out;
        }
        next.agents.remove(&batch.agent);
        next.holders.retain(|_, h| h.agent != batch.agent);
        out.evicted_agents.push(batch.agent.clone());
        changed = true;
    }

    if let Some(change) = &batch.set_limit {
        // A limit of 0 is refused before it gets here (`Error::InvalidLimit`).
        changed |= set_limit(&mut next, change, &batch.wall_now).unwrap_or(false);
    }

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

    // Fairness between agents: an agent that frees a slot and asks for its
    // next holder in the same write would otherwise keep the slot for ever.
    // So an agent ranks by the slots it held before this write's releases
    // (plus what it gains in it), and leaves free for each waiting agent
    // that holds fewer as many slots as bring it up to that rank (or all
    // it waits for, if fewer). Only the gap is left: leaving a poorer
    // agent's whole queue would hold every free slot back from an agent
    // one slot ahead, and with deep queues in two clusters the slots would
    // sit idle until the poorer one's next write. Equal holdings race as
    // usual (first write wins), so agents that each want one slot never
    // wait for each other.
    //
    // Everything here counts units of the limit: a holder takes `slots`.
    let held_by = |ledger: &Ledger, agent: &str| ledger.used_by(agent);
    let rivals: Vec<(usize, usize)> = next
        .agents
        .iter()
        .filter(|(id, a)| *id != &batch.agent && a.waiting > 0)
        .map(|(id, a)| (held_by(&next, id), a.waiting as usize))
        .collect();
    let mine = next.agents.get(&batch.agent).cloned();
    let mut my_rank = held_by(current, &batch.agent);

    // Within one batch holders are served strictly in order: one that does
    // not fit holds back those behind it, so that a heavy holder is never
    // passed for ever by lighter ones. One that could not fit even in an
    // empty ledger (more slots than the limit) waits without holding back.
    let mut blocked = false;
    let mut wanted = 0u32;
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
        let ahead = left_for_poorer(&rivals, my_rank);
        let weight = batch.slots.get(holder).copied().unwrap_or(1).max(1);
        if weight > next.limit {
            out.waiting.push(holder.clone());
            continue;
        }
        // Once one holder is blocked every later one is: the free count
        // (a sum over the holders) is not needed for them.
        if blocked || next.free() < weight as usize + ahead {
            blocked = true;
            wanted = wanted.saturating_add(weight);
            out.waiting.push(holder.clone());
            continue;
        }
        my_rank += weight as usize;
        let token = next.next_token;
        next.next_token += 1;
        next.holders.insert(
            holder.clone(),
            Holder {
                agent: batch.agent.clone(),
                token,
                granted_seq: current.seq + 1,
                granted_at: batch.wall_now.clone(),
                slots: weight,
            },
        );
        out.granted.push((holder.clone(), token));
        changed = true;
    }

    if blocked {
        wanted = wanted.saturating_add(batch.waiting_behind);
    }
    let holds_any = next.holders.values().any(|h| h.agent == batch.agent);
    let wants = if !batch.record_wait {
        0
    } else if batch.acquires.is_empty() && !batch.withdraw_wait {
        mine.as_ref().map_or(0, |a| a.waiting)
    } else {
        wanted
    };
    let was_waiting = mine.as_ref().is_some_and(|a| a.waiting > 0);
    if holds_any || wants > 0 {
        // The waiting count is rewritten only along with other changes or
        // when waiting starts or ends, so that waiting costs no extra writes.
        let waiting_changed = was_waiting != (wants > 0);
        if changed || batch.renew || mine.is_none() || waiting_changed {
            let entry = next.agents.entry(batch.agent.clone()).or_default();
            entry.waiting = wants;
            // The commit number never repeats, so an observer can never see
            // an old value come back after this agent left and rejoined.
            entry.renewals = current.seq + 1;
            entry.lease_ms = batch.lease.as_millis() as u64;
            entry.renewed_at = batch.wall_now.clone();
            entry.description = batch.agent_description.clone();
            entry.instance = batch.instance.clone();
            changed = true;
        }
    } else if next.agents.remove(&batch.agent).is_some() {
        changed = true;
    }

    if changed {
        next.schema = next.schema_needed().to_string();
        next.seq = current.seq + 1;
        next.written_by = Some(batch.agent.clone());
        next.written_at = Some(batch.wall_now.clone());
        out.next = Some(next);
    }
    out
}

/// The free slots a writer ranked `my_rank` leaves to waiting agents
/// (`(held, waiting)` each): to each that holds fewer, the gap up to that
/// rank, but never more than it waits for (a stale wait must not keep more
/// slots idle than it asked for).
fn left_for_poorer(rivals: &[(usize, usize)], my_rank: usize) -> usize {
    rivals
        .iter()
        .map(|&(held, waiting)| waiting.min(my_rank.saturating_sub(held)))
        .sum()
}

/// The instance named in this agent's entry when it is not the batch's own.
pub fn claimed_by_another<'a>(current: &'a Ledger, batch: &Batch) -> Option<&'a str> {
    let mine = batch.instance.as_deref()?;
    let theirs = current.agents.get(&batch.agent)?.instance.as_deref()?;
    (theirs != mine).then_some(theirs)
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
            record_wait: true,
            ..Default::default()
        }
    }

    fn acquire(l: &Ledger, agent: &str, holders: &[&str]) -> Outcome {
        let mut b = batch(agent);
        b.acquires = holders.iter().map(|s| s.to_string()).collect();
        apply(l, &b)
    }

    #[test]
    fn holders_waiting_behind_the_batch_are_recorded_as_if_they_were_asked() {
        let mut l = Ledger::new(3);
        l = acquire(&l, "b", &["b1"]).next.unwrap();
        let all: Vec<String> = (0..10).map(|i| format!("h{i}")).collect();
        let mut full = batch("a");
        full.acquires = all.clone();
        let whole = apply(&l, &full);
        // Three asked (one past what could fit), seven behind.
        let mut some = batch("a");
        some.acquires = all[..3].to_vec();
        some.waiting_behind = 7;
        let part = apply(&l, &some);
        assert_eq!(part.granted, whole.granted);
        assert_eq!(part.granted.len(), 2);
        let (whole, part) = (whole.next.unwrap(), part.next.unwrap());
        assert_eq!(part.agents["a"].waiting, whole.agents["a"].waiting);
        assert_eq!(part.agents["a"].waiting, 8);
        assert_eq!(part.holders, whole.holders);
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

    /// Agent "east/b/g" as written by cluster `instance`, asking for
    /// `holders`, on `l`.
    fn as_cluster(l: &Ledger, instance: &str, holders: &[&str], held: &[&str]) -> Outcome {
        let mut b = batch("east/b/g");
        b.instance = Some(instance.into());
        b.acquires = holders.iter().map(|s| s.to_string()).collect();
        b.held = held.iter().map(|s| s.to_string()).collect();
        b.renew = true;
        apply(l, &b)
    }

    #[test]
    fn a_second_writer_of_one_agent_id_writes_nothing_and_frees_nothing() {
        // Cluster 1 holds h1 as east/b/g.
        let l = as_cluster(&Ledger::new(2), "uid-1", &["h1"], &[])
            .next
            .unwrap();
        assert_eq!(l.agents["east/b/g"].instance.as_deref(), Some("uid-1"));
        // Cluster 2, given the same name, would free h1 (no such Job there)
        // and ask for its own: refused whole.
        let mut b = batch("east/b/g");
        b.instance = Some("uid-2".into());
        b.releases = vec!["h1".into()];
        b.acquires = vec!["h2".into()];
        let out = apply(&l, &b);
        assert_eq!(out.claimed_by.as_deref(), Some("uid-1"));
        assert_eq!(out.next, None);
        assert!(out.granted.is_empty() && out.released.is_empty());
        // Cluster 1 goes on as before.
        let out = as_cluster(&l, "uid-1", &["h3"], &["h1"]);
        assert_eq!(out.claimed_by, None);
        assert_eq!(out.granted, vec![("h3".into(), 2)]);
        // A writer that names no instance (`jobgate run`) is not checked.
        let mut plain = batch("east/b/g");
        plain.acquires = vec!["h4".into()];
        assert_eq!(apply(&l, &plain).claimed_by, None);
    }

    #[test]
    fn a_writer_whose_entry_another_left_standing_takes_it_over_with_its_slots_expired() {
        let l = as_cluster(&Ledger::new(2), "uid-1", &["h1"], &[])
            .next
            .unwrap();
        let mut b = batch("east/b/g");
        b.instance = Some("uid-2".into());
        b.acquires = vec!["h2".into()];
        b.take_over = true;
        let out = apply(&l, &b);
        assert_eq!(out.evicted_agents, vec!["east/b/g".to_string()]);
        assert_eq!(out.granted, vec![("h2".into(), 2)]);
        let next = out.next.unwrap();
        assert!(!next.holders.contains_key("h1"));
        assert_eq!(next.agents["east/b/g"].instance.as_deref(), Some("uid-2"));
        // The one that was gone comes back: its slot is lost, and it writes
        // nothing.
        let out = as_cluster(&next, "uid-1", &[], &["h1"]);
        assert_eq!(out.claimed_by.as_deref(), Some("uid-2"));
        assert_eq!(out.lost, vec!["h1".to_string()]);
        assert_eq!(out.next, None);
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

    fn swap(l: &Ledger, agent: &str, release: &str, want: &[&str]) -> Outcome {
        let mut b = batch(agent);
        b.releases = vec![release.into()];
        b.acquires = want.iter().map(|s| s.to_string()).collect();
        apply(l, &b)
    }

    #[test]
    fn waiting_registers_the_agent_once() {
        let full = acquire(&Ledger::new(1), "a", &["a1"]).next.unwrap();
        let out = acquire(&full, "b", &["b1"]);
        let waiting = out.next.expect("starting to wait is recorded");
        assert_eq!(waiting.agents["b"].waiting, 1);
        // Asking again while nothing changed writes nothing.
        assert_eq!(acquire(&waiting, "b", &["b1"]).next, None);
    }

    #[test]
    fn an_agent_that_does_not_record_waits_writes_nothing_while_waiting() {
        let full = acquire(&Ledger::new(1), "a", &["a1"]).next.unwrap();
        let mut b = batch("b");
        b.record_wait = false;
        b.acquires = vec!["b1".into()];
        let out = apply(&full, &b);
        assert_eq!(out.waiting, vec!["b1".to_string()]);
        assert_eq!(out.next, None);
    }

    #[test]
    fn polling_keeps_the_recorded_wait_and_withdrawing_clears_it() {
        let full = acquire(&Ledger::new(1), "a", &["a1"]).next.unwrap();
        let waiting = acquire(&full, "b", &["b1"]).next.unwrap();
        let mut poll = batch("b");
        poll.renew = true;
        let renewed = apply(&waiting, &poll).next.unwrap();
        assert_eq!(renewed.agents["b"].waiting, 1);
        let mut withdraw = batch("b");
        withdraw.withdraw_wait = true;
        let gone = apply(&renewed, &withdraw).next.unwrap();
        assert!(!gone.agents.contains_key("b"), "{gone:?}");
    }

    #[test]
    fn a_freed_slot_goes_to_the_waiting_agent_holding_fewer() {
        let l = acquire(&Ledger::new(2), "a", &["a1", "a2", "a3"])
            .next
            .unwrap();
        let l = acquire(&l, "b", &["b1"]).next.unwrap();
        // a frees a slot and asks for its next holder in the same write:
        // b holds none, so a must not take it back.
        let out = swap(&l, "a", "a1", &["a3"]);
        assert!(out.granted.is_empty(), "{out:?}");
        let l = out.next.unwrap();
        let out = acquire(&l, "b", &["b1"]);
        assert_eq!(out.granted.len(), 1);
    }

    #[test]
    fn with_one_slot_two_waiting_agents_take_turns() {
        let l = acquire(&Ledger::new(1), "a", &["a1", "a2", "a3"])
            .next
            .unwrap();
        let l = acquire(&l, "b", &["b1", "b2"]).next.unwrap();
        // a frees its slot: b holds fewer than a did, so b goes first.
        let out = swap(&l, "a", "a1", &["a2", "a3"]);
        assert!(out.granted.is_empty(), "a must yield to b: {out:?}");
        let out = acquire(&out.next.unwrap(), "b", &["b1", "b2"]);
        assert_eq!(out.granted, vec![("b1".to_string(), 2)]);
        let out = swap(&out.next.unwrap(), "b", "b1", &["b2"]);
        assert!(out.granted.is_empty(), "b must yield to a: {out:?}");
        let out = acquire(&out.next.unwrap(), "a", &["a2", "a3"]);
        assert_eq!(out.granted, vec![("a2".to_string(), 3)]);
    }

    #[test]
    fn agents_that_each_want_one_slot_never_defer_to_each_other() {
        let l = acquire(&Ledger::new(1), "a", &["a1"]).next.unwrap();
        let l = acquire(&l, "b", &["b1"]).next.unwrap();
        let mut release = batch("a");
        release.releases = vec!["a1".into()];
        let l = apply(&l, &release).next.unwrap();
        // c asks first after the release; b holds no fewer than c, so the
        // first writer wins, as without fairness.
        let out = acquire(&l, "c", &["c1"]);
        assert_eq!(out.granted.len(), 1, "{out:?}");
    }

    #[test]
    fn a_waiting_agent_holds_back_only_as_many_slots_as_it_waits_for() {
        let l = acquire(&Ledger::new(4), "b", &["b1"]).next.unwrap();
        let l = acquire(&l, "b", &["b2", "b3", "b4", "b5"]).next.unwrap();
        assert_eq!(l.agents["b"].waiting, 1);
        // b holds 4 and waits for 1; it frees 3.
        let mut b = batch("b");
        b.releases = vec!["b1".into(), "b2".into(), "b3".into()];
        let l = apply(&l, &b).next.unwrap();
        // b now holds 1 and waits for 1. Of the 3 free slots a takes 2,
        // leaves the 1 b waits for, and both end up with 2.
        let out = acquire(&l, "a", &["a1", "a2", "a3"]);
        assert_eq!(out.granted.len(), 2, "{out:?}");
        assert_eq!(out.waiting, vec!["a3".to_string()]);
    }

    #[test]
    fn a_writer_leaves_a_poorer_agent_only_the_gap_to_its_own_rank() {
        assert_eq!(left_for_poorer(&[(49, 60)], 51), 2);
        assert_eq!(
            left_for_poorer(&[(49, 1)], 51),
            1,
            "no more than it waits for"
        );
        assert_eq!(
            left_for_poorer(&[(51, 60), (50, 60)], 50),
            0,
            "none to richer or equal"
        );
        assert_eq!(left_for_poorer(&[(0, 100), (10, 5)], 20), 25);
    }

    #[test]
    fn two_deep_queues_one_slot_apart_keep_reusing_their_slots() {
        // a holds 5 and b 4, both with deep recorded queues: a frees two
        // and asks for more. It leaves b the one slot b is behind and takes
        // the other back in the same write, instead of leaving both idle
        // until b writes.
        let mut l = Ledger::new(9);
        let a: Vec<String> = (0..5).map(|i| format!("a{i}")).collect();
        let b: Vec<String> = (0..4).map(|i| format!("b{i}")).collect();
        let more = |p: &str| (10..40).map(|i| format!("{p}{i}")).collect::<Vec<_>>();
        let with_more = |held: &[String], agent: &str| -> Vec<String> {
            held.iter().cloned().chain(more(agent)).collect()
        };
        for (agent, acquires) in [
            ("a", a.clone()),
            ("b", with_more(&b, "b")),
            ("a", with_more(&a, "a")),
        ] {
            let mut batch = batch(agent);
            batch.acquires = acquires;
            l = apply(&l, &batch).next.unwrap();
        }
        assert!(
            l.agents["a"].waiting > 0 && l.agents["b"].waiting > 0,
            "{l:?}"
        );
        assert_eq!((l.used_by("a"), l.used_by("b")), (5, 4));
        let mut swap = batch("a");
        swap.releases = vec!["a0".into(), "a1".into()];
        swap.acquires = more("a");
        let out = apply(&l, &swap);
        assert_eq!(out.granted.len(), 1, "{out:?}");
        let l = out.next.unwrap();
        assert_eq!((l.used_by("a"), l.free()), (4, 1));
        // b takes the slot left to it.
        let mut ask = batch("b");
        ask.acquires = more("b");
        assert_eq!(apply(&l, &ask).granted.len(), 1);
    }

    #[test]
    fn a_lone_agent_gets_every_free_slot_in_one_write() {
        let l = acquire(&Ledger::new(4), "a", &["a1"]).next.unwrap();
        let out = acquire(&l, "a", &["a2", "a3", "a4", "a5"]);
        assert_eq!(out.granted.len(), 3);
        assert_eq!(out.waiting, vec!["a5".to_string()]);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        #[derive(Debug, Clone)]
        enum Step {
            /// Holders with the units each asks for.
            Acquire(usize, Vec<(u8, u32)>),
            Release(usize, Vec<u8>),
            Evict(usize, usize),
            SetLimit(u32),
        }

        fn step() -> impl Strategy<Value = Step> {
            let holders = prop::collection::vec(0u8..12, 0..5);
            let weighted =
                prop::collection::vec((0u8..12, prop_oneof![3 => Just(1u32), 2 => 1u32..7]), 0..5);
            prop_oneof![
                4 => (0usize..3, weighted).prop_map(|(a, h)| Step::Acquire(a, h)),
                3 => (0usize..3, holders).prop_map(|(a, h)| Step::Release(a, h)),
                1 => (0usize..3, 0usize..3).prop_map(|(a, b)| Step::Evict(a, b)),
                1 => (1u32..8).prop_map(Step::SetLimit),
            ]
        }

        proptest! {
            /// Whatever the interleaving of agents' batches, weights and limit
            /// changes: a write that grants anything leaves the weighted sum
            /// within the limit, and no write raises it above a lowered limit;
            /// tokens unique and below `next_token`, `seq` +1 per write, and
            /// re-applying a batch writes nothing new.
            #[test]
            fn invariants_hold(limit in 1u32..6, steps in prop::collection::vec(step(), 1..60)) {
                let mut l = Ledger::new(limit);
                for s in steps {
                    let mut b = batch("");
                    match s {
                        Step::Acquire(a, hs) => {
                            b.agent = format!("a{a}");
                            b.acquires = hs.iter().map(|(h, _)| format!("h{h}")).collect();
                            b.slots = hs.iter().map(|(h, w)| (format!("h{h}"), *w)).collect();
                        }
                        Step::Release(a, hs) => { b.agent = format!("a{a}"); b.releases = hs.iter().map(|h| format!("h{h}")).collect(); }
                        Step::Evict(a, v) => { b.agent = format!("a{a}"); b.evict = vec![format!("a{v}")]; }
                        Step::SetLimit(n) => {
                            b.agent = "admin".into();
                            b.set_limit = Some(LimitChange { limit: n, by: "admin".into(), generation: None });
                        }
                    }
                    let out = apply(&l, &b);
                    if let Some(next) = out.next.clone() {
                        prop_assert_eq!(next.seq, l.seq + 1);
                        prop_assert!(next.next_token >= l.next_token);
                        let new_grants = out.granted.iter().any(|(h, _)| !l.holders.contains_key(h));
                        if new_grants {
                            prop_assert!(next.in_use() <= next.limit as usize, "{} > {}", next.in_use(), next.limit);
                        }
                        prop_assert!(next.in_use() <= (next.limit as usize).max(l.in_use()));
                        for (h, w) in &b.slots {
                            if let Some(granted) = next.holders.get(h).filter(|_| !l.holders.contains_key(h)) {
                                prop_assert_eq!(granted.slots, (*w).max(1));
                            }
                        }
                        let mut tokens: Vec<u64> = next.holders.values().map(|h| h.token).collect();
                        tokens.sort();
                        tokens.dedup();
                        prop_assert_eq!(tokens.len(), next.holders.len());
                        prop_assert!(next.holders.values().all(|h| h.token < next.next_token && next.agents.contains_key(&h.agent)));
                        prop_assert_eq!(Ledger::parse(&next.to_bytes()), Ok(next.clone()));
                        let again = apply(&next, &b);
                        prop_assert_eq!(again.next, None, "re-applying a landed batch must not write");
                        prop_assert_eq!(again.granted, out.granted.clone());
                        l = next;
                    }
                }
            }
        }

        #[test]
        fn a_heavy_holder_at_the_head_holds_back_lighter_ones_behind_it() {
            let l = acquire(&Ledger::new(4), "a", &["x1", "x2"]).next.unwrap();
            let mut b = batch("a");
            b.acquires = vec!["heavy".into(), "light".into()];
            b.slots = BTreeMap::from([("heavy".to_string(), 3)]);
            let out = apply(&l, &b);
            assert!(out.granted.is_empty(), "light passed heavy: {out:?}");
            assert_eq!(out.waiting, vec!["heavy".to_string(), "light".to_string()]);
            assert_eq!(out.next.unwrap().agents["a"].waiting, 4, "units wanted");
            // Once enough is free, heavy goes first.
            let mut free = batch("a");
            free.releases = vec!["x1".into(), "x2".into()];
            let l = apply(&l, &free).next.unwrap();
            let out = apply(&l, &b);
            let order: Vec<&str> = out.granted.iter().map(|(h, _)| h.as_str()).collect();
            assert_eq!(order, vec!["heavy", "light"]);
            let next = out.next.unwrap();
            assert_eq!(
                (next.in_use(), next.schema.as_str()),
                (4, crate::ledger::SCHEMA_V2)
            );
            // One that can never fit waits without blocking the queue.
            let mut b = batch("b");
            b.acquires = vec!["huge".into(), "one".into()];
            b.slots = BTreeMap::from([("huge".to_string(), 9)]);
            let out = apply(&Ledger::new(4), &b);
            assert_eq!(
                out.granted
                    .iter()
                    .map(|(h, _)| h.as_str())
                    .collect::<Vec<_>>(),
                vec!["one"]
            );
            assert_eq!(out.waiting, vec!["huge".to_string()]);
        }
    }
}
