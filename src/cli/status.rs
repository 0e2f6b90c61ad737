//! `jobgate status` and `jobgate release`.

use std::time::SystemTime;

use clap::{Args, ValueEnum};

use super::StoreArgs;
use crate::error::{Error, Result};
use crate::ledger::Ledger;
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
}

#[derive(Debug, Args)]
pub struct ReleaseArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The holder whose slot to free.
    holder: String,
}

pub async fn status(args: StatusArgs) -> Result<u8> {
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
    let mut out = format!(
        "ledger  {url}\nlimit   {}\nin use  {}\nfree    {}\ncommit  {}\n\n",
        l.limit,
        l.in_use(),
        l.free(),
        l.seq
    );
    if l.holders.is_empty() {
        out.push_str("no holders\n");
    } else {
        let mut rows = vec![vec![
            "HOLDER".into(),
            "TOKEN".into(),
            "AGENT".into(),
            "GRANTED".into(),
        ]];
        for (id, h) in &l.holders {
            rows.push(vec![
                id.clone(),
                h.token.to_string(),
                h.agent.clone(),
                age(&h.granted_at, now),
            ]);
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
    }
}
