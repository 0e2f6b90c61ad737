//! The semaphore client. One background task per client owns the cached
//! ledger and turns every request that arrives while a write is in flight into
//! the next single conditional write (group commit).
//!
//! Failure handling, in one place: a lost race (412/409, or 404 on If-Match)
//! and an unknown outcome (timeout, 5xx, dropped connection) are both handled
//! by re-reading the ledger and re-applying the pending batch. Applying is
//! idempotent (see `decide::apply`), so a write that did land is recognised by
//! finding its effects, never guessed from an error code.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{mpsc, oneshot, watch};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, sleep_until};
use tracing::{debug, info, warn};

use crate::clock::{self, Clocks, Reading, SystemClocks};
use crate::decide::{self, Batch, LimitChange, Outcome};
use crate::error::{Error, Result};
use crate::lease::{Observations, self_fence_after};
use crate::ledger::Ledger;
use crate::store::{Condition, DynStore, ETag, Fetched, StoreError};

#[derive(Debug, Clone)]
pub struct Config {
    /// This process's agent id; unique among everyone sharing the ledger.
    pub agent: String,
    /// Shown in `jobgate status` (host, pid, ...).
    pub description: Option<String>,
    /// How long others wait after our last observed renewal before evicting us.
    pub lease: Duration,
    /// The limit used when the ledger does not exist yet. `None`: never create.
    pub limit: Option<u32>,
    /// How often waiters re-read the ledger to notice slots freed elsewhere.
    pub poll: Duration,
    /// Batch concurrent requests into one write. Off only for comparison.
    pub group_commit: bool,
    /// Consecutive store errors (not lost races) before pending requests fail.
    pub max_errors: u32,
    /// Free holders of this agent that nobody here holds or waits for (left
    /// by a grant whose caller had already been told it failed). Off for
    /// agents that keep holders across restarts, such as the controller.
    pub release_orphans: bool,
    /// When this agent treats its slots as lost after its last renewal known
    /// to have landed. `None`: 60% of the lease. Earlier leaves more of the
    /// lease for the work to stop (the operator keeps room for pods' grace
    /// periods); renewals then come at least three times per fence period.
    pub fence_after: Option<Duration>,
    /// Record this agent's waiting holders in the ledger, so that agents
    /// holding more slots leave free ones to it. Costs a write when waiting
    /// starts and renewals while it lasts. For agents that hold many slots
    /// at once and compete with others like them (the operator); agents that
    /// hold one slot each (`jobgate run`) cannot monopolise and leave it off.
    pub record_wait: bool,
    /// Without `record_wait`: record the wait anyway once a holder has
    /// waited this long. Agents that record waits (the operator) release and
    /// re-acquire in one write, so a waiter they cannot see could otherwise
    /// wait for ever; a long wait costs a few writes, a short one nothing.
    pub record_wait_after: Option<Duration>,
    /// Who this agent is beyond its id, where the id alone may not be
    /// unique (a controller's cluster UID): a client that finds its agent's
    /// entry naming another writes nothing until that one has stood still
    /// for its lease.
    pub instance: Option<String>,
    /// Where time is read beyond the monotonic clock, to notice a suspend
    /// or a paused VM (see [`crate::clock`]).
    pub clocks: Arc<dyn Clocks>,
}

impl Config {
    pub fn new(agent: impl Into<String>) -> Self {
        Config {
            agent: agent.into(),
            description: None,
            lease: Duration::from_secs(30),
            limit: None,
            poll: Duration::from_secs(1),
            group_commit: true,
            max_errors: 8,
            release_orphans: true,
            fence_after: None,
            record_wait: false,
            record_wait_after: None,
            instance: None,
            clocks: Arc::new(SystemClocks::default()),
        }
    }
}

/// Counters of what the client did; read by benchmarks and metrics.
#[derive(Debug, Default)]
pub struct Stats {
    pub commits: AtomicU64,
    pub conflicts: AtomicU64,
    pub ambiguous: AtomicU64,
    pub grants: AtomicU64,
    pub evictions: AtomicU64,
}

/// A granted slot. Watch `lost()` to learn that it can no longer be trusted
/// (renewals failed for too long, or the holder vanished from the ledger).
/// Clones watch the same slot; dropping a permit does not release it.
#[derive(Debug, Clone)]
pub struct Permit {
    pub holder: String,
    pub token: u64,
    lost: watch::Receiver<bool>,
}

impl Permit {
    pub fn is_lost(&self) -> bool {
        *self.lost.borrow()
    }

    /// Resolves once the slot is lost; never resolves while it is held.
    pub async fn lost(&mut self) {
        if self.lost.wait_for(|lost| *lost).await.is_err() {
            // The client shut down: nobody renews the lease any more.
        }
    }
}

enum Request {
    Acquire {
        holder: String,
        /// Units of the limit it takes.
        slots: u32,
        wait: bool,
        reply: oneshot::Sender<Result<Option<Permit>>>,
    },
    Release {
        holder: String,
        reply: Option<oneshot::Sender<Result<()>>>,
    },
    Snapshot {
        reply: oneshot::Sender<Result<Ledger>>,
    },
    /// Requests that must join the same batch, in this order.
    Many(Vec<Request>),
    /// Units wanted by holders that wait behind this batch's acquires
    /// without being asked for (see `Batch::waiting_behind`).
    WaitingBehind(u32),
    /// Nothing of ours waits any more: clear our recorded wait.
    WithdrawWait,
    SetLimit {
        change: LimitChange,
        reply: oneshot::Sender<Result<Ledger>>,
    },
    /// Remove our agent entry (we hold and want nothing), then reply.
    Leave {
        reply: oneshot::Sender<Result<Ledger>>,
    },
}

pub struct Semaphore {
    tx: mpsc::UnboundedSender<Request>,
    task: JoinHandle<()>,
    stats: Arc<Stats>,
    lease: watch::Receiver<Option<Lease>>,
    known: watch::Receiver<Option<Known>>,
}

/// The lease on the slots this client holds, on this process's monotonic
/// clock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Lease {
    /// Send time of the last renewal known to have landed.
    pub renewed: Instant,
    /// When the slots stop being safe unless a renewal lands first.
    pub safe_until: Instant,
}

/// The ledger as this client last read or wrote it, and when.
#[derive(Debug, Clone)]
pub struct Known {
    pub ledger: Ledger,
    pub at: Instant,
}

impl Semaphore {
    pub fn new(store: DynStore, key: impl Into<String>, config: Config) -> Self {
        let (tx, rx) = mpsc::unbounded_channel();
        let stats = Arc::new(Stats::default());
        let (lease_tx, lease) = watch::channel(None);
        let (known_tx, known) = watch::channel(None);
        let clock_origin = config.clocks.read();
        let committer = Committer {
            clock_origin,
            missed_at_renewal: Duration::ZERO,
            store,
            key: key.into(),
            cfg: config,
            rx,
            cache: None,
            obs: Observations::default(),
            waiting: VecDeque::new(),
            releasing: Vec::new(),
            snapshots: Vec::new(),
            limit_changes: Vec::new(),
            leaving: Vec::new(),
            held: BTreeMap::new(),
            last_renewal_sent: None,
            inflight: None,
            last_refresh: None,
            warned_limit: false,
            withdraw: false,
            waiting_behind: 0,
            last_acquire: None,
            high_water: None,
            wrote: false,
            refused_creates: 0,
            stats: stats.clone(),
            lease: lease_tx,
            known: known_tx,
        };
        let task = tokio::spawn(committer.run());
        Semaphore {
            tx,
            task,
            stats,
            lease,
            known,
        }
    }

    /// While this client holds slots: when they stop being safe unless a
    /// renewal lands first (the send time of the last renewal known to have
    /// landed plus the fence period), on this process's monotonic clock.
    /// `None` while it holds none.
    pub fn safe_until(&self) -> Option<Instant> {
        self.lease().map(|l| l.safe_until)
    }

    /// The lease on the slots held, for health metrics; `None` while this
    /// client holds none.
    pub fn lease(&self) -> Option<Lease> {
        *self.lease.borrow()
    }

    pub fn stats(&self) -> &Arc<Stats> {
        &self.stats
    }

    /// Waits for a slot for `holder`. Idempotent: asking again for a holder
    /// this agent already holds returns the same token. Cancel by dropping
    /// the future (e.g. with `tokio::time::timeout`).
    pub async fn acquire(&self, holder: &str) -> Result<Permit> {
        self.acquire_slots(holder, 1).await
    }

    /// Waits until `slots` units of the limit are free for `holder`.
    pub async fn acquire_slots(&self, holder: &str, slots: u32) -> Result<Permit> {
        self.acquire_inner(holder, slots, true)
            .await?
            .ok_or(Error::Closed)
    }

    /// Takes a slot if one is free now; `None` if not.
    pub async fn try_acquire(&self, holder: &str) -> Result<Option<Permit>> {
        self.acquire_inner(holder, 1, false).await
    }

    async fn acquire_inner(&self, holder: &str, slots: u32, wait: bool) -> Result<Option<Permit>> {
        if slots == 0 {
            return Err(Error::InvalidLimit(0));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::Acquire {
            holder: holder.to_string(),
            slots,
            wait,
            reply,
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Frees `releases` and takes slots for `acquires` (holders with the
    /// units each takes; strictly in order, without waiting) in one batch,
    /// so in one ledger write when anything changes. One answer per
    /// acquire, in order.
    pub async fn release_and_try_acquire(
        &self,
        releases: &[String],
        acquires: &[(String, u32)],
    ) -> Result<Vec<Result<Option<Permit>>>> {
        self.release_and_try_acquire_ahead_of(releases, acquires, 0)
            .await
    }

    /// [`Self::release_and_try_acquire`] for a caller whose holders that
    /// wait are many more than could be granted: `acquires` are the first
    /// of them in order, and `waiting_behind` the units the others want.
    /// They are recorded as waiting as if asked (see
    /// `Batch::waiting_behind`), without a request each.
    pub async fn release_and_try_acquire_ahead_of(
        &self,
        releases: &[String],
        acquires: &[(String, u32)],
        waiting_behind: u32,
    ) -> Result<Vec<Result<Option<Permit>>>> {
        let mut requests = Vec::new();
        let mut released = Vec::new();
        for holder in releases {
            let (reply, rx) = oneshot::channel();
            requests.push(Request::Release {
                holder: holder.clone(),
                reply: Some(reply),
            });
            released.push(rx);
        }
        let mut granted = Vec::new();
        for (holder, slots) in acquires {
            let (reply, rx) = oneshot::channel();
            requests.push(Request::Acquire {
                holder: holder.clone(),
                slots: (*slots).max(1),
                wait: false,
                reply,
            });
            granted.push(rx);
        }
        if waiting_behind > 0 {
            requests.push(Request::WaitingBehind(waiting_behind));
        }
        self.send(Request::Many(requests))?;
        for rx in released {
            rx.await.map_err(|_| Error::Closed)??;
        }
        let mut out = Vec::with_capacity(granted.len());
        for rx in granted {
            out.push(rx.await.map_err(|_| Error::Closed)?);
        }
        Ok(out)
    }

    /// Says that none of this agent's holders waits any more (for callers
    /// of `release_and_try_acquire`, whose wait is otherwise kept recorded
    /// between calls so that other agents keep deferring to it).
    pub fn withdraw_wait(&self) -> Result<()> {
        self.send(Request::WithdrawWait)
    }

    pub async fn release(&self, holder: &str) -> Result<()> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Release {
            holder: holder.to_string(),
            reply: Some(reply),
        })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// Changes the ledger's limit (with the next write; see
    /// `decide::set_limit`) and returns the ledger as written.
    pub async fn set_limit(&self, change: LimitChange) -> Result<Ledger> {
        if change.limit == 0 {
            return Err(Error::InvalidLimit(0));
        }
        let (reply, rx) = oneshot::channel();
        self.send(Request::SetLimit { change, reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// For an agent that holds nothing and wants nothing any more (a
    /// deleted group): writes the ledger without its agent entry and
    /// returns it. An agent still holding slots stays in it.
    pub async fn leave(&self) -> Result<Ledger> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Leave { reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    /// The ledger as this client last read or wrote it, without a request:
    /// current as far as this agent's own writes go, and as of `at` for
    /// everyone else's. `None` before the first read.
    pub fn known(&self) -> Option<Known> {
        self.known.borrow().clone()
    }

    /// The ledger as of a fresh read.
    pub async fn snapshot(&self) -> Result<Ledger> {
        let (reply, rx) = oneshot::channel();
        self.send(Request::Snapshot { reply })?;
        rx.await.map_err(|_| Error::Closed)?
    }

    fn send(&self, req: Request) -> Result<()> {
        self.tx.send(req).map_err(|_| Error::Closed)
    }

    /// Stops the background task. Holders are not released: their lease
    /// runs out at the others unless released first.
    pub async fn shutdown(self) {
        drop(self.tx);
        let _ = self.task.await;
    }
}

struct Waiter {
    holder: String,
    slots: u32,
    wait: bool,
    reply: oneshot::Sender<Result<Option<Permit>>>,
    since: Instant,
}

struct Committer {
    store: DynStore,
    key: String,
    cfg: Config,
    rx: mpsc::UnboundedReceiver<Request>,
    cache: Option<(Ledger, ETag)>,
    /// The cached ledger, published for `Semaphore::known`.
    known: watch::Sender<Option<Known>>,
    obs: Observations,
    waiting: VecDeque<Waiter>,
    releasing: Vec<(String, Option<oneshot::Sender<Result<()>>>)>,
    snapshots: Vec<oneshot::Sender<Result<Ledger>>>,
    /// Limit changes to write; the last one asked for wins.
    limit_changes: Vec<(LimitChange, oneshot::Sender<Result<Ledger>>)>,
    /// Callers of `leave`, answered once a write (or none needed) settled it.
    leaving: Vec<oneshot::Sender<Result<Ledger>>>,
    held: BTreeMap<String, watch::Sender<bool>>,
    /// Send time of our last write known to have landed while holding slots.
    last_renewal_sent: Option<Instant>,
    /// The clocks when this client started, and how much time the
    /// monotonic clock had missed since then (a suspend, a paused VM) when
    /// that write was sent: what it misses after that comes off the fence
    /// deadline.
    clock_origin: Reading,
    missed_at_renewal: Duration,
    /// The renewal value, send time and time missed at sending of our last
    /// write that carried our agent entry, until a read or a response
    /// settles whether it landed.
    inflight: Option<(u64, Instant, Duration)>,
    last_refresh: Option<Instant>,
    warned_limit: bool,
    /// Clear our recorded wait in the next write.
    withdraw: bool,
    /// See `Request::WaitingBehind`: until the batch it came with resolves.
    waiting_behind: u32,
    /// When a caller last asked for a slot.
    last_acquire: Option<Instant>,
    /// The highest `seq` and `next_token` seen in the ledger. Once set, the
    /// ledger is known to have existed: it is never created again by this
    /// client, and every write it makes keeps both numbers growing, even on
    /// a ledger rolled back to an older version.
    high_water: Option<HighWater>,
    /// A write of this client's has landed (see [`carried_counters`]).
    wrote: bool,
    /// Creates of the ledger refused in a row while reads found none.
    refused_creates: u32,
    /// Publishes the last renewal and `fence_deadline()` after every step.
    lease: watch::Sender<Option<Lease>>,
    stats: Arc<Stats>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct HighWater {
    seq: u64,
    next_token: u64,
}

impl HighWater {
    fn of(ledger: &Ledger) -> Self {
        HighWater {
            seq: ledger.seq,
            next_token: ledger.next_token,
        }
    }

    fn max(self, other: HighWater) -> Self {
        HighWater {
            seq: self.seq.max(other.seq),
            next_token: self.next_token.max(other.next_token),
        }
    }
}

/// What a read says about the ledger's history, given the high water mark
/// of what this client saw before. Pure, so each case is unit tested.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum History {
    /// Never seen before, or moved forward (or unchanged).
    Continues,
    /// Gone after it existed: deleted by a person or a lifecycle rule.
    Vanished,
    /// Older than a version seen before: restored or replaced.
    WentBack,
}

fn history(seen: Option<HighWater>, now: Option<&Ledger>) -> History {
    match (seen, now) {
        (None, _) => History::Continues,
        (Some(_), None) => History::Vanished,
        (Some(hw), Some(l)) if l.seq < hw.seq => History::WentBack,
        (Some(_), Some(_)) => History::Continues,
    }
}

/// The `seq` and `next_token` a write carries on from `ledger`: never below
/// what this client saw (`seen`), so that they keep growing even on a ledger
/// rolled back to an older version; and on the client's first write
/// (`first`), never below the clock `floor`, as on creation. Versions that
/// this client never saw may have granted tokens above the `next_token` it
/// read, if the ledger was rolled back to before them; the floor, above
/// every token handed out before now, keeps it from granting those again.
/// Pure, so each case is unit tested.
fn carried_counters(
    ledger: &Ledger,
    seen: Option<HighWater>,
    first: bool,
    floor: u64,
) -> HighWater {
    let mut counters = HighWater::of(ledger);
    if let Some(seen) = seen {
        counters = counters.max(seen);
    }
    if first {
        counters = counters.max(HighWater {
            seq: floor,
            next_token: floor,
        });
    }
    counters
}

/// The counters a newly created ledger starts from: the wall clock in
/// microseconds, so that a ledger created again after a deletion hands out
/// fencing tokens above the old ones, and its renewal counters (taken from
/// `seq`) never repeat old values that an observer may remember. Only
/// assumes creators' clocks are not behind by more than the time between
/// the two creations.
fn creation_floor() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(1, |d| u64::try_from(d.as_micros()).unwrap_or(u64::MAX))
        .max(1)
}

/// What a failed attempt means for the pending requests.
enum Failure {
    /// Re-read and try again; `error` is `None` for a lost race.
    Retry { error: Option<String> },
    /// Give up on pending requests with this error.
    Fatal(Error),
}

impl Committer {
    async fn run(mut self) {
        loop {
            let wake = self.next_wake();
            tokio::select! {
                req = self.rx.recv() => match req {
                    Some(req) => self.take(req),
                    None => break,
                },
                _ = sleep_until(wake) => {}
            }
            if self.cfg.group_commit {
                while let Ok(req) = self.rx.try_recv() {
                    self.take(req);
                }
            }
            self.step().await;
            let lease =
                self.last_renewal_sent
                    .zip(self.fence_deadline())
                    .map(|(renewed, safe_until)| Lease {
                        renewed,
                        safe_until,
                    });
            self.lease.send_if_modified(|l| {
                let changed = *l != lease;
                *l = lease;
                changed
            });
        }
        // Slots granted to callers that gave up are still ours to free, and
        // a recorded wait must be withdrawn, or other agents would keep
        // deferring to us until our lease ran out.
        let recorded_wait = self.wait_recorded();
        if !self.releasing.is_empty() || recorded_wait {
            self.waiting.clear();
            self.withdraw = recorded_wait;
            self.step().await;
        }
        for (_, lost) in std::mem::take(&mut self.held) {
            let _ = lost.send(true);
        }
    }

    fn take(&mut self, req: Request) {
        match req {
            Request::Acquire {
                holder,
                slots,
                wait,
                reply,
            } => {
                self.last_acquire = Some(Instant::now());
                self.waiting.push_back(Waiter {
                    holder,
                    slots,
                    wait,
                    reply,
                    since: Instant::now(),
                })
            }
            Request::Release { holder, reply } => self.releasing.push((holder, reply)),
            Request::Snapshot { reply } => self.snapshots.push(reply),
            Request::Many(requests) => {
                for req in requests {
                    self.take(req);
                }
            }
            Request::WaitingBehind(units) => self.waiting_behind = units,
            Request::WithdrawWait => self.withdraw = true,
            Request::SetLimit { change, reply } => self.limit_changes.push((change, reply)),
            Request::Leave { reply } => {
                self.withdraw = true;
                self.leaving.push(reply);
            }
        }
    }

    fn renew_interval(&self) -> Duration {
        (self.cfg.lease / 3).min(self.fence_after() / 3)
    }

    /// Never later than the default: past it, the rest of the lease would
    /// not cover clock-rate drift.
    fn fence_after(&self) -> Duration {
        let default = self_fence_after(self.cfg.lease);
        self.cfg.fence_after.map_or(default, |f| f.min(default))
    }

    fn next_wake(&self) -> Instant {
        let now = Instant::now();
        let mut wake = now + Duration::from_secs(3600);
        if !self.waiting.is_empty() {
            let jitter = self.cfg.poll.mul_f64(rand::random::<f64>() * 0.2);
            let due = self.last_refresh.unwrap_or(now) + self.cfg.poll + jitter;
            wake = wake.min(due);
            if let Some((ledger, _)) = &self.cache
                && let Some(d) = self.obs.next_expiry(ledger, &self.cfg.agent, now)
            {
                wake = wake.min(now + d);
            }
        }
        if !self.releasing.is_empty() {
            wake = now;
        }
        if !self.held.is_empty() {
            let base = self.last_renewal_sent.unwrap_or(now);
            wake = wake.min(base + self.renew_interval());
            wake = wake.min(base + self.fence_after());
            // Woken from a suspend, the monotonic clock has not moved: look
            // at the other clocks often, so that slots kept past their lease
            // are given up within this long of waking.
            wake = wake.min(now + CLOCK_CHECK);
        }
        wake
    }

    fn has_work(&self) -> bool {
        !self.waiting.is_empty()
            || !self.releasing.is_empty()
            || !self.snapshots.is_empty()
            || !self.limit_changes.is_empty()
            || !self.leaving.is_empty()
            || self.withdraw
    }

    fn renew_due(&self, now: Instant) -> bool {
        // Waiters renew too: an agent whose entry goes stale is evicted, and
        // with it its claim to a fair share.
        (!self.held.is_empty() || (self.records_wait(now) && !self.waiting.is_empty()))
            && self
                .last_renewal_sent
                .is_none_or(|t| now >= t + self.renew_interval())
    }

    /// When our slots stop being safe unless a renewal lands first: the
    /// fence period after the last renewal known to have landed, less any
    /// time the monotonic clock missed since it was sent.
    fn fence_deadline(&self) -> Option<Instant> {
        if self.held.is_empty() {
            return None;
        }
        let missed = self.missed_now().saturating_sub(self.missed_at_renewal);
        self.last_renewal_sent.map(|sent| {
            let deadline = sent + self.fence_after();
            deadline.checked_sub(missed).unwrap_or(sent).max(sent)
        })
    }

    /// Time the monotonic clock missed since this client started.
    fn missed_now(&self) -> Duration {
        clock::missed(&self.clock_origin, &self.cfg.clocks.read())
    }

    /// Bounds a store call so that it cannot run past the fence deadline;
    /// past the deadline (slots already lost) the store's own timeouts apply.
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = std::result::Result<T, StoreError>>,
    ) -> std::result::Result<T, StoreError> {
        match self.fence_deadline().filter(|d| *d > Instant::now()) {
            Some(deadline) => tokio::time::timeout_at(deadline, call)
                .await
                .unwrap_or_else(|_| {
                    Err(StoreError::Ambiguous(
                        "no answer from the store before the lease's safety deadline".into(),
                    ))
                }),
            None => call.await,
        }
    }

    fn see(&mut self, ledger: &Ledger) {
        let seen = HighWater::of(ledger);
        self.high_water = Some(self.high_water.map_or(seen, |hw| hw.max(seen)));
    }

    /// Every slot held here is lost at once: the ledger they were granted in
    /// is gone or was replaced.
    /// The holders stay known (lost), so that none is released as an orphan
    /// before its owner has stopped its work and released it.
    fn fence_all(&mut self) {
        for (holder, lost) in &self.held {
            if !*lost.borrow() {
                warn!(holder, "slot lost with the ledger it was granted in");
                let _ = lost.send(true);
            }
        }
        self.inflight = None;
    }

    fn check_fence(&mut self, now: Instant) {
        let Some(deadline) = self.fence_deadline() else {
            return;
        };
        if now >= deadline {
            for (holder, lost) in &self.held {
                if !*lost.borrow() {
                    warn!(
                        holder,
                        "lease could not be renewed in time; the slot is no longer safe"
                    );
                    let _ = lost.send(true);
                }
            }
        }
    }

    /// Processes everything pending with as few writes as possible.
    async fn step(&mut self) {
        let now = Instant::now();
        self.check_fence(now);
        let before = self.waiting.len();
        self.waiting.retain(|w| !w.reply.is_closed());
        if self.waiting.is_empty() && before > 0 {
            // Every waiter gave up: others must stop deferring to us.
            self.withdraw = true;
        }
        if self.wait_is_stale(now) {
            // A recorded wait counts only while callers keep asking: one
            // whose attempts stopped (its passes fail before they get here)
            // would otherwise hold back free slots for as long as it renews.
            debug!("no acquire attempt for a lease; withdrawing the recorded wait");
            self.withdraw = true;
        }
        let poll_due =
            !self.waiting.is_empty() && self.last_refresh.is_none_or(|t| now >= t + self.cfg.poll);
        if !self.has_work() && !self.renew_due(now) {
            return;
        }
        if poll_due
            || !self.snapshots.is_empty()
            || !self.limit_changes.is_empty()
            || !self.leaving.is_empty()
        {
            self.cache_refresh_needed();
        }
        let mut errors = 0u32;
        let mut conflicts = 0u32;
        loop {
            match self.attempt().await {
                Ok(()) => return,
                Err(Failure::Fatal(e)) => {
                    self.fail_pending(e);
                    // Renewals come back here at once; do not spin on a
                    // ledger that cannot be used, but never pause past the
                    // moment our slots stop being safe.
                    let pause = Instant::now() + Duration::from_millis(500);
                    let now = Instant::now();
                    let wake = self
                        .fence_deadline()
                        .filter(|f| *f > now)
                        .map_or(pause, |f| pause.min(f));
                    sleep_until(wake).await;
                    self.check_fence(Instant::now());
                    return;
                }
                Err(Failure::Retry { error }) => {
                    self.cache_refresh_needed();
                    self.check_fence(Instant::now());
                    let pause = if let Some(detail) = error {
                        errors += 1;
                        if errors >= self.cfg.max_errors {
                            // Pending requests fail; a renewal is tried again
                            // at the next wake-up.
                            self.fail_pending(Error::Exhausted {
                                attempts: errors,
                                last: detail,
                            });
                            return;
                        }
                        backoff(errors, Duration::from_millis(50), Duration::from_secs(2))
                    } else {
                        conflicts += 1;
                        if conflicts >= MAX_CONFLICTS {
                            self.fail_pending(Error::TooManyConflicts(conflicts));
                            return;
                        }
                        backoff(
                            conflicts,
                            Duration::from_millis(2),
                            Duration::from_millis(200),
                        )
                    };
                    // Everyone who asked has gone (a signal ended `jobgate
                    // run`'s wait) and nothing else is due: stop trying.
                    let before = self.waiting.len();
                    self.waiting.retain(|w| !w.reply.is_closed());
                    if self.waiting.is_empty() && before > 0 && self.wait_recorded() {
                        self.withdraw = true;
                    }
                    if !self.has_work() && !self.renew_due(Instant::now()) {
                        return;
                    }
                    // Never sleep through the moment our slots stop being safe.
                    // (A deadline already past does not shorten the pause.)
                    let now = Instant::now();
                    let until = now + pause;
                    sleep_until(
                        self.fence_deadline()
                            .filter(|f| *f > now)
                            .map_or(until, |f| until.min(f)),
                    )
                    .await;
                    self.check_fence(Instant::now());
                    // Requests that arrived meanwhile join this batch.
                    if self.cfg.group_commit {
                        while let Ok(req) = self.rx.try_recv() {
                            self.take(req);
                        }
                    }
                }
            }
        }
    }

    fn publish(&self, ledger: Ledger) {
        self.known.send_replace(Some(Known {
            ledger,
            at: Instant::now(),
        }));
    }

    fn cache_refresh_needed(&mut self) {
        // Keep the ETag for a cheap conditional GET; mark the entry stale.
        self.last_refresh = None;
    }

    async fn refresh(&mut self) -> std::result::Result<(), Failure> {
        let known = self.cache.as_ref().map(|(_, etag)| etag.clone());
        let fetched = self
            .bounded(self.store.get(&self.key, known.as_ref()))
            .await;
        let now = Instant::now();
        match fetched {
            Ok(Fetched::NotModified) => {
                if let Some((ledger, _)) = &self.cache {
                    self.publish(ledger.clone());
                }
            }
            Ok(Fetched::Found(v)) => {
                let ledger = Ledger::parse(&v.body).map_err(|source| {
                    Failure::Fatal(Error::Ledger {
                        key: self.key.clone(),
                        source,
                    })
                })?;
                if history(self.high_water, Some(&ledger)) == History::WentBack {
                    // Restored or replaced: its holders and tokens are not
                    // the ones ours were granted in.
                    warn!(
                        key = %self.key,
                        seq = ledger.seq,
                        seen = self.high_water.map_or(0, |h| h.seq),
                        "the ledger went back to an older version; every slot held here is given up"
                    );
                    self.fence_all();
                    // Counters observed on the newer version mean nothing
                    // on this one: watch every agent for a whole lease again.
                    self.obs = Observations::default();
                }
                self.see(&ledger);
                self.publish(ledger.clone());
                self.cache = Some((ledger, v.etag));
            }
            Ok(Fetched::Missing) => {
                self.cache = None;
                self.known.send_replace(None);
                if history(self.high_water, None) == History::Vanished {
                    warn!(key = %self.key, "the ledger was deleted; every slot held here is given up and it is not created again");
                    self.fence_all();
                    self.last_refresh = Some(now);
                    return Err(Failure::Fatal(Error::LedgerVanished(self.key.clone())));
                }
            }
            Err(e) => return Err(store_failure(e)),
        }
        self.last_refresh = Some(now);
        if let Some((ledger, _)) = &self.cache {
            self.obs.observe(ledger, now);
            // A write whose answer we never got may have landed: if the
            // ledger shows its renewal, it did, and it was sent at that time.
            if let Some((renewals, sent, missed)) = self.inflight
                && ledger
                    .agents
                    .get(&self.cfg.agent)
                    .is_some_and(|a| a.renewals >= renewals)
            {
                if self.last_renewal_sent.is_none_or(|t| sent >= t) {
                    self.last_renewal_sent = Some(sent);
                    self.missed_at_renewal = missed;
                }
                self.inflight = None;
            }
        }
        Ok(())
    }

    async fn attempt(&mut self) -> std::result::Result<(), Failure> {
        if self.last_refresh.is_none() {
            self.refresh().await?;
        }
        let (mut ledger, condition) = match &self.cache {
            Some((ledger, etag)) => {
                self.refused_creates = 0;
                (ledger.clone(), Condition::Match(etag.clone()))
            }
            None if self.high_water.is_some() => {
                return Err(Failure::Fatal(Error::LedgerVanished(self.key.clone())));
            }
            None => match self.cfg.limit {
                Some(0) => return Err(Failure::Fatal(Error::InvalidLimit(0))),
                Some(limit) => {
                    let mut new = Ledger::new(limit);
                    let floor = creation_floor();
                    new.seq = floor;
                    new.next_token = floor;
                    (new, Condition::Create)
                }
                None => return Err(Failure::Fatal(Error::LedgerMissing(self.key.clone()))),
            },
        };
        let counters = carried_counters(&ledger, self.high_water, !self.wrote, creation_floor());
        ledger.seq = counters.seq;
        ledger.next_token = counters.next_token;
        if let Some(limit) = self.cfg.limit
            && limit != ledger.limit
            && !self.warned_limit
        {
            warn!(
                ledger_limit = ledger.limit,
                requested = limit,
                "the ledger's limit differs from the requested one; the ledger's limit applies"
            );
            self.warned_limit = true;
        }
        for reply in self.snapshots.drain(..) {
            let _ = reply.send(Ok(ledger.clone()));
        }
        let now = Instant::now();
        let batch = self.batch(&ledger, now);
        let outcome = decide::apply(&ledger, &batch);
        if let Some(theirs) = outcome.claimed_by.clone() {
            // Nothing of ours was written, and slots we thought ours are
            // not: they are lost, and every request fails with the reason.
            warn!(agent = %self.cfg.agent, %theirs, "another writer uses this agent id; writing nothing");
            let mine = self.cfg.instance.clone().unwrap_or_default();
            self.resolve(
                Outcome {
                    lost: outcome.lost,
                    ..Outcome::default()
                },
                false,
            );
            self.fail_pending(Error::AgentClaimed {
                agent: self.cfg.agent.clone(),
                theirs,
                mine,
            });
            return Ok(());
        }
        let Some(next) = outcome.next.clone() else {
            self.answer_limit_changes(&ledger);
            self.resolve(outcome, false);
            return Ok(());
        };
        let body = Bytes::from(next.to_bytes());
        let creating = condition == Condition::Create;
        let sent = Instant::now();
        let missed_at_send = self.missed_now();
        let ours = next.agents.get(&self.cfg.agent).map(|a| a.renewals);
        if let Some(renewals) = ours {
            self.inflight = Some((renewals, sent, missed_at_send));
        }
        match self
            .bounded(self.store.put(&self.key, body, condition))
            .await
        {
            Ok(etag) => {
                self.stats.commits.fetch_add(1, Ordering::Relaxed);
                self.inflight = None;
                self.wrote = true;
                self.see(&next);
                self.publish(next.clone());
                self.answer_limit_changes(&next);
                self.cache = Some((next, etag));
                // Grants in a write answered after the fence period may
                // already be taken elsewhere.
                let late = Instant::now() >= sent + self.fence_after();
                self.resolve(outcome, late);
                self.last_renewal_sent = ours.map(|_| sent);
                self.missed_at_renewal = missed_at_send;
                Ok(())
            }
            Err(e) => {
                debug!(error = %e, "ledger write failed; re-reading");
                if creating && matches!(e, StoreError::Conflict(_) | StoreError::Missing) {
                    // A create refused because another agent created the
                    // ledger first shows in the re-read that follows. Refused
                    // again and again while reads find nothing, it is no S3
                    // (a web server answering 404 to everything): retrying
                    // would only spin.
                    self.refused_creates += 1;
                    if self.refused_creates >= REFUSED_CREATES {
                        return Err(Failure::Fatal(Error::NotS3(self.store.describe())));
                    }
                }
                match &e {
                    StoreError::Conflict(_) | StoreError::Missing => {
                        self.stats.conflicts.fetch_add(1, Ordering::Relaxed);
                    }
                    StoreError::Ambiguous(_) => {
                        self.stats.ambiguous.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
                Err(store_failure(e))
            }
        }
    }

    fn batch(&self, ledger: &Ledger, now: Instant) -> Batch {
        let mut acquires: Vec<String> = self.waiting.iter().map(|w| w.holder.clone()).collect();
        let mut releases: Vec<String> = self.releasing.iter().map(|(h, _)| h.clone()).collect();
        if self.cfg.release_orphans {
            let orphans: Vec<String> = ledger
                .holders_of(&self.cfg.agent)
                .filter(|h| {
                    !self.held.contains_key(*h) && !acquires.contains(h) && !releases.contains(h)
                })
                .cloned()
                .collect();
            releases.extend(orphans);
        }
        if !self.cfg.group_commit {
            // One request per write, for comparison with group commit.
            if !releases.is_empty() {
                releases.truncate(1);
                acquires.clear();
            } else {
                acquires.truncate(1);
            }
        }
        Batch {
            agent: self.cfg.agent.clone(),
            agent_description: self.cfg.description.clone(),
            lease: self.cfg.lease,
            slots: self
                .waiting
                .iter()
                .filter(|w| w.slots > 1)
                .map(|w| (w.holder.clone(), w.slots))
                .collect(),
            acquires,
            releases,
            held: self.held.keys().cloned().collect(),
            evict: self.obs.expired(ledger, &self.cfg.agent, now),
            // A slot taken up again (a restarted process with the same agent
            // id) is granted with a renewal, so that its fence deadline runs
            // from a write known to have landed rather than never.
            renew: self.renew_due(now) || self.takes_up_again(ledger),
            wall_now: humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            // Waiters that gave up are gone from `waiting`: without this, a
            // batch with no acquires would keep their wait recorded.
            withdraw_wait: self.withdraw,
            record_wait: self.records_wait(now),
            waiting_behind: self.waiting_behind,
            set_limit: self.limit_changes.last().map(|(c, _)| c.clone()),
            instance: self.cfg.instance.clone(),
            take_over: self.obs.stood_still(ledger, &self.cfg.agent, now),
        }
    }

    /// Tells the callers of `set_limit` and `leave` that `written` (the
    /// ledger now stored) carries what they asked for.
    fn answer_limit_changes(&mut self, written: &Ledger) {
        for (_, reply) in self.limit_changes.drain(..) {
            let _ = reply.send(Ok(written.clone()));
        }
        for reply in self.leaving.drain(..) {
            let _ = reply.send(Ok(written.clone()));
        }
    }

    /// The ledger as last read records a wait of ours.
    fn wait_recorded(&self) -> bool {
        self.cache.as_ref().is_some_and(|(ledger, _)| {
            ledger
                .agents
                .get(&self.cfg.agent)
                .is_some_and(|a| a.waiting > 0)
        })
    }

    /// Our wait is recorded in the ledger, nothing waits here now, and no
    /// caller has asked for a slot for a whole lease.
    fn wait_is_stale(&self, now: Instant) -> bool {
        self.wait_recorded()
            && self.waiting.is_empty()
            && !self.withdraw
            && self
                .last_acquire
                .is_none_or(|t| now.saturating_duration_since(t) >= self.cfg.lease)
    }

    /// Whether this agent's waits go into the ledger now.
    fn records_wait(&self, now: Instant) -> bool {
        self.cfg.record_wait
            || self.cfg.record_wait_after.is_some_and(|after| {
                self.waiting
                    .iter()
                    .any(|w| w.wait && now.saturating_duration_since(w.since) >= after)
            })
    }

    /// Whether a waiter asks for a slot the ledger says this agent holds but
    /// this client has no permit for.
    fn takes_up_again(&self, ledger: &Ledger) -> bool {
        self.waiting.iter().any(|w| {
            !self.held.contains_key(&w.holder)
                && ledger
                    .holders
                    .get(&w.holder)
                    .is_some_and(|h| h.agent == self.cfg.agent)
        })
    }

    /// Answers the requests the outcome settled; called once its ledger is
    /// written, or when nothing needed writing.
    /// `late`: the write was answered after the fence period, so new grants
    /// are handed out lost and nobody starts work on them.
    fn resolve(&mut self, out: Outcome, late: bool) {
        self.withdraw = false;
        self.waiting_behind = 0;
        if !out.evicted_agents.is_empty() {
            info!(agents = ?out.evicted_agents, "evicted agents whose lease ran out");
            self.stats
                .evictions
                .fetch_add(out.evicted_agents.len() as u64, Ordering::Relaxed);
        }
        for holder in &out.lost {
            if let Some(lost) = self.held.remove(holder) {
                warn!(holder, "slot lost: the holder is no longer in the ledger");
                let _ = lost.send(true);
            }
        }
        let released: Vec<String> = out.released.clone();
        let mut still = Vec::new();
        for (holder, reply) in self.releasing.drain(..) {
            if released.contains(&holder) {
                self.held.remove(&holder);
                if let Some(reply) = reply {
                    let _ = reply.send(Ok(()));
                }
            } else {
                still.push((holder, reply));
            }
        }
        self.releasing = still;

        // Looked up, not searched for: a controller at depth asks for
        // thousands of holders in one batch, and nearly all of them wait
        // (searching the list of those for each was quadratic).
        let granted: HashMap<&str, u64> = out
            .granted
            .iter()
            .map(|(h, token)| (h.as_str(), *token))
            .collect();
        let waits: HashSet<&str> = out.waiting.iter().map(String::as_str).collect();
        let mut remaining = VecDeque::new();
        for waiter in self.waiting.drain(..) {
            if let Some(token) = granted.get(waiter.holder.as_str()) {
                let lost_rx = match self.held.get(&waiter.holder) {
                    Some(tx) => tx.subscribe(),
                    None => {
                        self.stats.grants.fetch_add(1, Ordering::Relaxed);
                        let (tx, rx) = watch::channel(late);
                        self.held.insert(waiter.holder.clone(), tx);
                        rx
                    }
                };
                let permit = Permit {
                    holder: waiter.holder.clone(),
                    token: *token,
                    lost: lost_rx,
                };
                if waiter.reply.send(Ok(Some(permit))).is_err() && self.cfg.release_orphans {
                    // The caller gave up while the grant was being written.
                    // An agent that keeps holders across restarts (the
                    // controller) leaves the slot to its next pass, which
                    // knows whether work runs on it: the caller may be gone
                    // while another process let the work run (a standby
                    // that took over). Until then it is renewed.
                    self.releasing.push((waiter.holder, None));
                }
            } else if let Some((_, agent)) = out.taken.iter().find(|(h, _)| h == &waiter.holder) {
                let _ = waiter.reply.send(Err(Error::HolderTaken {
                    holder: waiter.holder.clone(),
                    agent: agent.clone(),
                }));
            } else if waits.contains(waiter.holder.as_str()) && !waiter.wait {
                let _ = waiter.reply.send(Ok(None));
            } else {
                remaining.push_back(waiter);
            }
        }
        self.waiting = remaining;
    }

    fn fail_pending(&mut self, e: Error) {
        debug!(error = %e, "ledger request failed");
        self.waiting_behind = 0;
        for w in self.waiting.drain(..) {
            let _ = w.reply.send(Err(e.clone()));
        }
        for (_, reply) in self.releasing.drain(..) {
            if let Some(reply) = reply {
                let _ = reply.send(Err(e.clone()));
            }
        }
        for reply in self.snapshots.drain(..) {
            let _ = reply.send(Err(e.clone()));
        }
        for (_, reply) in self.limit_changes.drain(..) {
            let _ = reply.send(Err(e.clone()));
        }
        for reply in self.leaving.drain(..) {
            let _ = reply.send(Err(e.clone()));
        }
    }
}

fn store_failure(e: StoreError) -> Failure {
    match e {
        StoreError::Conflict(_) | StoreError::Missing => Failure::Retry { error: None },
        StoreError::Ambiguous(_) | StoreError::Unavailable(_) => Failure::Retry {
            error: Some(e.to_string()),
        },
        other => Failure::Fatal(Error::Store(other)),
    }
}

/// Creates refused in a row, with reads finding no ledger between them,
/// before the store is taken for something other than S3.
const REFUSED_CREATES: u32 = 5;

/// How often a client holding slots looks for time its monotonic clock
/// missed.
const CLOCK_CHECK: Duration = Duration::from_secs(1);

/// Lost races in a row before pending requests fail.
const MAX_CONFLICTS: u32 = 1000;

/// Full-jitter exponential backoff.
pub fn backoff(attempt: u32, base: Duration, cap: Duration) -> Duration {
    let exp = base.saturating_mul(1u32 << attempt.min(16));
    exp.min(cap).mul_f64(rand::random::<f64>())
}

/// Reads and parses the ledger once.
pub async fn read_ledger(store: &DynStore, key: &str) -> Result<Option<(Ledger, ETag)>> {
    match store.get(key, None).await? {
        Fetched::Found(v) => {
            let ledger = Ledger::parse(&v.body).map_err(|source| Error::Ledger {
                key: key.to_string(),
                source,
            })?;
            Ok(Some((ledger, v.etag)))
        }
        Fetched::Missing | Fetched::NotModified => Ok(None),
    }
}

/// `jobgate limit`: changes the ledger's limit by compare-and-swap,
/// recorded as set by `who`. Returns the limit before and after. An
/// ambiguous write is settled by the re-read: the change is idempotent.
pub async fn set_limit_by_hand(
    store: &DynStore,
    key: &str,
    limit: u32,
    who: &str,
) -> Result<(u32, Ledger)> {
    if limit == 0 {
        return Err(Error::InvalidLimit(0));
    }
    let change = LimitChange {
        limit,
        by: who.to_string(),
        generation: None,
    };
    let mut before = None;
    let outcome = change_by_hand(store, key, |ledger, wall| {
        // The limit before our first attempt, not one our lost answer set.
        before.get_or_insert(ledger.limit);
        let mut next = ledger.clone();
        if ledger.limit == limit || decide::set_limit(&mut next, &change, wall) != Some(true) {
            return None;
        }
        next.seq += 1;
        next.written_by = Some(who.to_string());
        next.written_at = Some(wall.to_string());
        Some(next)
    })
    .await?;
    let ledger = match outcome {
        ByHand::Written(ledger) | ByHand::Unneeded { ledger, .. } => ledger,
    };
    Ok((before.unwrap_or(ledger.limit), ledger))
}

/// An operator's manual release of one holder, whoever holds it.
/// Returns whether the holder was present.
pub async fn release_by_hand(store: &DynStore, key: &str, holder: &str) -> Result<bool> {
    let who = format!("manual-release@{}", crate::agent::hostname());
    let outcome = change_by_hand(store, key, |ledger, wall| {
        decide::release_by_hand(ledger, holder, &who, wall)
    })
    .await?;
    Ok(match outcome {
        ByHand::Written(_) => true,
        // Only a write whose answer was lost may have been the one that
        // freed it; after a plain lost race, someone else did.
        ByHand::Unneeded {
            after_ambiguous, ..
        } => after_ambiguous,
    })
}

/// How a change made by hand ended.
enum ByHand {
    /// This call's write landed; the ledger as written.
    Written(Ledger),
    /// The ledger as last read needed no change. `after_ambiguous`: an
    /// earlier write of this call may have landed without an answer.
    Unneeded {
        ledger: Ledger,
        after_ambiguous: bool,
    },
}

/// A change made by hand (the CLI, outside any agent): read, change, write
/// by compare-and-swap, and on a lost race or a transient failure read
/// again and decide again. `change` gets the ledger and the wall-clock
/// time, and returns the ledger to write, or `None` when nothing is left to
/// do.
async fn change_by_hand(
    store: &DynStore,
    key: &str,
    mut change: impl FnMut(&Ledger, &str) -> Option<Ledger>,
) -> Result<ByHand> {
    let mut attempt = 0u32;
    let mut after_ambiguous = false;
    loop {
        attempt += 1;
        let (ledger, etag) = read_ledger(store, key)
            .await?
            .ok_or_else(|| Error::LedgerMissing(key.to_string()))?;
        let wall = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let Some(next) = change(&ledger, &wall) else {
            return Ok(ByHand::Unneeded {
                ledger,
                after_ambiguous,
            });
        };
        match store
            .put(key, Bytes::from(next.to_bytes()), Condition::Match(etag))
            .await
        {
            Ok(_) => return Ok(ByHand::Written(next)),
            Err(e) if e.is_transient() && attempt < 10 => {
                after_ambiguous |= matches!(e, StoreError::Ambiguous(_));
                sleep(backoff(
                    attempt,
                    Duration::from_millis(20),
                    Duration::from_secs(1),
                ))
                .await;
            }
            Err(e) => return Err(e.into()),
        }
    }
}

#[cfg(test)]
mod tests;
