//! The S3 backend (AWS S3 and S3-compatible stores).
//!
//! The SDK's own retries are disabled: a retried conditional write whose first
//! attempt landed comes back as 412, which only a re-read can tell from a real
//! lost race. The semaphore does every retry itself, after re-reading.

use std::time::Duration;

use async_trait::async_trait;
use aws_config::default_provider::region::DefaultRegionChain;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;
use tracing::debug;

use super::{Condition, ETag, Fetched, Store, StoreError, Versioned};

pub mod ca;
mod messages;

use messages::{
    Cause, Target, classify_service, context, credentials_problem, endpoint_name, read_denied,
};
/// One line naming an error's innermost cause, shared with the other
/// backends' messages.
pub(crate) use messages::{innermost, source_chain};

/// How to reach the store. Unset fields fall back to the standard AWS
/// configuration chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, IRSA, ...).
#[derive(Clone, Default)]
pub struct S3Options {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    /// Path-style addressing; defaults to on when an endpoint is given.
    pub force_path_style: Option<bool>,
    /// Static credentials, mainly for tests and Kubernetes Secrets.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

/// Written out so that the static credentials never reach a log through
/// `{:?}`: the controller fills them from tenants' Secrets.
impl std::fmt::Debug for S3Options {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let redacted = |v: &Option<String>| v.as_ref().map(|_| "<redacted>");
        f.debug_struct("S3Options")
            .field("endpoint", &self.endpoint)
            .field("region", &self.region)
            .field("force_path_style", &self.force_path_style)
            .field("access_key_id", &redacted(&self.access_key_id))
            .field("secret_access_key", &redacted(&self.secret_access_key))
            .field("connect_timeout", &self.connect_timeout)
            .field("request_timeout", &self.request_timeout)
            .finish()
    }
}

#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
    target: Target,
}

/// The region when none is configured anywhere (as the CLI documents).
const DEFAULT_REGION: &str = "us-east-1";

impl S3Store {
    pub async fn connect(bucket: &str, opts: &S3Options) -> Self {
        // Resolved once here instead of by the loader: left unset, the loader,
        // the credentials chain and the SSO token chain each run the region
        // chain again, and off EC2 each run waits about a second for IMDS
        // before giving up.
        let region = match &opts.region {
            Some(region) => Region::new(region.clone()),
            None => DefaultRegionChain::builder()
                .build()
                .region()
                .await
                .unwrap_or_else(|| Region::new(DEFAULT_REGION)),
        };
        let mut loader =
            aws_config::defaults(aws_config::BehaviorVersion::latest()).region(region.clone());
        if let (Some(id), Some(secret)) = (&opts.access_key_id, &opts.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "jobgate",
            ));
        }
        // Checked at startup (`ca::from_env` in the CLI and the controller),
        // so an error here was already reported.
        if let Ok(Some(pem)) = ca::from_env()
            && let Ok(client) = ca::https_client(pem)
        {
            loader = loader.http_client(client);
        }
        let shared = loader.load().await;
        let connect_timeout = opts.connect_timeout.unwrap_or(Duration::from_secs(3));
        let attempt_timeout = opts.request_timeout.unwrap_or(Duration::from_secs(10));
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(connect_timeout)
                    .operation_attempt_timeout(attempt_timeout)
                    .build(),
            );
        if let Some(endpoint) = &opts.endpoint {
            config = config.endpoint_url(endpoint);
        }
        // The endpoint requests go to, resolved once, as the SDK does: the
        // flag, then AWS_ENDPOINT_URL_S3, then the shared configuration
        // (AWS_ENDPOINT_URL, profiles), else AWS itself. It names the
        // store in messages and tells S3-compatible stores from AWS.
        let s3_env = std::env::var("AWS_ENDPOINT_URL_S3").ok();
        let ignore_env = std::env::var("AWS_IGNORE_CONFIGURED_ENDPOINT_URLS").ok();
        let endpoint = endpoint_name(
            opts.endpoint.as_deref(),
            s3_env.as_deref(),
            ignore_env.as_deref(),
            shared.endpoint_url(),
            region.as_ref(),
        );
        let custom_endpoint = !endpoint.contains("amazonaws.com");
        config = config.force_path_style(opts.force_path_style.unwrap_or(custom_endpoint));
        if custom_endpoint {
            // Many S3-compatible stores reject or mishandle the CRC checksums
            // the SDK adds to every PUT by default.
            config = config
                .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
                .response_checksum_validation(ResponseChecksumValidation::WhenRequired);
        }
        S3Store {
            client: aws_sdk_s3::Client::from_conf(config.build()),
            bucket: bucket.to_string(),
            target: Target {
                endpoint,
                connect_timeout,
                attempt_timeout,
            },
        }
    }

    /// Which `StoreError` a failure is decides correctness (retry, re-read,
    /// give up), so it depends only on the SDK's error kind. The message is
    /// one sentence naming the cause; the SDK's full context goes to the
    /// debug log (`jobgate -v`), because it is long and mostly `Debug` dumps.
    fn classify<E>(&self, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        let t = &self.target;
        let classified = match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                classify_service(&self.bucket, &t.endpoint, status, service.err().code())
            }
            SdkError::TimeoutError(_) => StoreError::Ambiguous(Cause::Timeout.sentence(t)),
            SdkError::DispatchFailure(_) if credentials_problem(&context(&err)) => {
                StoreError::AccessDenied(Cause::of(&err).sentence(t))
            }
            SdkError::DispatchFailure(d) if d.is_timeout() => {
                StoreError::Ambiguous(Cause::of(&err).sentence(t))
            }
            SdkError::DispatchFailure(d) if d.is_io() => {
                // The connection failed; the request may have been sent already.
                StoreError::Ambiguous(Cause::of(&err).sentence(t))
            }
            SdkError::DispatchFailure(_) => StoreError::Unavailable(Cause::of(&err).sentence(t)),
            SdkError::ResponseError(_) => StoreError::Ambiguous(format!(
                "unreadable answer from {} ({})",
                t.endpoint,
                innermost(&err)
            )),
            SdkError::ConstructionFailure(_) if credentials_problem(&context(&err)) => {
                StoreError::AccessDenied(Cause::of(&err).sentence(t))
            }
            SdkError::ConstructionFailure(_) => {
                StoreError::Other(format!("cannot build the S3 request ({})", innermost(&err)))
            }
            _ => StoreError::Other(format!("S3 request failed ({})", innermost(&err))),
        };
        // Lost races are routine; everything else is worth its detail.
        if !matches!(classified, StoreError::Conflict(_) | StoreError::Missing) {
            debug!(
                bucket = %self.bucket,
                endpoint = %t.endpoint,
                detail = %context(&err),
                "S3 request failed: {classified}"
            );
        }
        classified
    }
}

#[async_trait]
impl Store for S3Store {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        let mut req = self.client.get_object().bucket(&self.bucket).key(key);
        if let Some(etag) = if_none_match {
            req = req.if_none_match(&etag.0);
        }
        let out = match req.send().await {
            Ok(out) => out,
            Err(SdkError::ServiceError(s)) if s.raw().status().as_u16() == 304 => {
                return Ok(Fetched::NotModified);
            }
            Err(e) => {
                // Not a rejected key or token: the caller is known and was
                // refused this object.
                let refused = matches!(&e, SdkError::ServiceError(s)
                    if s.raw().status().as_u16() == 403
                        && matches!(s.err().code(), None | Some("AccessDenied")));
                return match self.classify(e) {
                    StoreError::Missing => Ok(Fetched::Missing),
                    // A failed read changed nothing, so it is never ambiguous.
                    StoreError::Ambiguous(m) => Err(StoreError::Unavailable(m)),
                    StoreError::AccessDenied(_) if refused => {
                        Err(StoreError::AccessDenied(read_denied(&self.bucket, key)))
                    }
                    other => Err(other),
                };
            }
        };
        let etag = out
            .e_tag()
            .map(|e| ETag(e.to_string()))
            .ok_or_else(|| StoreError::Other("the store returned no ETag".into()))?;
        let body = out
            .body
            .collect()
            .await
            .map_err(|e| {
                debug!(detail = %DisplayErrorContext(&e), "reading an S3 response body failed");
                StoreError::Unavailable(format!(
                    "the answer from {} broke off ({})",
                    self.target.endpoint,
                    innermost(&e)
                ))
            })?
            .into_bytes();
        Ok(Fetched::Found(Versioned { body, etag }))
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        let mut req = self
            .client
            .put_object()
            .bucket(&self.bucket)
            .key(key)
            .content_type("application/json")
            .body(ByteStream::from(body));
        req = match &condition {
            Condition::Create => req.if_none_match("*"),
            Condition::Match(etag) => req.if_match(&etag.0),
        };
        match req.send().await {
            Ok(out) => out.e_tag().map(|e| ETag(e.to_string())).ok_or_else(|| {
                StoreError::Ambiguous("the store accepted the write but returned no ETag".into())
            }),
            Err(e) => Err(match self.classify(e) {
                // `If-None-Match: *` racing a create may surface as 404 on some stores.
                StoreError::Missing if condition == Condition::Create => {
                    StoreError::Conflict("create raced".into())
                }
                other => other,
            }),
        }
    }

    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        self.client
            .delete_object()
            .bucket(&self.bucket)
            .key(key)
            .if_match(&etag.0)
            .send()
            .await
            .map(|_| ())
            .map_err(|e| self.classify(e))
    }

    fn describe(&self) -> String {
        format!("s3://{}", self.bucket)
    }
}
