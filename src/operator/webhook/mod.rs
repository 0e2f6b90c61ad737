//! The mutating admission webhook: labelled Jobs are created suspended,
//! and stay suspended until the controller resumes them.
//!
//! Every replica serves it, leader or not, so that a standby keeps Job
//! creation working while leadership changes hands. The webhook
//! configuration's `objectSelector` sends only Jobs with the group label
//! here: an outage of jobgate never blocks anyone else's Jobs.

pub mod certs;
pub mod mutate;
pub mod pods;
pub mod server;
pub mod tls;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use axum_server::tls_rustls::RustlsConfig;
use kube::Client;
use tracing::{info, warn};

use super::http::Health;
use super::kinds::{Gating, KindSpec};
use super::metrics::Metrics;
use tls::{SelfManaged, Serving, TlsError};

/// Where the serving certificate comes from.
#[derive(Debug, Clone)]
pub enum CertSource {
    /// `tls.crt` and `tls.key` in a directory (cert-manager's Secret,
    /// mounted), re-read when they change.
    Dir(PathBuf),
    /// A CA and certificate the controller makes and keeps in a Secret,
    /// publishing the CA in the webhook configuration.
    SelfManaged {
        namespace: String,
        secret: String,
        /// The names in the serving certificate.
        names: Vec<String>,
        /// The MutatingWebhookConfiguration whose `caBundle` to keep.
        configuration: Option<String>,
    },
}

#[derive(Debug, Clone)]
pub struct WebhookSettings {
    pub listen: SocketAddr,
    pub certs: CertSource,
    /// The kinds it holds back besides Jobs (`--workload-kinds`).
    pub kinds: Arc<Vec<Arc<KindSpec>>>,
    /// Plain Pods get a scheduling gate.
    pub gate_pods: bool,
}

/// The names a certificate for Service `service` in `namespace` carries,
/// as the API server asks for them, plus `extra` (IP addresses or DNS names
/// for a URL-based configuration).
pub fn service_names(service: Option<&str>, namespace: &str, extra: &[String]) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    if let Some(s) = service {
        names.push(s.to_string());
        names.push(format!("{s}.{namespace}"));
        names.push(format!("{s}.{namespace}.svc"));
        names.push(format!("{s}.{namespace}.svc.cluster.local"));
    }
    names.extend(extra.iter().cloned());
    certs::normalize(&names)
}

/// How often the certificate is looked at again: renewals happen a month
/// ahead, so this only bounds how soon a replaced Secret or a changed CA
/// is noticed.
const REFRESH: Duration = Duration::from_secs(60);
/// cert-manager renews by rewriting the mounted files.
const REFRESH_DIR: Duration = Duration::from_secs(10);
/// Until the first certificate is there, retry this often.
const RETRY: Duration = Duration::from_secs(5);

enum Source {
    Dir(PathBuf),
    SelfManaged(Box<SelfManaged>),
}

impl Source {
    async fn load(&self) -> Result<Serving, TlsError> {
        match self {
            Source::Dir(dir) => tls::read_dir(dir),
            Source::SelfManaged(m) => {
                let material = m.current().await?;
                m.publish(&material.ca_cert).await?;
                Ok(Serving {
                    cert: material.cert.into_bytes(),
                    key: material.key.into_bytes(),
                })
            }
        }
    }
}

/// Binds now (a taken port fails startup), then in the background gets
/// the first certificate, serves, and keeps the certificate current. The
/// process reports ready only once the webhook serves.
pub async fn start(
    client: Client,
    settings: WebhookSettings,
    metrics: Arc<Metrics>,
    health: Arc<Health>,
    fatal: tokio::sync::mpsc::UnboundedSender<String>,
) -> std::io::Result<SocketAddr> {
    let listener = std::net::TcpListener::bind(settings.listen)?;
    listener.set_nonblocking(true)?;
    let bound = listener.local_addr()?;
    let gating = Gating {
        kinds: settings.kinds.clone(),
        pods: settings.gate_pods,
    };
    let (source, refresh) = match settings.certs {
        CertSource::Dir(dir) => (Source::Dir(dir), REFRESH_DIR),
        CertSource::SelfManaged {
            namespace,
            secret,
            names,
            configuration,
        } => (
            Source::SelfManaged(Box::new(SelfManaged::new(
                client.clone(),
                namespace,
                secret,
                names,
                configuration,
            ))),
            REFRESH,
        ),
    };
    health.set_webhook_ready(false);
    tokio::spawn(async move {
        // Before serving: a webhook that cannot tell the controller's own
        // requests apart would keep every Job suspended.
        let controller = loop {
            match own_user_name(&client).await {
                Ok(name) => break name,
                Err(e) => {
                    warn!(error = %e, "webhook: cannot learn this controller's user name yet; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        info!(user = %controller, "webhook: only this user resumes Jobs of a group");
        let (mut serving, config) = loop {
            match source
                .load()
                .await
                .and_then(|s| Ok((tls::server_config(&s)?, s)))
            {
                Ok((config, serving)) => break (serving, config),
                Err(e) => {
                    warn!(error = %e, "webhook: no serving certificate yet; retrying");
                    tokio::time::sleep(RETRY).await;
                }
            }
        };
        let rustls = RustlsConfig::from_config(config);
        if let Err(e) = server::serve(
            listener,
            rustls.clone(),
            metrics,
            health.clone(),
            controller,
            gating,
            fatal.clone(),
        ) {
            // Unready for good would only hide it: the process stops
            // (`main` exits), so that the pod restarts and the failure shows.
            let _ = fatal.send(format!("webhook: cannot serve ({e}); exiting"));
            return;
        }
        info!(addr = %bound, path = mutate::PATH, "serving the Job webhook");
        health.set_webhook_ready(true);
        loop {
            tokio::time::sleep(refresh).await;
            match source.load().await {
                Ok(next) if next != serving => match tls::server_config(&next) {
                    Ok(config) => {
                        rustls.reload_from_config(config);
                        serving = next;
                        info!("webhook: serving a new certificate");
                    }
                    Err(e) => {
                        warn!(error = %e, "webhook: new certificate unusable; keeping the old one")
                    }
                },
                Ok(_) => {}
                // The certificate in use stays valid for weeks: keep it.
                Err(e) => warn!(error = %e, "webhook: could not check the certificate"),
            }
        }
    });
    Ok(bound)
}

/// The user name this process's requests carry, as the API server
/// authenticates them (a SelfSubjectReview, which every authenticated user
/// may create): the name admission requests from this controller show.
async fn own_user_name(client: &Client) -> Result<String, kube::Error> {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let api: kube::Api<SelfSubjectReview> = kube::Api::all(client.clone());
    let review = api
        .create(
            &kube::api::PostParams::default(),
            &SelfSubjectReview::default(),
        )
        .await?;
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .ok_or_else(|| {
            kube::Error::Service("the API server's SelfSubjectReview named no user".into())
        })
}
