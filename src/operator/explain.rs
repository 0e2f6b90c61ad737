//! What the Events tell people about a waiting Job, as pure functions.

use std::collections::BTreeMap;

use crate::ledger::Ledger;

/// The cluster (or other agent) an agent id names: a controller's agent id
/// is `<cluster>/<namespace>/<group>`; `jobgate run` agents have no `/`.
fn owner(agent: &str) -> &str {
    agent.split('/').next().unwrap_or(agent)
}

/// Slots in use and waiting, per cluster, e.g. "in use 3/3 in all clusters
/// (east 2, west 1); waiting elsewhere: west 4".
pub fn usage(ledger: &Ledger, me: &str) -> String {
    let mut in_use: BTreeMap<&str, usize> = BTreeMap::new();
    for h in ledger.holders.values() {
        *in_use.entry(owner(&h.agent)).or_default() += h.slots as usize;
    }
    let per = in_use
        .iter()
        .map(|(who, n)| format!("{who} {n}"))
        .collect::<Vec<_>>()
        .join(", ");
    let mut out = format!(
        "in use {}/{} in all clusters",
        ledger.in_use(),
        ledger.limit
    );
    if !per.is_empty() {
        out.push_str(&format!(" ({per})"));
    }
    let elsewhere: Vec<String> = ledger
        .agents
        .iter()
        .filter(|(id, a)| id.as_str() != me && a.waiting > 0)
        .map(|(id, a)| format!("{} {}", owner(id), a.waiting))
        .collect();
    if !elsewhere.is_empty() {
        out.push_str(&format!("; waiting elsewhere: {}", elsewhere.join(", ")));
    }
    out
}

/// The `Waiting` Event of the Job at `position` (1-based) of `queued` Jobs
/// waiting in this cluster, with the ledger's `usage`.
pub fn waiting(position: usize, queued: usize, usage: &str) -> String {
    format!(
        "waiting for a slot: position {position} of {queued} in this cluster's queue ({} ahead here); {usage}",
        position.saturating_sub(1),
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::{Agent, Holder};

    fn ledger() -> Ledger {
        let mut l = Ledger::new(3);
        for (agent, waiting) in [("east/b/g", 2), ("west/b/g", 4), ("host-1", 0)] {
            l.agents.insert(
                agent.into(),
                Agent {
                    waiting,
                    ..Default::default()
                },
            );
        }
        for (i, agent) in ["east/b/g", "east/b/g", "west/b/g"].iter().enumerate() {
            l.holders.insert(
                format!("h{i}"),
                Holder {
                    agent: agent.to_string(),
                    token: i as u64,
                    granted_seq: 1,
                    granted_at: String::new(),
                    slots: 1,
                },
            );
        }
        l
    }

    #[test]
    fn the_waiting_event_says_how_many_are_ahead_and_who_uses_the_slots() {
        assert_eq!(
            waiting(3, 5, &usage(&ledger(), "east/b/g")),
            "waiting for a slot: position 3 of 5 in this cluster's queue (2 ahead here); in use 3/3 in all clusters (east 2, west 1); waiting elsewhere: west 4"
        );
        assert_eq!(
            usage(&Ledger::new(2), "east/b/g"),
            "in use 0/2 in all clusters"
        );
    }
}
