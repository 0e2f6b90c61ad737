//! The ledger: the one JSON object per semaphore that every agent reads and
//! changes by compare-and-swap. Format documented in `docs/ledger.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifies version 1 of the format. A reader refuses any other value, so an
/// older jobgate never overwrites a newer ledger it does not understand.
pub const SCHEMA_V1: &str = "jobgate.dev/ledger/v1";
/// Version 2: holders may take more than one slot (`slots`). Written only
/// while some holder does, so that older binaries, which would count each
/// holder as one slot and over-admit, refuse the ledger instead; a ledger
/// with one slot per holder stays readable by them.
pub const SCHEMA_V2: &str = "jobgate.dev/ledger/v2";

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ledger {
    pub schema: String,
    /// Incremented by every commit. Makes every body (and so every MD5 ETag)
    /// unique, so an old ETag can never match again.
    pub seq: u64,
    pub limit: u32,
    /// The fencing token the next grant receives; never decreases.
    pub next_token: u64,
    #[serde(default)]
    pub holders: BTreeMap<String, Holder>,
    #[serde(default)]
    pub agents: BTreeMap<String, Agent>,
    /// Who wrote this version (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_by: Option<String>,
    /// Wall-clock time of this version, for humans only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub written_at: Option<String>,
    /// The last deliberate change of `limit`: who made it and from which
    /// spec generation, so that a cluster whose spec disagrees can say who
    /// set the limit in force (`operator::limits` decides from its own
    /// record whether its spec is a new change).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub limit_set: Option<LimitSet>,
}

/// Who set the ledger's limit last, and from what.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LimitSet {
    /// The agent (a controller's `<cluster>/<namespace>/<group>`) or the
    /// person (`jobgate limit` on a host) that set it.
    pub by: String,
    /// The ConcurrencyGroup's `metadata.generation` the limit came from;
    /// absent for a change made with `jobgate limit`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub generation: Option<i64>,
    /// The limit before this change.
    pub previous: u32,
    /// Wall-clock time of the change, for humans only.
    pub at: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub agent: String,
    pub token: u64,
    /// The commit that granted this slot.
    pub granted_seq: u64,
    /// Wall-clock time of the grant, for humans only; never used to decide.
    pub granted_at: String,
    /// How many units of the limit this holder takes (`jobgate.dev/slots`).
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub slots: u32,
}

fn one() -> u32 {
    1
}

fn is_one(n: &u32) -> bool {
    *n == 1
}

#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Agent {
    /// Bumped by every commit of this agent. Others expire the agent only after
    /// watching this counter stand still for `lease_ms` on their own clock.
    pub renewals: u64,
    pub lease_ms: u64,
    /// Wall-clock time of the last renewal, for humans only; never used to decide.
    pub renewed_at: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub description: Option<String>,
    /// How many units of the limit this agent's waiting holders ask for (as
    /// of its last write). Agents holding more defer to it (see
    /// `decide::apply`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waiting: u32,
    /// Who writes as this agent, where its id alone may not tell: a
    /// controller's cluster (the UID of its `kube-system` namespace), since
    /// two clusters can be given the same cluster name. Another writer
    /// finding it different writes nothing (see `decide::apply`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum LedgerError {
    #[error("not valid JSON ({0}); the object was left untouched")]
    NotJson(String),
    #[error("not a jobgate ledger (no \"schema\" field); the object was left untouched")]
    NoSchema,
    #[error(
        "unsupported schema {0:?} (this jobgate reads {SCHEMA_V1:?} and {SCHEMA_V2:?}); the object was left untouched"
    )]
    UnsupportedSchema(String),
    #[error("malformed ledger ({0}); the object was left untouched")]
    Malformed(String),
}

impl Ledger {
    pub fn new(limit: u32) -> Self {
        Ledger {
            schema: SCHEMA_V1.to_string(),
            seq: 0,
            limit,
            next_token: 1,
            holders: BTreeMap::new(),
            agents: BTreeMap::new(),
            written_by: None,
            written_at: None,
            limit_set: None,
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, LedgerError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| LedgerError::NotJson(e.to_string()))?;
        match value.get("schema").and_then(|s| s.as_str()) {
            None => return Err(LedgerError::NoSchema),
            Some(SCHEMA_V1 | SCHEMA_V2) => {}
            Some(other) => return Err(LedgerError::UnsupportedSchema(other.to_string())),
        }
        let ledger: Ledger =
            serde_json::from_value(value).map_err(|e| LedgerError::Malformed(e.to_string()))?;
        ledger.validate()?;
        Ok(ledger)
    }

    /// The oldest schema that can express this ledger.
    pub fn schema_needed(&self) -> &'static str {
        if self.holders.values().any(|h| h.slots > 1) {
            SCHEMA_V2
        } else {
            SCHEMA_V1
        }
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut this = self.clone();
        this.schema = self.schema_needed().to_string();
        // Serializing plain structs and maps of strings cannot fail.
        let mut out = serde_json::to_vec_pretty(&this).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn validate(&self) -> Result<(), LedgerError> {
        let bad = |why: String| Err(LedgerError::Malformed(why));
        if self.limit == 0 {
            return bad("limit is 0".into());
        }
        for (id, h) in &self.holders {
            if h.slots == 0 {
                return bad(format!("holder {id:?} takes 0 slots"));
            }
            if h.slots > 1 && self.schema == SCHEMA_V1 {
                return bad(format!(
                    "holder {id:?} takes {} slots, which schema {SCHEMA_V1:?} cannot express",
                    h.slots
                ));
            }
            if h.token >= self.next_token {
                return bad(format!(
                    "holder {id:?} has token {} but next_token is {}",
                    h.token, self.next_token
                ));
            }
            if !self.agents.contains_key(&h.agent) {
                return bad(format!("holder {id:?} names unknown agent {:?}", h.agent));
            }
        }
        Ok(())
    }

    /// Units of the limit in use: each holder's `slots`, summed.
    pub fn in_use(&self) -> usize {
        self.holders.values().map(|h| h.slots as usize).sum()
    }

    pub fn free(&self) -> usize {
        (self.limit as usize).saturating_sub(self.in_use())
    }

    /// Units of the limit `agent`'s holders take.
    pub fn used_by(&self, agent: &str) -> usize {
        self.holders
            .values()
            .filter(|h| h.agent == agent)
            .map(|h| h.slots as usize)
            .sum()
    }

    pub fn holders_of<'a>(&'a self, agent: &'a str) -> impl Iterator<Item = &'a String> + 'a {
        self.holders
            .iter()
            .filter(move |(_, h)| h.agent == agent)
            .map(|(id, _)| id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips() {
        let mut l = Ledger::new(3);
        l.agents.insert(
            "a".into(),
            Agent {
                renewals: 1,
                lease_ms: 1000,
                renewed_at: "t".into(),
                ..Default::default()
            },
        );
        l.holders.insert(
            "h".into(),
            Holder {
                agent: "a".into(),
                token: 1,
                granted_seq: 1,
                granted_at: "t".into(),
                slots: 1,
            },
        );
        l.next_token = 2;
        assert_eq!(Ledger::parse(&l.to_bytes()), Ok(l));
    }

    #[test]
    fn weighted_holders_make_a_v2_ledger_that_v1_readers_refuse() {
        let mut l = Ledger::new(5);
        l.agents.insert("a".into(), Agent::default());
        let holder = |slots| Holder {
            agent: "a".into(),
            token: 1,
            granted_seq: 1,
            granted_at: "t".into(),
            slots,
        };
        l.holders.insert("h".into(), holder(1));
        l.next_token = 2;
        let text = String::from_utf8(l.to_bytes()).unwrap();
        assert!(
            text.contains(SCHEMA_V1) && !text.contains("slots"),
            "{text}"
        );
        l.holders.insert("h".into(), holder(4));
        let text = String::from_utf8(l.to_bytes()).unwrap();
        assert!(
            text.contains(SCHEMA_V2) && text.contains("\"slots\": 4"),
            "{text}"
        );
        let back = Ledger::parse(text.as_bytes()).unwrap();
        assert_eq!((back.in_use(), back.free(), back.used_by("a")), (4, 1, 4));
        // What a v1-only reader does with it: refuse, naming the schema.
        let v1_reader = |bytes: &[u8]| {
            let v: serde_json::Value = serde_json::from_slice(bytes).unwrap();
            v["schema"] == SCHEMA_V1
        };
        assert!(!v1_reader(text.as_bytes()));
        // Back to one slot each: readable by v1 readers again.
        l.holders.insert("h".into(), holder(1));
        assert!(v1_reader(&l.to_bytes()));
        // A v1 ledger cannot carry weights.
        let bad = text.replace(SCHEMA_V2, SCHEMA_V1);
        assert!(matches!(
            Ledger::parse(bad.as_bytes()),
            Err(LedgerError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_garbage_and_foreign_schemas() {
        assert!(matches!(
            Ledger::parse(b"{\"count\": 3"),
            Err(LedgerError::NotJson(_))
        ));
        assert_eq!(Ledger::parse(b"{\"count\": 3}"), Err(LedgerError::NoSchema));
        assert_eq!(
            Ledger::parse(b"{\"schema\": \"jobgate.dev/ledger/v9\"}"),
            Err(LedgerError::UnsupportedSchema(
                "jobgate.dev/ledger/v9".into()
            ))
        );
        let zero = br#"{"schema":"jobgate.dev/ledger/v1","seq":1,"limit":0,"next_token":1}"#;
        assert!(matches!(
            Ledger::parse(zero),
            Err(LedgerError::Malformed(_))
        ));
    }

    #[test]
    fn rejects_holder_of_unknown_agent() {
        let text = br#"{"schema":"jobgate.dev/ledger/v1","seq":1,"limit":2,"next_token":5,
            "holders":{"h":{"agent":"ghost","token":1,"granted_seq":1,"granted_at":""}}}"#;
        assert!(matches!(
            Ledger::parse(text),
            Err(LedgerError::Malformed(_))
        ));
    }
}
