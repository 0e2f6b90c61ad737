//! The group's status and conditions, computed purely from what one
//! reconciliation observed, so that they can be unit tested.

use std::time::Duration;

use crate::error::Error as CoreError;
use crate::store::StoreError;

use super::crd::{ConcurrencyGroupStatus, GroupCondition};

/// With kinds gated besides Jobs: whether each is installed.
pub const KINDS_INSTALLED: &str = "KindsInstalled";
pub const READY: &str = "Ready";
pub const LIMIT_AGREED: &str = "LimitAgreed";
pub const JOBS_FIT: &str = "JobsFit";
pub const SUSPENDED: &str = "Suspended";

/// Why the ledger cannot be used, as a condition reason and a message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
}

impl Problem {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Problem {
            reason,
            message: message.into(),
        }
    }

    /// Maps a ledger error to the condition a user can act on.
    pub fn from_ledger(e: &CoreError) -> Problem {
        let reason = match e {
            CoreError::Store(StoreError::AccessDenied(_)) => "CredentialsRejected",
            CoreError::Store(StoreError::NoSuchBucket(_)) => "BucketNotFound",
            CoreError::Store(StoreError::Unsupported(_))
            | CoreError::ConditionalWritesUnsupported(_) => "ConditionalWritesUnsupported",
            CoreError::Ledger { .. } => "LedgerInvalid",
            CoreError::LedgerVanished(_) => "LedgerDeleted",
            CoreError::AgentClaimed { .. } => "DuplicateClusterName",
            CoreError::Store(StoreError::Unavailable(_) | StoreError::Ambiguous(_))
            | CoreError::Exhausted { .. }
            | CoreError::TooManyConflicts(_) => "LedgerUnreachable",
            _ => "LedgerError",
        };
        Problem::new(reason, e.to_string())
    }
}

/// What one reconciliation saw.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Observed {
    pub generation: Option<i64>,
    pub ledger_key: String,
    pub spec_limit: u32,
    /// `None` when the ledger could not be read.
    pub ledger_limit: Option<u32>,
    pub in_use: Option<u32>,
    pub admitted_here: Option<u32>,
    pub waiting_here: Option<u32>,
    pub problem: Option<Problem>,
    /// Jobs not admitted because their pods may take longer to stop than
    /// `maxGracePeriodSeconds`, with the longest grace period asked for.
    pub too_slow_to_stop: Option<(u32, i64)>,
    /// Running Jobs holding a slot whose pods may take longer to stop than
    /// `maxGracePeriodSeconds` (lowered since they were admitted).
    pub held_too_slow: Option<(u32, i64)>,
    pub max_grace_seconds: u32,
    /// Who set the ledger's limit, for people (`limits::describe_source`).
    pub limit_source: Option<String>,
    /// The spec.limit this cluster has written or accepted (`limits::plan`).
    pub spec_limit_applied: Option<u32>,
    /// Admits nothing new: `spec.suspend`.
    pub suspended: bool,
    /// Admits nothing new: being deleted; how many slots it still holds here.
    pub deleting: Option<u32>,
    /// When the ledger behind `in_use` was read (RFC 3339).
    pub ledger_read_at: Option<String>,
    /// With kinds gated besides Jobs: those (as `Kind.group`) that no CRD
    /// serves in this cluster yet; `None` when only Jobs are gated.
    pub kinds_missing: Option<Vec<String>>,
}

pub fn build(
    prev: Option<&ConcurrencyGroupStatus>,
    obs: &Observed,
    now: &str,
) -> ConcurrencyGroupStatus {
    let old = |t: &str| prev.and_then(|s| s.conditions.iter().find(|c| c.type_ == t));
    let condition = |t: &str, ok: bool, reason: &str, message: String| {
        let status = if ok { "True" } else { "False" };
        let since = old(t)
            .filter(|c| c.status == status)
            .map_or_else(|| now.to_string(), |c| c.last_transition_time.clone());
        GroupCondition {
            type_: t.to_string(),
            status: status.to_string(),
            reason: reason.to_string(),
            message,
            last_transition_time: since,
            observed_generation: obs.generation,
        }
    };
    let mut conditions = Vec::new();
    conditions.push(match &obs.problem {
        Some(p) => condition(READY, false, p.reason, p.message.clone()),
        None => condition(
            READY,
            true,
            "LedgerReachable",
            format!("admitting through ledger {}", obs.ledger_key),
        ),
    });
    if let Some(ledger_limit) = obs.ledger_limit {
        conditions.push(if ledger_limit == obs.spec_limit {
            condition(
                LIMIT_AGREED,
                true,
                "LimitMatchesLedger",
                format!("the ledger's limit is {ledger_limit}"),
            )
        } else {
            condition(
                LIMIT_AGREED,
                false,
                "LimitMismatch",
                format!(
                    "spec.limit is {} but the shared ledger's limit is {ledger_limit}, set {}; the ledger's limit applies. To apply another, set spec.limit to a new value or run jobgate limit",
                    obs.spec_limit,
                    obs.limit_source
                        .as_deref()
                        .unwrap_or("by the cluster that created the ledger"),
                ),
            )
        });
    } else if let Some(c) = old(LIMIT_AGREED) {
        // Unknown while the ledger is unreadable: keep the last verdict.
        conditions.push(c.clone());
    }
    if obs.problem.is_none() {
        conditions.push(match obs.too_slow_to_stop {
            Some((n, longest)) => condition(
                JOBS_FIT,
                false,
                "GracePeriodTooLong",
                format!(
                    "{n} Job(s) ask for terminationGracePeriodSeconds up to {longest}, above maxGracePeriodSeconds {}: they are not admitted. Lower their grace period, or raise maxGracePeriodSeconds (and leaseSeconds with it){}",
                    obs.max_grace_seconds,
                    obs.held_too_slow.map_or_else(String::new, |(held, longest)| format!(
                        "; {held} running Job(s) admitted earlier ask for up to {longest} and may outlive a lost lease"
                    )),
                ),
            ),
            None if obs.held_too_slow.is_some() => {
                let (n, longest) = obs.held_too_slow.unwrap_or_default();
                let over = longest - i64::from(obs.max_grace_seconds);
                condition(
                    JOBS_FIT,
                    false,
                    "RunningJobsTooSlowToStop",
                    format!(
                        "{n} running Job(s) admitted before maxGracePeriodSeconds was lowered to {} ask for terminationGracePeriodSeconds up to {longest}: they keep running, but if this cluster cannot renew its lease their pods may outlive it by up to {over} s. Raise maxGracePeriodSeconds back, or let them finish",
                        obs.max_grace_seconds
                    ),
                )
            }
            None => condition(
                JOBS_FIT,
                true,
                "GracePeriodsFit",
                format!(
                    "every Job's pods can stop within maxGracePeriodSeconds {}",
                    obs.max_grace_seconds
                ),
            ),
        });
    } else if let Some(c) = old(JOBS_FIT) {
        conditions.push(c.clone());
    }
    conditions.push(match (obs.deleting, obs.suspended) {
        (Some(held), _) => condition(
            SUSPENDED,
            true,
            "Deleting",
            format!(
                "the group is being deleted: nothing new is admitted; {held} slot(s) held here are given back as their Jobs' pods stop, then the finalizer is removed"
            ),
        ),
        (None, true) => condition(
            SUSPENDED,
            true,
            "SuspendedBySpec",
            "spec.suspend is true: nothing new is admitted; admitted Jobs run on and free their slots as they end".to_string(),
        ),
        (None, false) => condition(
            SUSPENDED,
            false,
            "Admitting",
            "Jobs are admitted as slots free up".to_string(),
        ),
    });
    match &obs.kinds_missing {
        Some(missing) if missing.is_empty() => conditions.push(condition(
            KINDS_INSTALLED,
            true,
            "KindsInstalled",
            "every kind gated here is installed".to_string(),
        )),
        Some(missing) => conditions.push(condition(
            KINDS_INSTALLED,
            false,
            "KindNotInstalled",
            format!(
                "not installed in this cluster (no CRD serves it): {}; none of it can be created yet, and jobgate gates it once it is installed; the other kinds are gated as usual. Install its CRD, or take it out of --workload-kinds (the chart's workloads)",
                missing.join(", ")
            ),
        )),
        None => {}
    }
    let keep = |now: Option<u32>, before: Option<u32>| now.or(before);
    let mut next = ConcurrencyGroupStatus {
        limit: keep(obs.ledger_limit, prev.and_then(|s| s.limit)),
        spec_limit_applied: keep(
            obs.spec_limit_applied,
            prev.and_then(|s| s.spec_limit_applied),
        ),
        in_use: keep(obs.in_use, prev.and_then(|s| s.in_use)),
        admitted_here: keep(obs.admitted_here, prev.and_then(|s| s.admitted_here)),
        waiting_here: keep(obs.waiting_here, prev.and_then(|s| s.waiting_here)),
        ledger_read_time: prev.and_then(|s| s.ledger_read_time.clone()),
        ledger_key: Some(obs.ledger_key.clone()),
        observed_generation: obs.generation,
        conditions,
    };
    if let Some(read_at) = &obs.ledger_read_at
        && read_time_due(prev, &next, read_at)
    {
        next.ledger_read_time = Some(read_at.clone());
    }
    next
}

/// How stale `status.ledgerReadTime` may grow while nothing else in the
/// status changes. Renewing it on every read would write the status on
/// every pass (every `pollWaiting` while Jobs wait), and each write costs a
/// pass more; so the time shown is an upper bound on the counts' age.
pub const READ_TIME_EVERY: Duration = Duration::from_secs(30);

/// Whether a pass whose counts come from a read at `read_at` records it:
/// when the status changes anyway, or the recorded read is
/// `READ_TIME_EVERY` older.
fn read_time_due(
    prev: Option<&ConcurrencyGroupStatus>,
    next: &ConcurrencyGroupStatus,
    read_at: &str,
) -> bool {
    let Some(prev) = prev else { return true };
    if prev != next {
        return true;
    }
    let parse = |t: &str| humantime::parse_rfc3339(t).ok();
    match (
        prev.ledger_read_time.as_deref().and_then(parse),
        parse(read_at),
    ) {
        (Some(then), Some(read)) => read
            .duration_since(then)
            .is_ok_and(|newer| newer >= READ_TIME_EVERY),
        _ => true,
    }
}

/// Counts alone are written at most this often: at depth they change on
/// nearly every pass, and a write each would cost the pass a request, the
/// API server a write, and the group a pass more (its own status change
/// triggers one).
pub const COUNTS_EVERY: Duration = Duration::from_secs(1);

/// Whether the status `next` should be written now (`None`), or only its
/// counts (slots in use, held and waiting) changed since `written` and it
/// waits that long (`Some`). `since` is how long ago this process last
/// wrote the group's status, if it did.
pub fn write_after(
    written: Option<&ConcurrencyGroupStatus>,
    next: &ConcurrencyGroupStatus,
    since: Option<Duration>,
) -> Option<Duration> {
    let without_counts = |s: &ConcurrencyGroupStatus| ConcurrencyGroupStatus {
        in_use: None,
        ledger_read_time: None,
        admitted_here: None,
        waiting_here: None,
        ..s.clone()
    };
    let counts_only = written.is_some_and(|w| without_counts(w) == without_counts(next));
    match since {
        Some(since) if counts_only && since < COUNTS_EVERY => Some(COUNTS_EVERY - since),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
