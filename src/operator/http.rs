//! The controller's small HTTP server: `/metrics`, `/healthz`, `/readyz`.
//! (The webhook has its own HTTPS server: `super::webhook`.)

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;
use tracing::warn;

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
/// background until the runtime stops. axum, as the webhook's server is.
pub async fn serve(
    addr: SocketAddr,
    registry: Arc<Registry>,
    health: Arc<Health>,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let app = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .fallback(|| async { (StatusCode::NOT_FOUND, "not found\n") })
        .with_state(Served { registry, health });
    tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app).await {
            warn!(error = %e, "metrics server stopped");
        }
    });
    Ok(bound)
}

#[derive(Clone)]
struct Served {
    registry: Arc<Registry>,
    health: Arc<Health>,
}

async fn metrics(State(s): State<Served>) -> impl IntoResponse {
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        super::metrics::render(&s.registry),
    )
}

async fn readyz(State(s): State<Served>) -> impl IntoResponse {
    if s.health.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    async fn get(addr: SocketAddr, path: &str) -> String {
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
            .await
            .unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn serves_metrics_and_health_and_readiness_follows_the_controller() {
        let mut registry = Registry::default();
        let _metrics = super::super::metrics::Metrics::new(&mut registry);
        let health = Arc::new(Health::default());
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(registry),
            health.clone(),
        )
        .await
        .unwrap();
        let metrics = get(addr, "/metrics").await;
        assert!(metrics.contains(" 200 OK"), "{metrics}");
        assert!(
            metrics.contains("application/openmetrics-text"),
            "{metrics}"
        );
        assert!(metrics.contains("jobgate_build_info"), "{metrics}");
        assert!(get(addr, "/healthz").await.ends_with("ok\n"));
        assert!(get(addr, "/readyz").await.contains(" 503 "));
        health.set_ready(true);
        assert!(get(addr, "/readyz").await.ends_with("ok\n"));
        // The webhook on but without its certificate yet: not ready.
        health.set_webhook_ready(false);
        assert!(get(addr, "/readyz").await.contains(" 503 "));
        assert!(get(addr, "/nothing").await.contains(" 404 "));
    }
}
