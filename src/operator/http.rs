//! The controller's small HTTP server: `/metrics`, `/healthz`, `/readyz`.
//! (The webhook has its own HTTPS server: `super::webhook`.)

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::{debug, warn};

/// Whether the process can serve: set once the controller (or the standby
/// loop waiting for leadership) runs.
#[derive(Debug, Default)]
pub struct Health {
    ready: AtomicBool,
    /// Set while the webhook is on but not serving yet (no certificate):
    /// the Service then sends the API server to a replica that serves.
    webhook_unready: AtomicBool,
}

impl Health {
    pub fn set_ready(&self, ready: bool) {
        self.ready.store(ready, Ordering::Relaxed);
    }

    pub fn set_webhook_ready(&self, ready: bool) {
        self.webhook_unready.store(!ready, Ordering::Relaxed);
    }

    pub fn is_ready(&self) -> bool {
        self.ready.load(Ordering::Relaxed) && !self.webhook_unready.load(Ordering::Relaxed)
    }
}

/// Binds `addr` now (so a taken port fails at startup), then serves in the
/// background until the runtime stops.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (stream, _) = match listener.accept().await {
                Ok(conn) => conn,
                Err(e) => {
                    // Out of file descriptors, say: retrying at once would
                    // spin on the same error.
                    warn!(error = %e, "metrics server: accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let registry = registry.clone();
            let health = health.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let response = route(&req, &registry, &health);
                    async move { Ok::<_, Infallible>(response) }
                });
                if let Err(e) = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await
                {
                    debug!(error = %e, "metrics server: connection ended");
                }
            });
        }
    });
    Ok(bound)
}

fn route(req: &Request<Incoming>, registry: &Registry, health: &Health) -> Response<Full<Bytes>> {
    match req.uri().path() {
        "/metrics" => reply(
            StatusCode::OK,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
            super::metrics::render(registry),
        ),
        "/healthz" => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" if health.is_ready() => reply(StatusCode::OK, "text/plain", "ok\n".into()),
        "/readyz" => reply(
            StatusCode::SERVICE_UNAVAILABLE,
            "text/plain",
            "not ready\n".into(),
        ),
        _ => reply(StatusCode::NOT_FOUND, "text/plain", "not found\n".into()),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response
            .headers_mut()
            .insert(hyper::header::CONTENT_TYPE, value);
    }
    response
}
