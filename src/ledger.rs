//! The ledger: the one JSON object per semaphore that every agent reads and
//! changes by compare-and-swap. Format documented in `docs/ledger.md`.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Identifies version 1 of the format. A reader refuses any other value, so an
/// older jobgate never overwrites a newer ledger it does not understand.
pub const SCHEMA_V1: &str = "jobgate.dev/ledger/v1";

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
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holder {
    pub agent: String,
    pub token: u64,
    /// The commit that granted this slot.
    pub granted_seq: u64,
    /// Wall-clock time of the grant, for humans only; never used to decide.
    pub granted_at: String,
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
    /// How many of this agent's holders wait for a slot (as of its last
    /// write). Agents holding more defer to it (see `decide::apply`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub waiting: u32,
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
        "unsupported schema {0:?} (this jobgate reads {SCHEMA_V1:?}); the object was left untouched"
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
        }
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, LedgerError> {
        let value: serde_json::Value =
            serde_json::from_slice(bytes).map_err(|e| LedgerError::NotJson(e.to_string()))?;
        match value.get("schema").and_then(|s| s.as_str()) {
            None => return Err(LedgerError::NoSchema),
            Some(SCHEMA_V1) => {}
            Some(other) => return Err(LedgerError::UnsupportedSchema(other.to_string())),
        }
        let ledger: Ledger =
            serde_json::from_value(value).map_err(|e| LedgerError::Malformed(e.to_string()))?;
        ledger.validate()?;
        Ok(ledger)
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        // Serializing plain structs and maps of strings cannot fail.
        let mut out = serde_json::to_vec_pretty(self).unwrap_or_default();
        out.push(b'\n');
        out
    }

    fn validate(&self) -> Result<(), LedgerError> {
        let bad = |why: String| Err(LedgerError::Malformed(why));
        if self.limit == 0 {
            return bad("limit is 0".into());
        }
        for (id, h) in &self.holders {
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

    pub fn in_use(&self) -> usize {
        self.holders.len()
    }

    pub fn free(&self) -> usize {
        (self.limit as usize).saturating_sub(self.holders.len())
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
            },
        );
        l.next_token = 2;
        assert_eq!(Ledger::parse(&l.to_bytes()), Ok(l));
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
