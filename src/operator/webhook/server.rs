//! The webhook's HTTPS server (axum on rustls).

use std::sync::Arc;

use axum::extract::State;
use axum::routing::post;
use axum::{Json, Router};
use axum_server::tls_rustls::RustlsConfig;
use kube::core::DynamicObject;
use kube::core::admission::{AdmissionRequest, AdmissionResponse, AdmissionReview};
use tokio::sync::mpsc;
use tracing::{debug, info, warn};

use super::mutate::{self, Verdict};
use crate::operator::http::Health;
use crate::operator::kinds::Gating;
use crate::operator::metrics::{Metrics, WebhookLabels};

/// What every review reads.
struct Shared {
    metrics: Arc<Metrics>,
    /// The user name of the controller's own requests.
    controller: String,
    /// The kinds held back besides Jobs.
    /// What is held back besides Jobs.
    gating: Gating,
}

async fn review(
    State(shared): State<Arc<Shared>>,
    Json(review): Json<AdmissionReview<DynamicObject>>,
) -> Json<AdmissionReview<DynamicObject>> {
    let request: Result<AdmissionRequest<DynamicObject>, _> = review.try_into();
    let (response, verdict) = match request {
        Ok(req) => {
            let (response, verdict) = mutate::respond(
                &req,
                &shared.controller,
                &shared.gating.kinds,
                shared.gating.pods,
            );
            if verdict == Verdict::KeptSuspended {
                info!(
                    namespace = req.namespace.as_deref().unwrap_or_default(),
                    name = %req.name,
                    user = req.user_info.username.as_deref().unwrap_or_default(),
                    kind = %req.kind.kind,
                    "webhook: kept a workload suspended that someone else resumed"
                );
            }
            debug!(
                namespace = req.namespace.as_deref().unwrap_or_default(),
                name = %req.name,
                verdict = verdict.as_str(),
                "webhook review"
            );
            (response, verdict)
        }
        Err(e) => {
            warn!(error = %e, "webhook: a review without a request");
            (AdmissionResponse::invalid(e), Verdict::Invalid)
        }
    };
    shared
        .metrics
        .webhook_reviews
        .get_or_create(&WebhookLabels {
            verdict: verdict.as_str().to_string(),
        })
        .inc();
    Json(response.into_review())
}

/// Serves `POST /mutate-jobs` on `listener` in the background; `tls` can be
/// reloaded with a new certificate while it runs. `controller` is the user
/// name of the controller's own requests: the only one that resumes Jobs.
pub fn serve(
    listener: std::net::TcpListener,
    tls: RustlsConfig,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    controller: String,
    gating: Gating,
    fatal: mpsc::UnboundedSender<String>,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(mutate::PATH, post(review))
        .with_state(Arc::new(Shared {
            metrics,
            controller,
            gating,
        }));
    let server = axum_server::from_tcp_rustls(listener, tls)?;
    tokio::spawn(async move {
        let ended = server.serve(app.into_make_service()).await;
        // Serving is what readiness promises: without it, the process
        // stops (`main` exits) so that the pod restarts.
        health.set_webhook_ready(false);
        let _ = fatal.send(match ended {
            Err(e) => format!("the webhook server stopped ({e}); exiting"),
            Ok(()) => "the webhook server stopped; exiting".to_string(),
        });
    });
    Ok(())
}
