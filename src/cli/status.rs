//! `jobgate status` and `jobgate release`.

use std::time::SystemTime;

use clap::{Args, ValueEnum};

use super::StoreArgs;
use super::kube_status::{self, GroupStatus, KubeArgs};
use crate::error::{Error, Result};
use crate::ledger::Ledger;
use crate::operator::inspect::{ClusterView, JobRow};
use crate::semaphore::{read_ledger, release_by_hand};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Output {
    Table,
    Json,
}

#[derive(Debug, Args)]
pub struct StatusArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    output: Output,
    /// A ConcurrencyGroup: its ledger (from the group's spec; --ledger is
    /// not used) next to this cluster's view of it, its status and Jobs.
    #[arg(value_name = "GROUP")]
    group: Option<String>,
    #[command(flatten)]
    kube: KubeArgs,
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The holder whose slot to free.
    holder: String,
}

pub async fn status(args: StatusArgs) -> Result<u8> {
    if let Some(group) = &args.group {
        let found = kube_status::read(&args.kube, &args.store, group).await?;
        return group_status(found, args.output);
    }
    let (store, url) = args.store.open().await?;
    let (ledger, _) = read_ledger(&store, url.key())
        .await?
        .ok_or_else(|| Error::LedgerMissing(url.to_string()))?;
    match args.output {
        Output::Json => print!("{}", String::from_utf8_lossy(&ledger.to_bytes())),
        Output::Table => print!("{}", render(&url.to_string(), &ledger, SystemTime::now())),
    }
    Ok(0)
}

/// Prints the ledger and the cluster's view; a ledger that could not be
/// read is the command's error, after the view that may explain it.
fn group_status(found: GroupStatus, output: Output) -> Result<u8> {
    let GroupStatus { url, ledger, view } = found;
    match output {
        Output::Json => {
            let doc = serde_json::json!({
                "ledgerUrl": url,
                "ledger": ledger.as_ref().ok(),
                "ledgerError": ledger.as_ref().err(),
                "cluster": view,
            });
            let text = serde_json::to_string_pretty(&doc)
                .map_err(|e| Error::Io(format!("rendering JSON: {e}")))?;
            println!("{text}");
        }
        Output::Table => {
            match &ledger {
                Ok(l) => print!("{}", render(&url, l, SystemTime::now())),
                Err(_) => println!("ledger  {url} (not read)"),
            }
            println!();
            print!("{}", render_cluster(&view));
        }
    }
    match ledger {
        Ok(_) => Ok(0),
        Err(e) => Err(Error::InvalidArgument(e)),
    }
}

pub async fn release(args: ReleaseArgs) -> Result<u8> {
    let (store, url) = args.store.open().await?;
    if release_by_hand(&store, url.key(), &args.holder).await? {
        println!("released {}", args.holder);
        Ok(0)
    } else {
        eprintln!("jobgate: {} holds no slot in {url}", args.holder);
        Ok(1)
    }
}

/// "12s ago" from a stored wall-clock label; for humans, never for decisions.
fn age(label: &str, now: SystemTime) -> String {
    humantime::parse_rfc3339_weak(label)
        .ok()
        .and_then(|t| now.duration_since(t).ok())
        .map(|d| {
            format!(
                "{} ago",
                humantime::format_duration(std::time::Duration::from_secs(d.as_secs()))
            )
        })
        .unwrap_or_else(|| "?".to_string())
}

fn table(rows: Vec<Vec<String>>) -> String {
    let cols = rows.first().map(|r| r.len()).unwrap_or(0);
    let widths: Vec<usize> = (0..cols)
        .map(|c| rows.iter().map(|r| r[c].chars().count()).max().unwrap_or(0))
        .collect();
    let mut out = String::new();
    for row in rows {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(cell, w)| format!("{cell:<w$}"))
            .collect();
        out.push_str(line.join("  ").trim_end());
        out.push('\n');
    }
    out
}

pub fn render(url: &str, l: &Ledger, now: SystemTime) -> String {
    let limit = match &l.limit_set {
        Some(_) => format!(
            "{} (set {})",
            l.limit,
            crate::operator::limits::describe_source(l.limit_set.as_ref())
        ),
        None => l.limit.to_string(),
    };
    let mut out = format!(
        "ledger  {url}\nlimit   {limit}\nin use  {}\nfree    {}\ncommit  {}\n\n",
        l.in_use(),
        l.free(),
        l.seq
    );
    if l.holders.is_empty() {
        out.push_str("no holders\n");
    } else {
        // The SLOTS column only when some holder takes more than one.
        let weighted = l.holders.values().any(|h| h.slots > 1);
        let mut header = vec!["HOLDER".to_string(), "TOKEN".into()];
        if weighted {
            header.push("SLOTS".into());
        }
        header.extend(["AGENT".to_string(), "GRANTED".into()]);
        let mut rows = vec![header];
        for (id, h) in &l.holders {
            let mut row = vec![id.clone(), h.token.to_string()];
            if weighted {
                row.push(h.slots.to_string());
            }
            row.extend([h.agent.clone(), age(&h.granted_at, now)]);
            rows.push(row);
        }
        out.push_str(&table(rows));
    }
    if !l.agents.is_empty() {
        out.push('\n');
        let mut rows = vec![vec![
            "AGENT".into(),
            "HOLDERS".into(),
            "RENEWALS".into(),
            "LEASE".into(),
            "LAST RENEWAL".into(),
            "DESCRIPTION".into(),
        ]];
        for (id, a) in &l.agents {
            rows.push(vec![
                id.clone(),
                l.holders_of(id).count().to_string(),
                a.renewals.to_string(),
                humantime::format_duration(std::time::Duration::from_millis(a.lease_ms))
                    .to_string(),
                age(&a.renewed_at, now),
                a.description.clone().unwrap_or_default(),
            ]);
        }
        out.push_str(&table(rows));
    }
    out
}

fn holder_cell(row: &JobRow, view: &ClusterView) -> String {
    if !view.ledger_read {
        return "?".into();
    }
    match &row.holder {
        None => "no".into(),
        Some(h) if view.agents.is_empty() || view.agents.contains(&h.agent) => {
            format!("yes (token {})", h.token)
        }
        Some(h) => format!("yes (token {}, agent {})", h.token, h.agent),
    }
}

/// This cluster's side of `jobgate status GROUP`: the group's status as the
/// controller last wrote it, its Jobs here with their holders in the ledger,
/// and the discrepancies between the two.
pub fn render_cluster(v: &ClusterView) -> String {
    let count = |n: Option<u32>| n.map_or_else(|| "?".to_string(), |n| n.to_string());
    let mut out = format!(
        "group     {}/{}\nagent     {} (from {})\n",
        v.namespace,
        v.group,
        if v.agents.is_empty() {
            "?".to_string()
        } else {
            v.agents.join(", ")
        },
        v.agents_from
    );
    match &v.status {
        None => out.push_str(
            "status    none yet: no controller has reconciled this group (is one running?)\n",
        ),
        Some(s) => {
            let limit = match s.limit {
                Some(l) if l != v.spec_limit => format!("{l} (spec.limit {})", v.spec_limit),
                other => count(other),
            };
            out.push_str(&format!(
                "limit     {limit}\nin use    {} in all clusters\nhere      {} admitted, {} waiting\n",
                count(s.in_use),
                count(s.admitted_here),
                count(s.waiting_here),
            ));
            if !s.conditions.is_empty() {
                out.push('\n');
                let mut rows = vec![vec![
                    "CONDITION".into(),
                    "STATUS".into(),
                    "REASON".into(),
                    "MESSAGE".into(),
                ]];
                for c in &s.conditions {
                    rows.push(vec![
                        c.type_.clone(),
                        c.status.clone(),
                        c.reason.clone(),
                        c.message.clone(),
                    ]);
                }
                out.push_str(&table(rows));
            }
        }
    }
    out.push('\n');
    if v.jobs.is_empty() {
        out.push_str(&format!(
            "no Jobs of the group in namespace {}\n",
            v.namespace
        ));
    } else {
        let mut rows = vec![vec![
            "JOB".into(),
            "STATE".into(),
            "TOKEN".into(),
            "HOLDER".into(),
        ]];
        for j in &v.jobs {
            rows.push(vec![
                j.name.clone(),
                j.state.as_str().into(),
                j.token.clone().unwrap_or_else(|| "-".into()),
                holder_cell(j, v),
            ]);
        }
        out.push_str(&table(rows));
    }
    if v.ledger_read {
        out.push('\n');
        if v.discrepancies.is_empty() {
            out.push_str("no discrepancies between this cluster and the ledger\n");
        } else {
            out.push_str("DISCREPANCIES\n");
            for d in &v.discrepancies {
                out.push_str(&format!("- {}\n", d.message));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::decide::{Batch, apply};
    use std::time::Duration;

    #[test]
    fn renders_holders_and_agents() {
        let now = SystemTime::now();
        let label = humantime::format_rfc3339_seconds(now - Duration::from_secs(65)).to_string();
        let b = Batch {
            agent: "host-1".into(),
            lease: Duration::from_secs(30),
            acquires: vec!["etl-1".into()],
            wall_now: label,
            ..Default::default()
        };
        let l = apply(&Ledger::new(3), &b).next.unwrap();
        let text = render("file:///x.json", &l, now);
        assert!(text.contains("limit   3"), "{text}");
        assert!(text.contains("in use  1"), "{text}");
        assert!(text.contains("etl-1"), "{text}");
        assert!(text.contains("1m 5s ago"), "{text}");
        assert!(text.contains("30s"), "{text}");
        assert!(!text.contains("SLOTS"), "{text}");
    }

    #[test]
    fn renders_weighted_holders_and_who_set_the_limit() {
        let b = Batch {
            agent: "host-1".into(),
            lease: Duration::from_secs(30),
            acquires: vec!["big".into(), "small".into()],
            slots: [("big".to_string(), 3)].into(),
            set_limit: Some(crate::decide::LimitChange {
                limit: 5,
                by: "jobgate-limit@ops".into(),
                generation: None,
            }),
            wall_now: "2026-11-27T10:00:00Z".into(),
            ..Default::default()
        };
        let l = apply(&Ledger::new(3), &b).next.unwrap();
        let text = render("s3://b/k", &l, SystemTime::now());
        assert!(
            text.contains("limit   5 (set by jobgate-limit@ops at 2026-11-27T10:00:00Z (was 3))"),
            "{text}"
        );
        assert!(
            text.contains("in use  4") && text.contains("free    1"),
            "{text}"
        );
        assert!(text.contains("SLOTS"), "{text}");
        let big = text
            .lines()
            .find(|l| l.starts_with("big"))
            .unwrap_or_default();
        assert!(big.split_whitespace().nth(2) == Some("3"), "{text}");
    }

    fn view() -> ClusterView {
        use crate::operator::crd::{ConcurrencyGroupStatus, GroupCondition};
        use crate::operator::inspect::{Discrepancy, DiscrepancyKind, HeldBy, JobState};
        let row = |name: &str, state, token: Option<u64>| JobRow {
            name: name.into(),
            uid: format!("uid-{name}"),
            state,
            token: token.map(|t| t.to_string()),
            holder: token.map(|t| HeldBy {
                agent: "east/batch/etl".into(),
                token: t,
            }),
        };
        let mut v = ClusterView {
            namespace: "batch".into(),
            group: "etl".into(),
            ledger_key: "jobgate/batch/etl.json".into(),
            spec_limit: 3,
            agents: vec!["east/batch/etl".into()],
            agents_from: "--cluster-name".into(),
            status: Some(ConcurrencyGroupStatus {
                limit: Some(2),
                in_use: Some(2),
                admitted_here: Some(2),
                waiting_here: Some(1),
                conditions: vec![GroupCondition {
                    type_: "Ready".into(),
                    status: "True".into(),
                    reason: "LedgerReachable".into(),
                    message: "admitting through ledger jobgate/batch/etl.json".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            jobs: vec![
                row("job-0", JobState::Admitted, Some(1)),
                row("job-1", JobState::Admitted, Some(2)),
                row("job-2", JobState::Waiting, None),
            ],
            ledger_read: true,
            discrepancies: vec![],
        };
        v.discrepancies.push(Discrepancy {
            kind: DiscrepancyKind::HolderWithoutJob,
            message: "holder uid-x of this cluster's agent east/batch/etl (token 7) is no Job"
                .into(),
        });
        v
    }

    #[test]
    fn renders_the_clusters_view_with_holders_and_discrepancies() {
        let text = render_cluster(&view());
        let line = |start: &str| {
            text.lines()
                .find(|l| l.starts_with(start))
                .unwrap_or_else(|| panic!("no line {start:?} in\n{text}"))
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ")
        };
        assert_eq!(line("group"), "group batch/etl");
        assert_eq!(line("limit"), "limit 2 (spec.limit 3)");
        assert_eq!(line("in use"), "in use 2 in all clusters");
        assert_eq!(line("here"), "here 2 admitted, 1 waiting");
        assert_eq!(
            line("Ready"),
            "Ready True LedgerReachable admitting through ledger jobgate/batch/etl.json"
        );
        assert_eq!(line("job-0"), "job-0 admitted 1 yes (token 1)");
        assert_eq!(line("job-2"), "job-2 waiting - no");
        assert!(text.contains("DISCREPANCIES\n- holder uid-x"), "{text}");
    }

    #[test]
    fn without_a_ledger_or_a_status_it_says_so() {
        let mut v = view();
        v.ledger_read = false;
        v.discrepancies.clear();
        v.status = None;
        let text = render_cluster(&v);
        assert!(text.contains("status    none yet"), "{text}");
        assert!(text.contains("job-0  admitted  1      ?"), "{text}");
        assert!(!text.contains("discrepancies"), "{text}");
    }
}
