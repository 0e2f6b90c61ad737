//! A small fault-injecting HTTP proxy between the S3 client and SeaweedFS.
//! Per request it may: drop the response after the server applied the write,
//! answer 500/503 (before or after forwarding), answer 409
//! ConditionalRequestConflict without forwarding, or delay. On demand it
//! also holds requests until told to let them go: every PUT's answer (the
//! write lands, its client waits), or the reads of one object signed with
//! one access key; and it can answer reads of missing objects with 403, as
//! AWS does for callers without `s3:ListBucket`.
//!
//! Started with a [`Profile`], it also answers as a remote S3 would: every
//! request waits a sampled service time (and the network's delay each
//! way), some are refused as a busy S3 refuses them, and it records the
//! latencies it made ([`LatencyLog`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::client::legacy::Client;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

/// Probabilities per request; the rest pass through untouched.
#[derive(Debug, Clone, Copy, Default)]
pub struct Faults {
    /// PUTs: forward, let the write land, then drop the connection.
    pub drop_after_apply: f64,
    /// Any request: 500 without forwarding.
    pub error_500_before: f64,
    /// PUTs: forward (the write lands), then answer 503 SlowDown.
    pub error_503_after: f64,
    /// PUTs: 409 ConditionalRequestConflict without forwarding.
    pub conflict_409: f64,
    /// Any request: wait `delay` before forwarding.
    pub delay: f64,
    pub delay_by: Duration,
}

/// A log-normal distribution of durations, given by its median and its
/// 99th percentile (object-store latencies are roughly log-normal: most
/// requests near the median, a long tail to the right).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct LogNormal {
    pub median: Duration,
    pub p99: Duration,
}

/// The standard normal's 99th percentile.
const Z99: f64 = 2.326_347_874;

impl LogNormal {
    /// Always zero.
    pub const ZERO: LogNormal = LogNormal {
        median: Duration::ZERO,
        p99: Duration::ZERO,
    };

    /// The spread of the underlying normal: ln(p99 / median) / z(0.99).
    pub fn sigma(&self) -> f64 {
        let (median, p99) = (self.median.as_secs_f64(), self.p99.as_secs_f64());
        if median <= 0.0 || p99 <= median {
            return 0.0;
        }
        (p99 / median).ln() / Z99
    }

    /// The draw for two uniforms in [0, 1), by Box–Muller (`rand_distr` is
    /// not in the tree; two uniforms are all a normal needs). Pure, so its
    /// percentiles are unit tested.
    pub fn at(&self, u1: f64, u2: f64) -> Duration {
        if self.median.is_zero() {
            return Duration::ZERO;
        }
        // 1 - u1 is in (0, 1]: its logarithm is finite.
        let z = (-2.0 * (1.0 - u1).ln()).sqrt() * (std::f64::consts::TAU * u2).cos();
        self.median.mul_f64((self.sigma() * z).exp())
    }

    /// One random draw.
    pub fn sample(&self) -> Duration {
        self.at(rand::random(), rand::random())
    }
}

/// How the proxy answers in time and refusals: a store far away, busy, or
/// neither. Figures, their sources and which are assumptions: see
/// [`Profile::AWS_S3_STANDARD`] and docs/benchmarks.md ("N clusters on one
/// ledger, at AWS S3 latency").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Profile {
    pub name: &'static str,
    /// The store's time for a GET (and HEAD).
    pub get: LogNormal,
    /// The store's time for a PUT (and any other write).
    pub put: LogNormal,
    /// The network's delay each way, added before forwarding and again
    /// before answering.
    pub one_way: Duration,
    /// Any request: 503 SlowDown, without forwarding (nothing lands).
    pub slow_down: f64,
    /// A PUT that finds another PUT to the same key in flight at the proxy:
    /// 409 ConditionalRequestConflict, without forwarding.
    pub conflict_in_flight: f64,
}

impl Profile {
    /// Loopback: no added time, nothing refused. What [`FaultProxy::start`] uses.
    pub const NONE: Profile = Profile {
        name: "none",
        get: LogNormal::ZERO,
        put: LogNormal::ZERO,
        one_way: Duration::ZERO,
        slow_down: 0.0,
        conflict_in_flight: 0.0,
    };

    /// S3 Standard, one region, the client in the same region.
    ///
    /// - PUT (conditional, a few KiB): median 60 ms. C. Douglas,
    ///   "Conditional Operations in Object Stores" (Jan 2026,
    ///   <https://cdouglas.github.io/posts/2026/01/conditional>) measured
    ///   58–68 ms per compare-and-set and 14.7–15.3 successful CAS/s on one
    ///   S3 Standard object. p99 250 ms: an assumption (no published p99
    ///   for conditional PUTs); it gives a log-normal of σ ≈ 0.61, whose
    ///   mean (≈ 72 ms) stays near the top of Douglas's range.
    /// - GET (a few KiB): median 20 ms. AWS's performance guidelines say
    ///   small requests' median latencies are "often in the tens of
    ///   milliseconds" ("Best Practices Design Patterns: Optimizing Amazon
    ///   S3 Performance", Timeouts and Retries for Latency-Sensitive
    ///   Applications); Quickwit, "S3 Express speculations" (2023,
    ///   <https://quickwit.io/blog/s3-express-speculations>): up to about
    ///   30 ms to the first byte of a GET, 80 ms tails "rather common".
    ///   p99 100 ms: an assumption.
    /// - The log-normal shape: an assumption, as in A. Gutglick, "So you
    ///   want to use Object Storage" (SpiralDB, 2025).
    /// - 503 SlowDown on 0.1% of requests: an assumption. AWS answers it
    ///   to sustained rates above about 5,000 requests/s on a few objects,
    ///   or while it scales a prefix (same guidelines); a ledger sees tens
    ///   of requests/s, so this is background noise, not throttling.
    /// - 409 ConditionalRequestConflict on 10% of PUTs that find another
    ///   PUT to the same key in flight: an assumption. The S3 user guide
    ///   ("conditional writes") documents the 409 for a conditional write
    ///   that overlaps a conflicting operation and says to re-read and
    ///   retry, but publishes no rate. Overlapping ledger writes race on
    ///   the same ETag, so at most one of them can win anyway; the 409
    ///   mostly changes which answer a loser gets, and now and then makes
    ///   one lose that would have won (pessimistic).
    pub const AWS_S3_STANDARD: Profile = Profile {
        name: "aws-s3-standard",
        get: LogNormal {
            median: Duration::from_millis(20),
            p99: Duration::from_millis(100),
        },
        put: LogNormal {
            median: Duration::from_millis(60),
            p99: Duration::from_millis(250),
        },
        one_way: Duration::ZERO,
        slow_down: 0.001,
        conflict_in_flight: 0.1,
    };

    /// [`Profile::AWS_S3_STANDARD`] with the client in another region:
    /// 70 ms each way (140 ms more on every request): an assumption, of
    /// the order of a round trip between US and Asian regions. A measured
    /// comparison: uploads from Lambda in us-east-1 took 60–133 ms to S3
    /// in us-east-1 and 300–550 ms to us-west-2 ("How I Analyze
    /// S3 Upload Latency Issues", kkc.github.io, 2020, <https://kkc.github.io/2020/03/16/s3-latency/>).
    pub const AWS_CROSS_REGION: Profile = Profile {
        name: "aws-cross-region",
        one_way: Duration::from_millis(70),
        ..Profile::AWS_S3_STANDARD
    };

    /// The profile called `name`, as in [`Profile::name`].
    pub fn by_name(name: &str) -> Option<Profile> {
        [
            Profile::NONE,
            Profile::AWS_S3_STANDARD,
            Profile::AWS_CROSS_REGION,
        ]
        .into_iter()
        .find(|p| p.name == name)
    }

    fn service(&self, op: Op) -> LogNormal {
        match op {
            Op::Get => self.get,
            Op::Put => self.put,
        }
    }

    fn adds_nothing(&self) -> bool {
        *self == Profile::NONE
    }
}

/// Requests as the store's latency tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Op {
    /// GET and HEAD.
    Get,
    /// PUT and any other method.
    Put,
}

impl Op {
    fn of(method: &Method) -> Op {
        match *method {
            Method::GET | Method::HEAD => Op::Get,
            _ => Op::Put,
        }
    }
}

/// What a proxy started with a profile made of each request's time
/// (nothing is recorded without one).
#[derive(Debug, Default)]
pub struct LatencyLog {
    /// The profile's draws of the store's time (without the network's).
    sampled: Mutex<BTreeMap<Op, Vec<Duration>>>,
    /// From the request's arrival to its answer: the draw, the network's
    /// delay both ways and SeaweedFS's own time (what a client sees, but
    /// for loopback).
    observed: Mutex<BTreeMap<Op, Vec<Duration>>>,
}

impl LatencyLog {
    fn push(map: &Mutex<BTreeMap<Op, Vec<Duration>>>, op: Op, d: Duration) {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(op)
            .or_default()
            .push(d);
    }

    fn get(map: &Mutex<BTreeMap<Op, Vec<Duration>>>, op: Op) -> Vec<Duration> {
        map.lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&op)
            .cloned()
            .unwrap_or_default()
    }

    /// The profile's draws for `op`'s requests so far, in order.
    pub fn sampled(&self, op: Op) -> Vec<Duration> {
        Self::get(&self.sampled, op)
    }

    /// Arrival to answer for `op`'s requests answered so far, in order.
    pub fn observed(&self, op: Op) -> Vec<Duration> {
        Self::get(&self.observed, op)
    }
}

/// PUTs in flight at the proxy, by path.
#[derive(Debug, Default)]
struct InFlight(Mutex<HashMap<String, usize>>);

impl InFlight {
    /// Counts a PUT to `path` in flight until the guard is dropped (also
    /// when the client goes away first); returns the guard and how many
    /// others were in flight.
    fn enter(self: &Arc<Self>, path: &str) -> InFlightGuard {
        *self
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(path.to_string())
            .or_default() += 1;
        InFlightGuard {
            of: self.clone(),
            path: path.to_string(),
        }
    }

    fn others(&self, path: &str) -> usize {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(path)
            .map_or(0, |n| n.saturating_sub(1))
    }
}

struct InFlightGuard {
    of: Arc<InFlight>,
    path: String,
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        let mut map = self.of.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = map.get_mut(&self.path) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                map.remove(&self.path);
            }
        }
    }
}

/// What the proxy holds back until told otherwise (see [`FaultProxy::hold`]).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Holds {
    /// PUTs are forwarded (the write lands) and their answers held.
    pub put_answers: bool,
    /// GETs of a path ending in `.1` signed with access key `.0` are held
    /// before they are forwarded.
    pub reads_signed_by: Option<(String, String)>,
}

/// How the proxy answers a read of an object that does not exist.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Missing {
    /// 404 NoSuchKey, as the server says.
    #[default]
    NotFound,
    /// 403 AccessDenied, as AWS answers callers that may not list the
    /// bucket (no `s3:ListBucket`).
    Forbidden,
}

impl Holds {
    fn holds_read(&self, parts: &hyper::http::request::Parts) -> bool {
        let Some((key, suffix)) = &self.reads_signed_by else {
            return false;
        };
        let signed = parts
            .headers
            .get(hyper::header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains(&format!("Credential={key}/")));
        parts.method == Method::GET && signed && parts.uri.path().ends_with(suffix.as_str())
    }
}

/// What a test has told the proxy to do besides its random faults.
#[derive(Debug, Clone, Default)]
struct Orders {
    holds: Holds,
    missing: Missing,
}

/// Waits until `wanted` no longer holds for what is held.
async fn until(orders: &mut tokio::sync::watch::Receiver<Orders>, wanted: impl Fn(&Holds) -> bool) {
    let _ = orders.wait_for(|o| !wanted(&o.holds)).await;
}

#[derive(Debug, Default)]
pub struct FaultCounts {
    pub requests: AtomicU64,
    pub dropped_after_apply: AtomicU64,
    pub error_500: AtomicU64,
    pub error_503_after: AtomicU64,
    pub conflict_409: AtomicU64,
    pub delayed: AtomicU64,
    /// Requests held (see [`Holds`]) so far.
    pub held: AtomicU64,
    /// The profile's 503 SlowDown answers.
    pub slow_down: AtomicU64,
    /// The profile's 409 answers to PUTs that overlapped another.
    pub conflict_in_flight: AtomicU64,
}

impl FaultCounts {
    pub fn injected(&self) -> u64 {
        [
            &self.dropped_after_apply,
            &self.error_500,
            &self.error_503_after,
            &self.conflict_409,
            &self.delayed,
            &self.slow_down,
            &self.conflict_in_flight,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    pub counts: Arc<FaultCounts>,
    /// How it answers in time (see [`FaultProxy::start_with_profile`]).
    pub profile: Profile,
    /// The latencies it made (with a profile).
    pub latencies: Arc<LatencyLog>,
    partitioned: Arc<AtomicBool>,
    orders: tokio::sync::watch::Sender<Orders>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

type Upstream = Client<HttpConnector, Full<Bytes>>;

fn s3_error(status: StatusCode, code: &str) -> Response<Full<Bytes>> {
    let body = format!(
        "<?xml version=\"1.0\" encoding=\"UTF-8\"?>\n<Error><Code>{code}</Code><Message>injected by the test proxy</Message></Error>"
    );
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        "content-type",
        hyper::header::HeaderValue::from_static("application/xml"),
    );
    resp
}

#[derive(Debug)]
struct Dropped;
impl std::fmt::Display for Dropped {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("response dropped by the test proxy")
    }
}
impl std::error::Error for Dropped {}

async fn forward(
    client: &Upstream,
    upstream: &str,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Option<Response<Full<Bytes>>> {
    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or("/");
    let mut req = Request::builder()
        .method(parts.method.clone())
        .uri(format!("{upstream}{path}"));
    for (name, value) in &parts.headers {
        req = req.header(name, value);
    }
    let resp = client.request(req.body(Full::new(body)).ok()?).await.ok()?;
    let (parts, body) = resp.into_parts();
    let body = body.collect().await.ok()?.to_bytes();
    Some(Response::from_parts(parts, Full::new(body)))
}

/// What every connection's requests share: where to forward, what to
/// inject, and what to count.
struct Shared {
    client: Upstream,
    upstream: String,
    faults: Faults,
    counts: Arc<FaultCounts>,
    partitioned: Arc<AtomicBool>,
    profile: Profile,
    latencies: Arc<LatencyLog>,
    in_flight: Arc<InFlight>,
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    mut orders: tokio::sync::watch::Receiver<Orders>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let arrived = Instant::now();
    let Shared {
        client,
        upstream,
        counts,
        partitioned,
        profile,
        ..
    } = &*shared;
    counts.requests.fetch_add(1, Ordering::Relaxed);
    if partitioned.load(Ordering::SeqCst) {
        // Like a network partition: the request goes nowhere and nothing
        // answers; the client's own timeouts end it.
        std::future::pending::<()>().await;
    }
    let (parts, body) = req.into_parts();
    let body = body.collect().await.map_err(|_| Dropped)?.to_bytes();
    let is_put = parts.method == Method::PUT;
    if orders.borrow().holds.holds_read(&parts) {
        counts.held.fetch_add(1, Ordering::Relaxed);
        until(&mut orders, |h| h.holds_read(&parts)).await;
    }
    if is_put && orders.borrow().holds.put_answers {
        counts.held.fetch_add(1, Ordering::Relaxed);
        let answer = forward(client, upstream, parts, body).await;
        until(&mut orders, |h| h.put_answers).await;
        return Ok(answer.unwrap_or_else(|| s3_error(StatusCode::BAD_GATEWAY, "InternalError")));
    }
    if profile.adds_nothing() {
        return faulty(&shared, &orders, parts, body).await;
    }
    // The store's time is split evenly around the moment the request is
    // forwarded (a write lands half-way through its latency): what a
    // competing writer can slip in before or after it depends on that.
    let op = Op::of(&parts.method);
    let service = profile.service(op).sample();
    let before = profile.one_way + service / 2;
    let after = profile.one_way + (service - service / 2);
    let path = parts.uri.path().to_string();
    let _in_flight = is_put.then(|| shared.in_flight.enter(&path));
    tokio::time::sleep(before).await;
    let answer = if rand::random::<f64>() < profile.slow_down {
        counts.slow_down.fetch_add(1, Ordering::Relaxed);
        Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"))
    } else if is_put
        && shared.in_flight.others(&path) > 0
        && rand::random::<f64>() < profile.conflict_in_flight
    {
        counts.conflict_in_flight.fetch_add(1, Ordering::Relaxed);
        Ok(s3_error(StatusCode::CONFLICT, "ConditionalRequestConflict"))
    } else {
        faulty(&shared, &orders, parts, body).await
    };
    tokio::time::sleep(after).await;
    LatencyLog::push(&shared.latencies.sampled, op, service);
    LatencyLog::push(&shared.latencies.observed, op, arrived.elapsed());
    answer
}

/// The random faults of [`Faults`], then forwarding.
async fn faulty(
    shared: &Shared,
    orders: &tokio::sync::watch::Receiver<Orders>,
    parts: hyper::http::request::Parts,
    body: Bytes,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let Shared {
        client,
        upstream,
        faults,
        counts,
        ..
    } = shared;
    let is_put = parts.method == Method::PUT;
    let roll: f64 = rand::random();
    let mut edge = 0.0;
    let mut hit = |p: f64| {
        edge += p;
        roll < edge
    };
    if is_put && hit(faults.drop_after_apply) {
        counts.dropped_after_apply.fetch_add(1, Ordering::Relaxed);
        let _ = forward(client, upstream, parts, body).await;
        return Err(Dropped);
    }
    if hit(faults.error_500_before) {
        counts.error_500.fetch_add(1, Ordering::Relaxed);
        return Ok(s3_error(StatusCode::INTERNAL_SERVER_ERROR, "InternalError"));
    }
    if is_put && hit(faults.error_503_after) {
        counts.error_503_after.fetch_add(1, Ordering::Relaxed);
        let _ = forward(client, upstream, parts, body).await;
        return Ok(s3_error(StatusCode::SERVICE_UNAVAILABLE, "SlowDown"));
    }
    if is_put && hit(faults.conflict_409) {
        counts.conflict_409.fetch_add(1, Ordering::Relaxed);
        return Ok(s3_error(StatusCode::CONFLICT, "ConditionalRequestConflict"));
    }
    if hit(faults.delay) {
        counts.delayed.fetch_add(1, Ordering::Relaxed);
        tokio::time::sleep(faults.delay_by).await;
    }
    let read = matches!(parts.method, Method::GET | Method::HEAD);
    match forward(client, upstream, parts, body).await {
        Some(resp)
            if read
                && resp.status() == StatusCode::NOT_FOUND
                && orders.borrow().missing == Missing::Forbidden =>
        {
            Ok(s3_error(StatusCode::FORBIDDEN, "AccessDenied"))
        }
        Some(resp) => Ok(resp),
        None => Ok(s3_error(StatusCode::BAD_GATEWAY, "InternalError")),
    }
}

impl FaultProxy {
    pub async fn start(upstream: &str, faults: Faults) -> FaultProxy {
        FaultProxy::start_with_profile(upstream, faults, Profile::NONE).await
    }

    /// Like [`FaultProxy::start`], every request also answered as `profile`
    /// says (its latency and refusals come before `faults`' random faults;
    /// held requests skip it), and its latencies recorded in
    /// [`FaultProxy::latencies`].
    pub async fn start_with_profile(
        upstream: &str,
        faults: Faults,
        profile: Profile,
    ) -> FaultProxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let counts = Arc::new(FaultCounts::default());
        let partitioned = Arc::new(AtomicBool::new(false));
        let latencies = Arc::new(LatencyLog::default());
        let shared = Arc::new(Shared {
            client: Client::builder(TokioExecutor::new()).build_http(),
            upstream: upstream.trim_end_matches('/').to_string(),
            faults,
            counts: counts.clone(),
            partitioned: partitioned.clone(),
            profile,
            latencies: latencies.clone(),
            in_flight: Arc::default(),
        });
        let (orders, orders_rx) = tokio::sync::watch::channel(Orders::default());
        let task = tokio::spawn(async move {
            loop {
                let Ok((stream, _)) = listener.accept().await else {
                    continue;
                };
                let (shared, orders) = (shared.clone(), orders_rx.clone());
                tokio::spawn(async move {
                    let service =
                        service_fn(move |req| handle(req, shared.clone(), orders.clone()));
                    let _ = hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service)
                        .await;
                });
            }
        });
        FaultProxy {
            endpoint,
            counts,
            profile,
            latencies,
            partitioned,
            orders,
            task,
        }
    }

    /// Answers reads of missing objects as `missing` says from now on.
    pub fn answer_missing(&self, missing: Missing) {
        self.orders.send_modify(|o| o.missing = missing);
    }

    /// Holds back what `holds` says from now on; requests held before and
    /// no longer covered go on.
    pub fn hold(&self, holds: Holds) {
        self.orders.send_modify(|o| o.holds = holds);
    }

    /// Cuts the client off from the server (every request hangs
    /// unanswered), or heals the cut.
    pub fn partition(&self, cut: bool) {
        self.partitioned.store(cut, Ordering::SeqCst);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::{Rng, SeedableRng};

    fn quantile(sorted: &[Duration], q: f64) -> Duration {
        sorted[((sorted.len() - 1) as f64 * q).round() as usize]
    }

    #[test]
    fn log_normal_draws_have_the_median_and_p99_asked_for() {
        let mut rng = rand::rngs::StdRng::seed_from_u64(7);
        for d in [Profile::AWS_S3_STANDARD.put, Profile::AWS_S3_STANDARD.get] {
            let mut v: Vec<Duration> = (0..200_000)
                .map(|_| d.at(rng.random(), rng.random()))
                .collect();
            v.sort();
            let near = |got: Duration, want: Duration, tol: f64| {
                let r = got.as_secs_f64() / want.as_secs_f64();
                assert!((1.0 - tol..=1.0 + tol).contains(&r), "{got:?} vs {want:?}");
            };
            near(quantile(&v, 0.5), d.median, 0.02);
            near(quantile(&v, 0.99), d.p99, 0.05);
        }
    }

    #[test]
    fn zero_and_degenerate_distributions() {
        assert_eq!(LogNormal::ZERO.at(0.3, 0.7), Duration::ZERO);
        // No tail: always the median (also for the extreme uniforms).
        let flat = LogNormal {
            median: Duration::from_millis(5),
            p99: Duration::from_millis(5),
        };
        assert_eq!(flat.at(0.0, 0.0), Duration::from_millis(5));
        assert_eq!(flat.at(0.999_999, 0.5), Duration::from_millis(5));
    }

    #[test]
    fn profiles_by_name() {
        assert_eq!(Profile::by_name("none"), Some(Profile::NONE));
        assert_eq!(
            Profile::by_name("aws-s3-standard"),
            Some(Profile::AWS_S3_STANDARD)
        );
        let cross = Profile::by_name("aws-cross-region").expect("known");
        assert_eq!(cross.one_way, Duration::from_millis(70));
        assert_eq!(
            Profile {
                name: Profile::AWS_S3_STANDARD.name,
                one_way: Duration::ZERO,
                ..cross
            },
            Profile::AWS_S3_STANDARD
        );
        assert_eq!(Profile::by_name("s3"), None);
        assert!(Profile::NONE.adds_nothing());
        assert!(!Profile::AWS_S3_STANDARD.adds_nothing());
    }

    #[test]
    fn puts_in_flight_are_counted_until_answered_or_abandoned() {
        let f = Arc::new(InFlight::default());
        let a = f.enter("/b/k");
        assert_eq!(f.others("/b/k"), 0);
        let b = f.enter("/b/k");
        let other = f.enter("/b/other");
        assert_eq!(f.others("/b/k"), 1);
        assert_eq!(f.others("/b/other"), 0);
        drop(a);
        assert_eq!(f.others("/b/k"), 0);
        drop((b, other));
        assert!(f.0.lock().unwrap().is_empty());
    }
}
