//! Lease-based leader election (coordination.k8s.io/v1), so that two
//! replicas of the controller never act at once.
//!
//! The rule is client-go's, and the same as `crate::lease`: a candidate takes
//! a lease that someone else holds only after it has watched the lease record
//! stand still for a whole lease duration on its *own* monotonic clock. The
//! wall-clock times written into the Lease are for people reading it; no
//! machine's clock is ever compared with another's. The holder, for its part,
//! calls itself leader only until 2/3 of the lease after it *sent* its last
//! renewal that succeeded. No candidate can have seen that renewal before it
//! was sent, so the holder stops first; the last third absorbs scheduling
//! delays and clocks that run at slightly different rates.
//!
//! Every write carries the resourceVersion that was read, so the API server
//! lets exactly one of several racing candidates win. Identities must be
//! unique per live process (a pod name is): a lease held by our own identity
//! is taken to be held by an earlier run of this process and is taken back at
//! once.

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until, timeout};
use tracing::{debug, info, warn};

/// Where the lease lives, who we are, and how fast the election moves.
#[derive(Debug, Clone)]
pub struct LeaseConfig {
    pub namespace: String,
    pub name: String,
    /// Unique per live process, e.g. the pod name.
    pub identity: String,
    /// How long a candidate watches an unchanged lease before taking it.
    /// Written to the Lease rounded up to whole seconds.
    pub lease_duration: Duration,
    /// Pause between renewals while leading.
    pub renew_interval: Duration,
    /// Pause between attempts while waiting, and after a failed renewal.
    pub retry_interval: Duration,
}

impl LeaseConfig {
    /// client-go's usual timing, with renewals twice per stepping-down
    /// window: a 15 s lease, renewed every 5 s, retried every 2 s.
    pub fn new(
        namespace: impl Into<String>,
        name: impl Into<String>,
        identity: impl Into<String>,
    ) -> LeaseConfig {
        LeaseConfig {
            namespace: namespace.into(),
            name: name.into(),
            identity: identity.into(),
            lease_duration: Duration::from_secs(15),
            renew_interval: Duration::from_secs(5),
            retry_interval: Duration::from_secs(2),
        }
    }

    /// How long after sending a renewal that succeeded we may act as leader.
    fn term(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    fn lease_seconds(&self) -> i32 {
        let d = self.lease_duration;
        let secs = d.as_secs() + u64::from(d.subsec_nanos() > 0);
        i32::try_from(secs).unwrap_or(i32::MAX)
    }

    fn validate(&self) -> Result<(), LeaderError> {
        let bad = |why: &str| Err(LeaderError::Config(why.to_string()));
        if self.name.is_empty() || self.namespace.is_empty() || self.identity.is_empty() {
            return bad("namespace, name and identity must not be empty");
        }
        if self.lease_duration < Duration::from_secs(1) {
            return bad("lease_duration must be at least 1 s");
        }
        if self.renew_interval.is_zero() || self.renew_interval >= self.term() {
            return bad("renew_interval must be positive and under 2/3 of lease_duration");
        }
        if self.retry_interval.is_zero() {
            return bad("retry_interval must be positive");
        }
        Ok(())
    }

    fn describe(&self) -> String {
        format!("{}/{}", self.namespace, self.name)
    }

    fn api_error(&self, source: kube::Error) -> LeaderError {
        LeaderError::Api {
            lease: self.describe(),
            source,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum LeaderError {
    #[error("invalid leader election config: {0}")]
    Config(String),
    #[error("leader election on lease {lease}: {source}")]
    Api {
        lease: String,
        #[source]
        source: kube::Error,
    },
}

/// The parts of a Lease whose change shows that its holder is alive.
#[derive(Debug, Clone, PartialEq, Default)]
struct Record {
    holder: Option<String>,
    renew_time: Option<MicroTime>,
    transitions: Option<i32>,
    duration_seconds: Option<i32>,
}

impl Record {
    fn of(lease: &Lease) -> Record {
        let spec = lease.spec.clone().unwrap_or_default();
        Record {
            holder: spec.holder_identity,
            renew_time: spec.renew_time,
            transitions: spec.lease_transitions,
            duration_seconds: spec.lease_duration_seconds,
        }
    }
}

/// A record and the instant, on our clock, at which we first saw it.
#[derive(Debug, Clone)]
struct SeenRecord {
    record: Record,
    since: Instant,
}

impl SeenRecord {
    /// Call with the instant the read *returned*: a later instant only makes
    /// a takeover later, never earlier.
    fn update(previous: Option<SeenRecord>, record: Record, now: Instant) -> SeenRecord {
        match previous {
            Some(p) if p.record == record => p,
            _ => SeenRecord { record, since: now },
        }
    }
}

/// Whether we may write ourselves into the lease whose record is `observed`.
/// A holder that declares a longer lease than ours gets the longer wait: it
/// only promised to step down within its own.
fn may_take(observed: &SeenRecord, identity: &str, now: Instant, lease_duration: Duration) -> bool {
    match observed.record.holder.as_deref() {
        None | Some("") => true,
        Some(holder) if holder == identity => true,
        Some(_) => {
            let declared = observed
                .record
                .duration_seconds
                .and_then(|s| u64::try_from(s).ok())
                .map(Duration::from_secs)
                .unwrap_or_default();
            now.saturating_duration_since(observed.since) >= lease_duration.max(declared)
        }
    }
}

/// `old` with us as holder; a fresh Lease when `old` is `None`. Renewing
/// our own lease keeps its acquireTime and transition count.
fn claimed(cfg: &LeaseConfig, old: Option<&Lease>) -> Lease {
    let now = MicroTime(Timestamp::now());
    let mut lease = old.cloned().unwrap_or_else(|| Lease {
        metadata: ObjectMeta {
            name: Some(cfg.name.clone()),
            namespace: Some(cfg.namespace.clone()),
            ..ObjectMeta::default()
        },
        spec: None,
    });
    let spec = lease.spec.take().unwrap_or_default();
    let ours = spec.holder_identity.as_deref() == Some(cfg.identity.as_str());
    let transitions = spec.lease_transitions.unwrap_or(0);
    lease.spec = Some(LeaseSpec {
        holder_identity: Some(cfg.identity.clone()),
        lease_duration_seconds: Some(cfg.lease_seconds()),
        acquire_time: match &spec.acquire_time {
            Some(t) if ours => Some(t.clone()),
            _ => Some(now.clone()),
        },
        renew_time: Some(now),
        lease_transitions: Some(if ours || old.is_none() {
            transitions
        } else {
            transitions.saturating_add(1)
        }),
        ..spec
    });
    lease
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn status(e: &kube::Error) -> Option<u16> {
    match e {
        kube::Error::Api(s) => Some(s.code),
        _ => None,
    }
}

/// Rejections that retrying cannot cure (forbidden, malformed); conflicts,
/// throttling and outages are worth waiting out.
fn is_fatal(e: &kube::Error) -> bool {
    matches!(status(e), Some(c) if (400..500).contains(&c) && !matches!(c, 404 | 408 | 409 | 429))
}

/// One look at the lease and, if allowed, one write. `Some` carries the
/// Lease we wrote and the instant just before the write was sent.
async fn try_acquire(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    observed: &mut Option<SeenRecord>,
) -> Result<Option<(Lease, Instant)>, kube::Error> {
    let pp = PostParams::default();
    let Some(current) = api.get_opt(&cfg.name).await? else {
        let sent = Instant::now();
        return match api.create(&pp, &claimed(cfg, None)).await {
            Ok(lease) => Ok(Some((lease, sent))),
            // Another candidate created it first; the next read shows whom.
            Err(e) if status(&e) == Some(409) => Ok(None),
            Err(e) => Err(e),
        };
    };
    let now = Instant::now();
    let seen = SeenRecord::update(observed.take(), Record::of(&current), now);
    let allowed = may_take(&seen, &cfg.identity, now, cfg.lease_duration);
    if !allowed {
        debug!(lease = %cfg.describe(), holder = ?seen.record.holder, "lease held by another");
    }
    *observed = Some(seen);
    if !allowed {
        return Ok(None);
    }
    let sent = Instant::now();
    match api
        .replace(&cfg.name, &pp, &claimed(cfg, Some(&current)))
        .await
    {
        Ok(lease) => Ok(Some((lease, sent))),
        // Someone wrote since our read; they won this round.
        Err(e) if matches!(status(&e), Some(404 | 409)) => Ok(None),
        Err(e) => Err(e),
    }
}

/// Waits until `cfg.identity` holds the lease, creating it if absent.
/// Fails only on a bad config or a request the API server refuses outright
/// (e.g. RBAC forbids it); conflicts and outages are retried.
pub async fn acquire(client: kube::Client, cfg: LeaseConfig) -> Result<Leadership, LeaderError> {
    cfg.validate()?;
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    let mut observed = None;
    info!(lease = %cfg.describe(), identity = %cfg.identity, "waiting to become leader");
    loop {
        // A write that timed out may still have landed; the same-identity
        // rule then lets the next round take the lease back.
        match timeout(cfg.lease_duration, try_acquire(&api, &cfg, &mut observed)).await {
            Ok(Ok(Some((lease, sent)))) => {
                info!(lease = %cfg.describe(), identity = %cfg.identity, "became leader");
                return Ok(Leadership::start(api, cfg, lease, sent));
            }
            Ok(Ok(None)) => {}
            Ok(Err(e)) if is_fatal(&e) => return Err(cfg.api_error(e)),
            Ok(Err(e)) => {
                warn!(lease = %cfg.describe(), error = %e, "leader election attempt failed")
            }
            Err(_) => warn!(lease = %cfg.describe(), "leader election attempt timed out"),
        }
        // Jitter keeps candidates that started together from polling in step.
        sleep(
            cfg.retry_interval
                .mul_f64(1.0 + rand::random::<f64>() * 0.2),
        )
        .await;
    }
}

/// Resolves with the holder's name once the lease names a holder other than
/// `cfg.identity`: another replica has taken over. Read errors (an API
/// server outage) are waited out.
pub async fn taken_by_another(client: kube::Client, cfg: LeaseConfig) -> String {
    let api: Api<Lease> = Api::namespaced(client, &cfg.namespace);
    loop {
        if let Ok(Ok(Some(lease))) = timeout(cfg.lease_duration, api.get_opt(&cfg.name)).await
            && let Some(h) = holder(&lease)
            && h != cfg.identity
        {
            return h.to_string();
        }
        sleep(cfg.retry_interval).await;
    }
}

/// The end of our term: `Some(instant)` while renewals keep succeeding,
/// `None` once we know it is over.
#[derive(Debug)]
struct Term(watch::Receiver<Option<Instant>>);

impl Term {
    fn is_current(&self) -> bool {
        matches!(*self.0.borrow(), Some(until) if Instant::now() < until)
    }

    async fn ended(&mut self) {
        loop {
            let Some(until) = *self.0.borrow_and_update() else {
                return;
            };
            if Instant::now() >= until {
                return;
            }
            tokio::select! {
                _ = sleep_until(until) => {}
                changed = self.0.changed() => {
                    // The renewer is gone without a verdict: the term
                    // still runs out on time.
                    if changed.is_err() {
                        sleep_until(until).await;
                    }
                }
            }
        }
    }
}

/// Holding the lease. Dropping it stops renewing without releasing (as a
/// crash would): a successor then waits out the lease.
#[derive(Debug)]
pub struct Leadership {
    api: Api<Lease>,
    cfg: LeaseConfig,
    term: Term,
    renewer: JoinHandle<()>,
}

impl Leadership {
    fn start(api: Api<Lease>, cfg: LeaseConfig, lease: Lease, sent: Instant) -> Leadership {
        let until = sent + cfg.term();
        let (tx, rx) = watch::channel(Some(until));
        let renewer = tokio::spawn(renew(api.clone(), cfg.clone(), lease, until, tx));
        Leadership {
            api,
            cfg,
            term: Term(rx),
            renewer,
        }
    }

    /// True while it is safe to act as leader. Turns false on time even if
    /// a renewal request hangs.
    pub fn is_leader(&self) -> bool {
        self.term.is_current()
    }

    /// Resolves once we must stop acting as leader: renewals failed for 2/3
    /// of the lease, or someone else holds it.
    pub async fn lost(&mut self) {
        self.term.ended().await;
    }

    /// Graceful hand-over: stop renewing and clear the holder, so that a
    /// successor takes over at its next attempt instead of waiting out the
    /// lease. Stop acting as leader before calling this.
    pub async fn release(mut self) {
        self.renewer.abort();
        // Nothing of ours may be writing while we clear the holder.
        let _ = (&mut self.renewer).await;
        let lease = self.cfg.describe();
        match timeout(self.cfg.lease_duration, give_up(&self.api, &self.cfg)).await {
            Ok(Ok(true)) => info!(%lease, identity = %self.cfg.identity, "released leadership"),
            Ok(Ok(false)) => info!(%lease, "lease no longer ours; nothing to release"),
            Ok(Err(e)) => warn!(%lease, error = %e, "releasing leadership failed"),
            Err(_) => warn!(%lease, "releasing leadership timed out"),
        }
    }
}

impl Drop for Leadership {
    fn drop(&mut self) {
        self.renewer.abort();
    }
}

/// Clears the holder if it is still us. `false`: not ours (any more), or
/// others kept writing; either way nothing is left to do.
async fn give_up(api: &Api<Lease>, cfg: &LeaseConfig) -> Result<bool, kube::Error> {
    // A renewal sent just before the abort can land after our read; its
    // conflict is why this tries more than once.
    for _ in 0..3 {
        let Some(mut lease) = api.get_opt(&cfg.name).await? else {
            return Ok(false);
        };
        if holder(&lease) != Some(cfg.identity.as_str()) {
            return Ok(false);
        }
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.holder_identity = None;
        spec.renew_time = Some(MicroTime(Timestamp::now()));
        match api.replace(&cfg.name, &PostParams::default(), &lease).await {
            Ok(_) => return Ok(true),
            Err(e) if status(&e) == Some(409) => {}
            Err(e) => return Err(e),
        }
    }
    Ok(false)
}

enum Renewal {
    Renewed(Box<Lease>),
    Lost(Option<String>),
}

async fn renew_once(
    api: &Api<Lease>,
    cfg: &LeaseConfig,
    lease: &Lease,
) -> Result<Renewal, kube::Error> {
    let pp = PostParams::default();
    match api
        .replace(&cfg.name, &pp, &claimed(cfg, Some(lease)))
        .await
    {
        Ok(l) => return Ok(Renewal::Renewed(Box::new(l))),
        Err(e) if !matches!(status(&e), Some(404 | 409)) => return Err(e),
        Err(_) => {}
    }
    // Someone wrote or deleted the lease since our last write; only the
    // current record says whether it was a rival.
    let Some(current) = api.get_opt(&cfg.name).await? else {
        return Ok(Renewal::Lost(None));
    };
    match holder(&current) {
        Some(h) if h == cfg.identity => {}
        other => return Ok(Renewal::Lost(other.map(String::from))),
    }
    api.replace(&cfg.name, &pp, &claimed(cfg, Some(&current)))
        .await
        .map(|l| Renewal::Renewed(Box::new(l)))
}

async fn renew(
    api: Api<Lease>,
    cfg: LeaseConfig,
    mut lease: Lease,
    mut until: Instant,
    tx: watch::Sender<Option<Instant>>,
) {
    let name = cfg.describe();
    loop {
        sleep(cfg.renew_interval).await;
        loop {
            let sent = Instant::now();
            if sent >= until {
                warn!(lease = %name, "could not renew in time; stepping down");
                tx.send_replace(None);
                return;
            }
            match timeout(until - sent, renew_once(&api, &cfg, &lease)).await {
                Ok(Ok(Renewal::Renewed(l))) => {
                    lease = *l;
                    until = sent + cfg.term();
                    tx.send_replace(Some(until));
                    debug!(lease = %name, "renewed");
                    break;
                }
                Ok(Ok(Renewal::Lost(by))) => {
                    warn!(lease = %name, holder = ?by, "lease taken over; stepping down");
                    tx.send_replace(None);
                    return;
                }
                Ok(Err(e)) => {
                    warn!(lease = %name, error = %e, "renewal failed; retrying");
                    let left = until.saturating_duration_since(Instant::now());
                    sleep(cfg.retry_interval.min(left)).await;
                }
                // Out of time: the check above steps down.
                Err(_) => {}
            }
        }
    }
}

#[cfg(test)]
mod tests;
