//! The Azure Blob Storage backend, on arrow-rs `object_store`.
//!
//! Azure's conditions are the HTTP ones: `If-None-Match: *` creates only
//! where no blob exists (409 BlobAlreadyExists otherwise) and `If-Match:
//! <etag>` writes only over that version (412). `object_store` sends both,
//! and brings Azure's credential chain: an account key, workload identity
//! (`AZURE_CLIENT_ID`, `AZURE_TENANT_ID`, `AZURE_FEDERATED_TOKEN_FILE`, as
//! AKS injects them), a service principal, then managed identity.
//!
//! Its retries are turned off: a retried conditional write whose first
//! attempt landed comes back 412, which only a re-read can tell from a lost
//! race. The semaphore does every retry itself, after re-reading.

use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::azure::{MicrosoftAzure, MicrosoftAzureBuilder};
use object_store::client::{HttpError, HttpErrorKind};
use object_store::path::Path;
use object_store::{
    ClientOptions, GetOptions, ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload,
    RetryConfig, UpdateVersion,
};
use tracing::debug;

use super::s3::innermost;
use super::{Condition, ETag, Fetched, Store, StoreError, Versioned};

/// How to reach the account. Unset fields use Azure's environment
/// variables (`AZURE_STORAGE_*`, `AZURE_CLIENT_ID`, ...).
#[derive(Clone, Default)]
pub struct AzureOptions {
    /// The blob service's URL when it is not
    /// `https://ACCOUNT.blob.core.windows.net`: another cloud, a private
    /// endpoint, or an emulator (Azurite: `http://127.0.0.1:10000/devstoreaccount1`).
    pub endpoint: Option<String>,
    /// The storage account's shared key, instead of the environment's
    /// identity (`AZURE_STORAGE_ACCOUNT_KEY` does the same from outside).
    pub access_key: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

/// Written out so that the account key never reaches a log through `{:?}`.
impl std::fmt::Debug for AzureOptions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AzureOptions")
            .field("endpoint", &self.endpoint)
            .field(
                "access_key",
                &self.access_key.as_ref().map(|_| "<redacted>"),
            )
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[derive(Debug)]
pub struct AzureStore {
    inner: MicrosoftAzure,
    account: String,
    container: String,
    endpoint: String,
}

/// What a write could have done, which decides `Ambiguous` against
/// `Unavailable` for an answer that never came.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Effect {
    Read,
    Write,
}

impl AzureStore {
    /// A client for `container` in `account`. Fails only when the
    /// configuration is unusable (a malformed key, say); missing credentials
    /// surface on the first request.
    pub fn connect(
        account: &str,
        container: &str,
        opts: &AzureOptions,
    ) -> Result<Self, StoreError> {
        let endpoint = opts
            .endpoint
            .clone()
            .unwrap_or_else(|| format!("https://{account}.blob.core.windows.net"));
        let mut builder = MicrosoftAzureBuilder::from_env()
            .with_account(account)
            .with_container_name(container)
            .with_retry(RetryConfig {
                max_retries: 0,
                ..Default::default()
            })
            .with_client_options(
                ClientOptions::new()
                    .with_connect_timeout(opts.connect_timeout.unwrap_or(Duration::from_secs(3)))
                    .with_timeout(opts.request_timeout.unwrap_or(Duration::from_secs(10)))
                    .with_allow_http(endpoint.starts_with("http://")),
            );
        if opts.endpoint.is_some() {
            builder = builder.with_endpoint(endpoint.clone());
        }
        if let Some(key) = &opts.access_key {
            builder = builder.with_access_key(key);
        }
        let inner = builder.build().map_err(|e| {
            StoreError::AccessDenied(format!(
                "cannot set up Azure credentials for account {account} ({})",
                innermost(&e)
            ))
        })?;
        Ok(AzureStore {
            inner,
            account: account.to_string(),
            container: container.to_string(),
            endpoint,
        })
    }

    fn classify(&self, err: object_store::Error, effect: Effect) -> StoreError {
        let classified = classify(&self.account, &self.container, &self.endpoint, &err, effect);
        if !matches!(classified, StoreError::Conflict(_) | StoreError::Missing) {
            debug!(account = %self.account, container = %self.container, detail = %err, "Azure request failed: {classified}");
        }
        classified
    }
}

/// Which `StoreError` an `object_store` error is. Its typed variants carry
/// the statuses that matter; what is left is a transport failure (typed as
/// `HttpError` somewhere in the chain) or another status.
fn classify(
    account: &str,
    container: &str,
    endpoint: &str,
    err: &object_store::Error,
    effect: Effect,
) -> StoreError {
    use object_store::Error as E;
    match err {
        E::Precondition { .. } => StoreError::Conflict("ETag precondition failed".into()),
        E::AlreadyExists { .. } => StoreError::Conflict("the blob already exists".into()),
        E::NotFound { .. } if err.to_string().contains("ContainerNotFound") => {
            StoreError::NoSuchBucket(format!("{account}/{container}"))
        }
        E::NotFound { .. } => StoreError::Missing,
        E::Unauthenticated { .. } => StoreError::AccessDenied(format!(
            "{endpoint} rejected the credentials: check the workload identity or the account key"
        )),
        E::PermissionDenied { .. } => StoreError::AccessDenied(format!(
            "access to az://{account}/{container} denied: grant Storage Blob Data Contributor on the container"
        )),
        E::NotSupported { .. } | E::NotImplemented { .. } => {
            StoreError::Unsupported(innermost(err))
        }
        _ => {
            let http = super::s3::source_chain(err)
                .into_iter()
                .find_map(|e| e.downcast_ref::<HttpError>())
                .map(HttpError::kind);
            match (http, effect) {
                (Some(HttpErrorKind::Connect), _) => StoreError::Unavailable(format!(
                    "cannot connect to {endpoint} ({})",
                    innermost(err)
                )),
                (Some(HttpErrorKind::Timeout), Effect::Write) => {
                    StoreError::Ambiguous(format!("{endpoint} did not answer a write in time"))
                }
                (Some(HttpErrorKind::Timeout), Effect::Read) => {
                    StoreError::Unavailable(format!("{endpoint} did not answer in time"))
                }
                (Some(_), Effect::Write) => StoreError::Ambiguous(format!(
                    "the connection to {endpoint} broke off during a write ({})",
                    innermost(err)
                )),
                (None, Effect::Write) => StoreError::Ambiguous(format!(
                    "{endpoint} failed a write, which may have landed ({})",
                    innermost(err)
                )),
                (_, Effect::Read) => StoreError::Unavailable(format!(
                    "{endpoint} failed a read ({})",
                    innermost(err)
                )),
            }
        }
    }
}

#[async_trait]
impl Store for AzureStore {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        let opts = GetOptions {
            if_none_match: if_none_match.map(|e| e.0.clone()),
            ..Default::default()
        };
        let result = match self.inner.get_opts(&Path::from(key), opts).await {
            Ok(r) => r,
            Err(object_store::Error::NotModified { .. }) => return Ok(Fetched::NotModified),
            Err(e) => {
                return match self.classify(e, Effect::Read) {
                    StoreError::Missing => Ok(Fetched::Missing),
                    other => Err(other),
                };
            }
        };
        let etag = result
            .meta
            .e_tag
            .clone()
            .map(ETag)
            .ok_or_else(|| StoreError::Other("Azure returned no ETag".into()))?;
        let body = result
            .bytes()
            .await
            .map_err(|e| self.classify(e, Effect::Read))?;
        Ok(Fetched::Found(Versioned { body, etag }))
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        let mode = match &condition {
            Condition::Create => PutMode::Create,
            Condition::Match(etag) => PutMode::Update(UpdateVersion {
                e_tag: Some(etag.0.clone()),
                version: None,
            }),
        };
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match self
            .inner
            .put_opts(&Path::from(key), PutPayload::from_bytes(body), opts)
            .await
        {
            Ok(done) => done.e_tag.map(ETag).ok_or_else(|| {
                StoreError::Ambiguous("Azure accepted the write but returned no ETag".into())
            }),
            Err(e) => Err(self.classify(e, Effect::Write)),
        }
    }

    /// `object_store` deletes unconditionally, so the ETag is compared
    /// first. Only doctor's probe objects, whose names no one else uses,
    /// are ever deleted; a ledger never is.
    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        let path = Path::from(key);
        let meta = self
            .inner
            .head(&path)
            .await
            .map_err(|e| self.classify(e, Effect::Read))?;
        if meta.e_tag.as_deref() != Some(etag.0.as_str()) {
            return Err(StoreError::Conflict("the blob changed".into()));
        }
        self.inner
            .delete(&path)
            .await
            .map_err(|e| self.classify(e, Effect::Write))
    }

    fn describe(&self) -> String {
        format!("az://{}/{}", self.account, self.container)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn c(err: object_store::Error, effect: Effect) -> StoreError {
        classify(
            "acct",
            "box",
            "https://acct.blob.core.windows.net",
            &err,
            effect,
        )
    }

    fn boxed(text: &str) -> Box<dyn std::error::Error + Send + Sync> {
        text.to_string().into()
    }

    #[test]
    fn lost_races_and_missing_blobs_are_told_apart() {
        let path = String::from("k");
        assert!(matches!(
            c(
                object_store::Error::Precondition {
                    path: path.clone(),
                    source: boxed("412")
                },
                Effect::Write
            ),
            StoreError::Conflict(_)
        ));
        assert!(matches!(
            c(
                object_store::Error::AlreadyExists {
                    path: path.clone(),
                    source: boxed("409")
                },
                Effect::Write
            ),
            StoreError::Conflict(_)
        ));
        assert_eq!(
            c(
                object_store::Error::NotFound {
                    path: path.clone(),
                    source: boxed("BlobNotFound")
                },
                Effect::Read
            ),
            StoreError::Missing
        );
        assert_eq!(
            c(
                object_store::Error::NotFound {
                    path,
                    source: boxed("ContainerNotFound")
                },
                Effect::Write
            ),
            StoreError::NoSuchBucket("acct/box".into())
        );
    }

    #[test]
    fn an_unexplained_failure_is_ambiguous_only_for_a_write() {
        let err = || object_store::Error::Generic {
            store: "MicrosoftAzure",
            source: boxed("503 Server Busy"),
        };
        assert!(matches!(c(err(), Effect::Write), StoreError::Ambiguous(_)));
        assert!(matches!(c(err(), Effect::Read), StoreError::Unavailable(_)));
    }
}
