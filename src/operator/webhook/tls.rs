//! Where the webhook's certificate comes from: a Secret the controller
//! keeps (and the CA it publishes in the webhook configuration), or files
//! that cert-manager writes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::Secret;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use serde_json::json;
use tracing::info;

use super::certs::{self, Material, Plan};

const CA_CERT: &str = "ca.crt";
const CA_KEY: &str = "ca.key";
const CERT: &str = "tls.crt";
const KEY: &str = "tls.key";

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read Secret {namespace}/{name} for the webhook's certificate: {reason}")]
    ReadSecret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error("cannot write Secret {namespace}/{name} with the webhook's certificate: {reason}")]
    WriteSecret {
        namespace: String,
        name: String,
        reason: String,
    },
    #[error(
        "Secret {namespace}/{name} for the webhook's certificate is missing and this identity may not create it; `helm upgrade` recreates it (the chart creates it empty)"
    )]
    SecretMissing { namespace: String, name: String },
    #[error("cannot set the caBundle of MutatingWebhookConfiguration {name}: {reason}")]
    PublishCa { name: String, reason: String },
    #[error(transparent)]
    Certificate(#[from] certs::CertError),
    #[error("reading {path}: {source}")]
    ReadFile {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("the webhook's certificate or key is not usable PEM: {0}")]
    Pem(String),
    #[error("the webhook's TLS settings: {0}")]
    Rustls(#[from] rustls::Error),
}

/// A serving certificate and key, PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Serving {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// The rustls settings for a serving certificate: HTTP/1.1 only, which is
/// all the API server needs for one short request per Job.
pub fn server_config(serving: &Serving) -> Result<Arc<ServerConfig>, TlsError> {
    let chain = CertificateDer::pem_slice_iter(&serving.cert)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::Pem(e.to_string()))?;
    if chain.is_empty() {
        return Err(TlsError::Pem("no certificate in it".into()));
    }
    let key =
        PrivateKeyDer::from_pem_slice(&serving.key).map_err(|e| TlsError::Pem(e.to_string()))?;
    let provider = Arc::new(rustls::crypto::aws_lc_rs::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// cert-manager's files (a mounted Secret: `tls.crt`, `tls.key`).
pub fn read_dir(dir: &Path) -> Result<Serving, TlsError> {
    let read = |name: &str| {
        let path = dir.join(name);
        std::fs::read(&path).map_err(|source| TlsError::ReadFile { path, source })
    };
    Ok(Serving {
        cert: read(CERT)?,
        key: read(KEY)?,
    })
}

/// The controller's own CA and serving certificate, kept in a Secret that
/// every replica shares.
#[derive(Clone)]
pub struct SelfManaged {
    pub secrets: Api<Secret>,
    pub namespace: String,
    pub secret: String,
    /// Names the serving certificate carries (DNS names and IP addresses).
    pub names: Vec<String>,
    pub configurations: Api<MutatingWebhookConfiguration>,
    /// The webhook configuration whose `caBundle` is kept current.
    pub configuration: Option<String>,
}

fn material(secret: &Secret) -> Option<Material> {
    let data = secret.data.as_ref()?;
    let get = |k: &str| {
        data.get(k)
            .and_then(|v| String::from_utf8(v.0.clone()).ok())
            .filter(|s| !s.is_empty())
    };
    Some(Material {
        ca_cert: get(CA_CERT)?,
        ca_key: get(CA_KEY)?,
        cert: get(CERT)?,
        key: get(KEY)?,
    })
}

fn data(m: &Material) -> BTreeMap<String, ByteString> {
    [
        (CA_CERT, &m.ca_cert),
        (CA_KEY, &m.ca_key),
        (CERT, &m.cert),
        (KEY, &m.key),
    ]
    .into_iter()
    .map(|(k, v)| (k.to_string(), ByteString(v.clone().into_bytes())))
    .collect()
}

impl SelfManaged {
    pub fn new(
        client: Client,
        namespace: String,
        secret: String,
        names: Vec<String>,
        configuration: Option<String>,
    ) -> Self {
        SelfManaged {
            secrets: Api::namespaced(client.clone(), &namespace),
            namespace,
            secret,
            names,
            configurations: Api::all(client),
            configuration,
        }
    }

    fn read_error(&self, e: kube::Error) -> TlsError {
        TlsError::ReadSecret {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
            reason: describe(&e),
        }
    }

    fn missing_error(&self) -> TlsError {
        TlsError::SecretMissing {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
        }
    }

    fn write_error(&self, e: kube::Error) -> TlsError {
        TlsError::WriteSecret {
            namespace: self.namespace.clone(),
            name: self.secret.clone(),
            reason: describe(&e),
        }
    }

    /// The certificates in the Secret, renewed first if they no longer
    /// serve. Replicas race on the Secret's resourceVersion: a loser
    /// re-reads and takes the winner's, so all serve one certificate.
    pub async fn current(&self) -> Result<Material, TlsError> {
        let mut attempts = 0;
        loop {
            attempts += 1;
            let existing = self
                .secrets
                .get_opt(&self.secret)
                .await
                .map_err(|e| self.read_error(e))?;
            let found = existing.as_ref().and_then(material);
            let now = SystemTime::now();
            let plan = certs::plan(found.as_ref(), &self.names, now);
            let why = match (plan, found.as_ref()) {
                (Plan::Keep, Some(found)) => return Ok(found.clone()),
                (Plan::Keep, None) => "no certificate yet",
                (Plan::NewCa(why) | Plan::NewLeaf(why), _) => why,
            };
            let fresh = certs::issue(plan, found.as_ref(), &self.names, now)?;
            let created = existing.is_none();
            let written = match existing {
                Some(mut secret) => {
                    secret.data = Some(data(&fresh));
                    self.secrets
                        .replace(&self.secret, &PostParams::default(), &secret)
                        .await
                }
                None => {
                    let mut secret = Secret {
                        data: Some(data(&fresh)),
                        ..Default::default()
                    };
                    secret.metadata.name = Some(self.secret.clone());
                    secret.metadata.namespace = Some(self.namespace.clone());
                    self.secrets.create(&PostParams::default(), &secret).await
                }
            };
            match written {
                Ok(_) => {
                    info!(secret = %format!("{}/{}", self.namespace, self.secret), reason = why, "wrote a new webhook certificate");
                    return Ok(fresh);
                }
                // Another replica wrote first: use its certificate.
                Err(kube::Error::Api(e)) if e.code == 409 && attempts < 5 => continue,
                Err(kube::Error::Api(e)) if e.code == 403 && created => {
                    return Err(self.missing_error());
                }
                Err(e) => return Err(self.write_error(e)),
            }
        }
    }

    /// Publishes `ca` in every webhook's `caBundle` (with the previous CA
    /// while it is valid, see [`certs::bundle`]), unless it is there
    /// already. Returns whether it changed anything. A concurrent change
    /// (another replica, Helm's upgrade) is retried at once from a fresh
    /// read.
    pub async fn publish(&self, ca: &str) -> Result<bool, TlsError> {
        let Some(name) = &self.configuration else {
            return Ok(false);
        };
        let mut attempts = 0;
        loop {
            attempts += 1;
            match self.publish_once(name, ca).await {
                Err(kube::Error::Api(e)) if matches!(e.code, 409 | 422) && attempts < 5 => {
                    continue;
                }
                Err(e) => {
                    return Err(TlsError::PublishCa {
                        name: name.clone(),
                        reason: describe(&e),
                    });
                }
                Ok(changed) => return Ok(changed),
            }
        }
    }

    async fn publish_once(&self, name: &str, ca: &str) -> Result<bool, kube::Error> {
        let config = self.configurations.get(name).await?;
        let now = SystemTime::now();
        let mut ops = Vec::new();
        for (i, webhook) in config.webhooks.iter().flatten().enumerate() {
            let current = webhook
                .client_config
                .ca_bundle
                .as_ref()
                .and_then(|b| String::from_utf8(b.0.clone()).ok());
            let want = certs::bundle(ca, current.as_deref(), now);
            if current.as_deref() != Some(want.as_str()) {
                let value = ByteString(want.into_bytes());
                ops.push(json!({
                    "op": "add",
                    "path": format!("/webhooks/{i}/clientConfig/caBundle"),
                    "value": value,
                }));
            }
        }
        if ops.is_empty() {
            return Ok(false);
        }
        // A JSON patch (the chart grants patch, not update) that first
        // tests the resourceVersion read, so that it applies to the
        // webhooks as read: a concurrent change fails it with 422.
        ops.insert(
            0,
            json!({"op": "test", "path": "/metadata/resourceVersion", "value": config.resource_version()}),
        );
        let patch: json_patch::Patch = serde_json::from_value(serde_json::Value::Array(ops))
            .map_err(kube::Error::SerdeError)?;
        self.configurations
            .patch(name, &PatchParams::default(), &Patch::Json::<()>(patch))
            .await?;
        info!(configuration = %config.name_any(), "published the webhook's CA");
        Ok(true)
    }
}

/// A Kubernetes error in one sentence: the API server's own message, not
/// the client's whole status object.
fn describe(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) if status.code == 403 => format!(
            "{} (the chart's RBAC grants it: get and update on the Secret, get and patch on the webhook configuration)",
            status.message
        ),
        kube::Error::Api(status) => status.message.clone(),
        other => other.to_string(),
    }
}
