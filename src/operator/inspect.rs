//! One cluster's view of a group next to its ledger, for `jobgate status
//! GROUP`: the group's status, its Jobs here and what the ledger holds for
//! them, and where the two disagree. Pure, so that what counts as a
//! discrepancy is unit-tested; the reading is in `cli::kube_status`.

use std::collections::BTreeSet;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use serde::Serialize;

use super::crd::{ConcurrencyGroup, ConcurrencyGroupStatus, TOKEN_ANNOTATION};
use super::jobs::job_view;
use crate::ledger::Ledger;

/// Where a Job of the group stands in this cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub enum JobState {
    /// Suspended and not admitted: waits for a slot.
    Waiting,
    /// Admitted by the controller and not finished.
    Admitted,
    /// Running without having been admitted (created unsuspended, not yet
    /// adopted by the controller).
    Unadmitted,
    /// Complete, failed or being deleted.
    Finished,
}

impl JobState {
    pub fn as_str(self) -> &'static str {
        match self {
            JobState::Waiting => "waiting",
            JobState::Admitted => "admitted",
            JobState::Unadmitted => "running unadmitted",
            JobState::Finished => "finished",
        }
    }
}

/// The ledger's holder for a Job's UID.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HeldBy {
    pub agent: String,
    pub token: u64,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct JobRow {
    pub name: String,
    /// The holder id the controller uses for it in the ledger.
    pub uid: String,
    pub state: JobState,
    /// The `jobgate.dev/fencing-token` annotation.
    pub token: Option<String>,
    /// The ledger's holder for `uid`; `None` also when the ledger could not
    /// be read (see [`ClusterView::ledger_read`]).
    pub holder: Option<HeldBy>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum DiscrepancyKind {
    /// A Job admitted here has no holder in the ledger: it runs outside
    /// the limit.
    AdmittedWithoutHolder,
    /// A Job admitted here is held by an agent that is not this cluster's.
    HeldByOtherAgent,
    /// The Job's token annotation is not the token its holder was granted.
    TokenMismatch,
    /// A holder of this cluster's agent whose UID is no Job of the group here.
    HolderWithoutJob,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Discrepancy {
    pub kind: DiscrepancyKind,
    pub message: String,
}

/// How this cluster's agent id in the ledger was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AgentHint {
    /// `--cluster-name`: the controller's own setting.
    ClusterName(String),
    /// The UID of `kube-system`: the controller's default cluster name.
    KubeSystemUid(String),
    /// Neither is known.
    Unknown,
}

#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct ClusterView {
    pub namespace: String,
    pub group: String,
    pub ledger_key: String,
    pub spec_limit: u32,
    /// This cluster's agent ids for the group (usually one; empty when
    /// unknown, which leaves holders without a Job unchecked).
    pub agents: Vec<String>,
    /// How `agents` was found, for humans.
    pub agents_from: String,
    /// The group's status as the controller last wrote it.
    pub status: Option<ConcurrencyGroupStatus>,
    pub jobs: Vec<JobRow>,
    /// Whether the ledger was read; without it nothing is compared.
    pub ledger_read: bool,
    pub discrepancies: Vec<Discrepancy>,
}

fn state(job: &Job) -> Option<(String, JobState)> {
    let v = job_view(job)?;
    let state = if v.finished {
        JobState::Finished
    } else if v.admitted {
        JobState::Admitted
    } else if v.suspended {
        JobState::Waiting
    } else {
        JobState::Unadmitted
    };
    Some((v.uid, state))
}

/// This cluster's agents: the controller's id when the cluster name is
/// known; else the agents that hold slots for Jobs here, which is what the
/// controller was actually called (a Helm install usually sets
/// `clusterName`); else the default cluster name, the kube-system UID.
fn agents(suffix: &str, hint: &AgentHint, held_here: &BTreeSet<String>) -> (Vec<String>, String) {
    match hint {
        AgentHint::ClusterName(name) => (vec![format!("{name}{suffix}")], "--cluster-name".into()),
        _ if !held_here.is_empty() => (
            held_here.iter().cloned().collect(),
            "the holders of this namespace's Jobs".into(),
        ),
        AgentHint::KubeSystemUid(uid) => (
            vec![format!("{uid}{suffix}")],
            "the kube-system namespace UID (the controller's default cluster name)".into(),
        ),
        AgentHint::Unknown => (
            Vec::new(),
            "unknown: pass --cluster-name to check for holders without a Job".into(),
        ),
    }
}

/// Builds the view of `group` from its Jobs here and the ledger (`None`
/// when it could not be read).
pub fn cluster_view(
    group: &ConcurrencyGroup,
    jobs: &[Job],
    ledger: Option<&Ledger>,
    hint: &AgentHint,
) -> ClusterView {
    let namespace = group.namespace().unwrap_or_default();
    let name = group.name_any();
    let suffix = format!("/{namespace}/{name}");
    let mut rows: Vec<(String, JobRow)> = jobs
        .iter()
        .filter_map(|job| {
            let (uid, state) = state(job)?;
            let created = job
                .metadata
                .creation_timestamp
                .as_ref()
                .map(|t| t.0.to_string())
                .unwrap_or_default();
            let holder = ledger.and_then(|l| l.holders.get(&uid)).map(|h| HeldBy {
                agent: h.agent.clone(),
                token: h.token,
            });
            let row = JobRow {
                name: job.name_any(),
                uid,
                state,
                token: job.annotations().get(TOKEN_ANNOTATION).cloned(),
                holder,
            };
            Some((created, row))
        })
        .collect();
    // Oldest first, as the controller admits them (priority aside).
    rows.sort_by(|a, b| (&a.0, &a.1.name).cmp(&(&b.0, &b.1.name)));
    let rows: Vec<JobRow> = rows.into_iter().map(|(_, r)| r).collect();
    let held_here: BTreeSet<String> = rows
        .iter()
        .filter_map(|r| r.holder.as_ref())
        .filter(|h| h.agent.ends_with(&suffix))
        .map(|h| h.agent.clone())
        .collect();
    let (agents, agents_from) = agents(&suffix, hint, &held_here);
    let discrepancies = match ledger {
        Some(ledger) => compare(&rows, ledger, &agents, &namespace),
        None => Vec::new(),
    };
    ClusterView {
        namespace,
        group: name,
        ledger_key: group.ledger_key(),
        spec_limit: group.spec.limit,
        agents,
        agents_from,
        status: group.status.clone(),
        jobs: rows,
        ledger_read: ledger.is_some(),
        discrepancies,
    }
}

fn compare(rows: &[JobRow], ledger: &Ledger, agents: &[String], ns: &str) -> Vec<Discrepancy> {
    let mut out = Vec::new();
    for row in rows.iter().filter(|r| r.state == JobState::Admitted) {
        let name = &row.name;
        let Some(h) = &row.holder else {
            out.push(Discrepancy {
                kind: DiscrepancyKind::AdmittedWithoutHolder,
                message: format!(
                    "Job {name} is admitted here but the ledger has no holder for its UID {}, so it runs outside the limit; the controller suspends it on its next pass unless a slot is free",
                    row.uid
                ),
            });
            continue;
        };
        if !agents.is_empty() && !agents.contains(&h.agent) {
            out.push(Discrepancy {
                kind: DiscrepancyKind::HeldByOtherAgent,
                message: format!(
                    "Job {name} is held by agent {}, not this cluster's ({}); was the controller's --cluster-name changed?",
                    h.agent,
                    agents.join(", ")
                ),
            });
        }
        if let Some(token) = &row.token
            && token.trim() != h.token.to_string()
        {
            out.push(Discrepancy {
                kind: DiscrepancyKind::TokenMismatch,
                message: format!(
                    "Job {name} carries fencing token {token} but its holder was granted {}",
                    h.token
                ),
            });
        }
    }
    let uids: BTreeSet<&str> = rows.iter().map(|r| r.uid.as_str()).collect();
    for (holder, h) in &ledger.holders {
        if agents.contains(&h.agent) && !uids.contains(holder.as_str()) {
            out.push(Discrepancy {
                kind: DiscrepancyKind::HolderWithoutJob,
                message: format!(
                    "holder {holder} of this cluster's agent {} (token {}) is no Job of the group in namespace {ns}; a deleted Job keeps its slot until its pods stop, and `jobgate release` frees one that stays",
                    h.agent, h.token
                ),
            });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Batch, apply};
    use crate::operator::crd::{
        ADMITTED_AT_ANNOTATION, ConcurrencyGroupSpec, ControllerLossPolicy, LeaseLossPolicy,
        LedgerSpec,
    };
    use serde_json::json;
    use std::time::Duration;

    fn group() -> ConcurrencyGroup {
        let mut g = ConcurrencyGroup::new(
            "etl",
            ConcurrencyGroupSpec {
                limit: 2,
                ledger: LedgerSpec {
                    bucket: "b".into(),
                    ..Default::default()
                },
                lease_seconds: 60,
                on_lease_loss: LeaseLossPolicy::Suspend,
                max_grace_period_seconds: 30,
                on_controller_loss: ControllerLossPolicy::Reclaim,
                suspend: false,
            },
        );
        g.metadata.namespace = Some("batch".into());
        g
    }

    /// A Job: `admitted` with a token, else suspended unless `running`.
    fn job(name: &str, uid: &str, token: Option<u64>, running: bool, done: bool) -> Job {
        let mut annotations = serde_json::Map::new();
        if let Some(t) = token {
            annotations.insert(ADMITTED_AT_ANNOTATION.into(), json!("2026-11-27T10:00:00Z"));
            annotations.insert(TOKEN_ANNOTATION.into(), json!(t.to_string()));
        }
        let conditions = if done {
            json!([{"type": "Complete", "status": "True"}])
        } else {
            json!([])
        };
        serde_json::from_value(json!({
            "metadata": {"name": name, "namespace": "batch", "uid": uid,
                         "creationTimestamp": format!("2026-11-27T10:00:0{}Z", &name[name.len() - 1..]),
                         "annotations": annotations},
            "spec": {"suspend": token.is_none() && !running, "template": {}},
            "status": {"conditions": conditions},
        }))
        .unwrap()
    }

    fn ledger(agent: &str, holders: &[&str]) -> Ledger {
        let b = Batch {
            agent: agent.into(),
            lease: Duration::from_secs(60),
            acquires: holders.iter().map(|h| h.to_string()).collect(),
            wall_now: "2026-11-27T10:00:00Z".into(),
            ..Default::default()
        };
        apply(&Ledger::new(2), &b).next.unwrap()
    }

    #[test]
    fn states_holders_and_agreement() {
        let l = ledger("east/batch/etl", &["u1", "u2"]);
        let jobs = [
            job("j3", "u3", None, false, false),
            job("j1", "u1", Some(1), false, false),
            job("j2", "u2", Some(2), false, false),
            job("j4", "u4", None, false, true),
        ];
        let v = cluster_view(&group(), &jobs, Some(&l), &AgentHint::Unknown);
        let states: Vec<_> = v.jobs.iter().map(|r| (r.name.as_str(), r.state)).collect();
        assert_eq!(
            states,
            [
                ("j1", JobState::Admitted),
                ("j2", JobState::Admitted),
                ("j3", JobState::Waiting),
                ("j4", JobState::Finished)
            ]
        );
        assert_eq!(v.agents, ["east/batch/etl"], "inferred from the holders");
        assert_eq!(v.jobs[0].holder.as_ref().map(|h| h.token), Some(1));
        assert!(v.jobs[2].holder.is_none());
        assert!(v.discrepancies.is_empty(), "{:?}", v.discrepancies);
        assert!(v.ledger_read);
    }

    #[test]
    fn an_admitted_job_without_a_holder_and_a_holder_without_a_job_are_flagged() {
        let l = ledger("east/batch/etl", &["u1", "gone"]);
        let jobs = [
            job("j1", "u1", Some(1), false, false),
            job("j2", "u2", Some(7), false, false),
        ];
        let hint = AgentHint::ClusterName("east".into());
        let v = cluster_view(&group(), &jobs, Some(&l), &hint);
        let kinds: Vec<_> = v.discrepancies.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                DiscrepancyKind::AdmittedWithoutHolder,
                DiscrepancyKind::HolderWithoutJob
            ]
        );
        assert!(
            v.discrepancies[0].message.contains("j2"),
            "{:?}",
            v.discrepancies
        );
        assert!(
            v.discrepancies[1].message.contains("gone"),
            "{:?}",
            v.discrepancies
        );
        for d in &v.discrepancies {
            assert!(!d.message.contains('\n'), "{}", d.message);
        }
    }

    #[test]
    fn other_agents_holders_are_not_this_clusters_and_tokens_must_match() {
        // A holder of another cluster is none of this cluster's business.
        let l = ledger("west/batch/etl", &["w1"]);
        let hint = AgentHint::KubeSystemUid("0000-uid".into());
        let v = cluster_view(&group(), &[], Some(&l), &hint);
        assert_eq!(v.agents, ["0000-uid/batch/etl"]);
        assert!(v.discrepancies.is_empty(), "{:?}", v.discrepancies);

        // Admitted here, but by a cluster of another name; token differs.
        let l = ledger("west/batch/etl", &["u1"]);
        let jobs = [job("j1", "u1", Some(9), false, false)];
        let hint = AgentHint::ClusterName("east".into());
        let v = cluster_view(&group(), &jobs, Some(&l), &hint);
        let kinds: Vec<_> = v.discrepancies.iter().map(|d| d.kind).collect();
        assert_eq!(
            kinds,
            [
                DiscrepancyKind::HeldByOtherAgent,
                DiscrepancyKind::TokenMismatch
            ]
        );
    }

    #[test]
    fn without_the_ledger_nothing_is_compared() {
        let jobs = [
            job("j1", "u1", Some(1), false, false),
            job("j2", "u2", None, true, false),
        ];
        let v = cluster_view(&group(), &jobs, None, &AgentHint::Unknown);
        assert!(!v.ledger_read);
        assert!(v.discrepancies.is_empty());
        assert_eq!(v.jobs[1].state, JobState::Unadmitted);
        assert!(v.agents.is_empty());
        assert!(
            v.agents_from.contains("--cluster-name"),
            "{}",
            v.agents_from
        );
    }
}
