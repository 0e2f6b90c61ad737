//! A small fault-injecting HTTP proxy between the S3 client and SeaweedFS.
//! Per request it may: drop the response after the server applied the write,
//! answer 500/503 (before or after forwarding), answer 409
//! ConditionalRequestConflict without forwarding, or delay. On demand it
//! also holds requests until told to let them go: every PUT's answer (the
//! write lands, its client waits), or the reads of one object signed with
//! one access key; and it can answer reads of missing objects with 403, as
//! AWS does for callers without `s3:ListBucket`.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

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
}

impl FaultCounts {
    pub fn injected(&self) -> u64 {
        [
            &self.dropped_after_apply,
            &self.error_500,
            &self.error_503_after,
            &self.conflict_409,
            &self.delayed,
        ]
        .iter()
        .map(|c| c.load(Ordering::Relaxed))
        .sum()
    }
}

pub struct FaultProxy {
    pub endpoint: String,
    pub counts: Arc<FaultCounts>,
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
}

async fn handle(
    req: Request<Incoming>,
    shared: Arc<Shared>,
    mut orders: tokio::sync::watch::Receiver<Orders>,
) -> Result<Response<Full<Bytes>>, Dropped> {
    let Shared {
        client,
        upstream,
        faults,
        counts,
        partitioned,
    } = &*shared;
    let faults = *faults;
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
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind proxy");
        let endpoint = format!("http://{}", listener.local_addr().expect("proxy addr"));
        let counts = Arc::new(FaultCounts::default());
        let partitioned = Arc::new(AtomicBool::new(false));
        let shared = Arc::new(Shared {
            client: Client::builder(TokioExecutor::new()).build_http(),
            upstream: upstream.trim_end_matches('/').to_string(),
            faults,
            counts: counts.clone(),
            partitioned: partitioned.clone(),
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
