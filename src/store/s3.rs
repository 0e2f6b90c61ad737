//! The S3 backend (AWS S3 and S3-compatible stores).
//!
//! The SDK's own retries are disabled: a retried conditional write whose first
//! attempt landed comes back as 412, which only a re-read can tell from a real
//! lost race. The semaphore does every retry itself, after re-reading.

use std::time::Duration;

use async_trait::async_trait;
use aws_sdk_s3::config::http::HttpResponse;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_sdk_s3::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use aws_sdk_s3::primitives::ByteStream;
use bytes::Bytes;

use super::{Condition, ETag, Fetched, Store, StoreError, Versioned};

/// How to reach the store. Unset fields fall back to the standard AWS
/// configuration chain (`AWS_REGION`, `AWS_ENDPOINT_URL`, profiles, IRSA, ...).
#[derive(Debug, Clone, Default)]
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

#[derive(Debug, Clone)]
pub struct S3Store {
    client: aws_sdk_s3::Client,
    bucket: String,
}

impl S3Store {
    pub async fn connect(bucket: &str, opts: &S3Options) -> Self {
        let mut loader = aws_config::defaults(aws_config::BehaviorVersion::latest());
        if let Some(region) = &opts.region {
            loader = loader.region(Region::new(region.clone()));
        }
        if let (Some(id), Some(secret)) = (&opts.access_key_id, &opts.secret_access_key) {
            loader = loader.credentials_provider(aws_sdk_s3::config::Credentials::new(
                id.clone(),
                secret.clone(),
                None,
                None,
                "jobgate",
            ));
        }
        let shared = loader.load().await;
        let mut config = aws_sdk_s3::config::Builder::from(&shared)
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(opts.connect_timeout.unwrap_or(Duration::from_secs(3)))
                    .operation_attempt_timeout(
                        opts.request_timeout.unwrap_or(Duration::from_secs(10)),
                    )
                    .build(),
            );
        if shared.region().is_none() {
            config = config.region(Region::new("us-east-1"));
        }
        let endpoint = opts
            .endpoint
            .clone()
            .or_else(|| shared.endpoint_url().map(String::from));
        if let Some(endpoint) = &opts.endpoint {
            config = config.endpoint_url(endpoint);
        }
        let custom_endpoint = endpoint
            .as_deref()
            .is_some_and(|e| !e.contains("amazonaws.com"));
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
        }
    }

    pub fn client(&self) -> &aws_sdk_s3::Client {
        &self.client
    }

    pub fn bucket(&self) -> &str {
        &self.bucket
    }

    fn classify<E>(&self, err: SdkError<E, HttpResponse>) -> StoreError
    where
        E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
    {
        match &err {
            SdkError::ServiceError(service) => {
                let status = service.raw().status().as_u16();
                classify_service(
                    &self.bucket,
                    status,
                    service.err().code(),
                    service.err().message(),
                )
            }
            SdkError::TimeoutError(_) => {
                StoreError::Ambiguous(format!("timed out: {}", context(&err)))
            }
            SdkError::DispatchFailure(_) if credentials_problem(&context(&err)) => {
                StoreError::AccessDenied(context(&err))
            }
            SdkError::DispatchFailure(d) if d.is_timeout() => {
                StoreError::Ambiguous(format!("timed out: {}", context(&err)))
            }
            SdkError::DispatchFailure(d) if d.is_io() => {
                // The connection failed; the request may have been sent already.
                StoreError::Ambiguous(format!("connection failed: {}", context(&err)))
            }
            SdkError::DispatchFailure(_) => StoreError::Unavailable(context(&err)),
            SdkError::ResponseError(_) => StoreError::Ambiguous(context(&err)),
            SdkError::ConstructionFailure(_) if credentials_problem(&context(&err)) => {
                StoreError::AccessDenied(context(&err))
            }
            _ => StoreError::Other(context(&err)),
        }
    }
}

fn context<E: std::error::Error>(err: &E) -> String {
    DisplayErrorContext(err).to_string()
}

fn credentials_problem(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("credential") || t.contains("identity")
}

/// Classifies by the S3 error code first and the status second: a
/// precondition failure has been seen arriving with an unexpected status.
fn classify_service(
    bucket: &str,
    status: u16,
    code: Option<&str>,
    message: Option<&str>,
) -> StoreError {
    let detail = format!(
        "HTTP {status} {}{}",
        code.unwrap_or("(no code)"),
        message.map(|m| format!(": {m}")).unwrap_or_default()
    );
    match code {
        Some("PreconditionFailed") | Some("ConditionalRequestConflict") => {
            return StoreError::Conflict(detail);
        }
        Some("NoSuchKey") => return StoreError::Missing,
        Some("NoSuchBucket") => return StoreError::NoSuchBucket(bucket.to_string()),
        Some(
            "AccessDenied"
            | "InvalidAccessKeyId"
            | "SignatureDoesNotMatch"
            | "ExpiredToken"
            | "InvalidToken",
        ) => return StoreError::AccessDenied(detail),
        Some("NotImplemented") => return StoreError::Unsupported(detail),
        Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
            return StoreError::Ambiguous(detail);
        }
        _ => {}
    }
    match status {
        412 | 409 => StoreError::Conflict(detail),
        404 => StoreError::Missing,
        401 | 403 => StoreError::AccessDenied(detail),
        501 => StoreError::Unsupported(detail),
        408 | 429 | 500..=599 => StoreError::Ambiguous(detail),
        _ => StoreError::Other(detail),
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
                return match self.classify(e) {
                    StoreError::Missing => Ok(Fetched::Missing),
                    // A failed read changed nothing, so it is never ambiguous.
                    StoreError::Ambiguous(m) => Err(StoreError::Unavailable(m)),
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
            .map_err(|e| StoreError::Unavailable(format!("reading body: {e}")))?
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_by_code_before_status() {
        assert!(matches!(
            classify_service("b", 200, Some("PreconditionFailed"), None),
            StoreError::Conflict(_)
        ));
        assert!(matches!(
            classify_service("b", 409, Some("ConditionalRequestConflict"), None),
            StoreError::Conflict(_)
        ));
        assert_eq!(
            classify_service("b", 404, Some("NoSuchKey"), None),
            StoreError::Missing
        );
        assert_eq!(
            classify_service("b", 404, Some("NoSuchBucket"), None),
            StoreError::NoSuchBucket("b".into())
        );
        assert!(matches!(
            classify_service("b", 503, Some("SlowDown"), None),
            StoreError::Ambiguous(_)
        ));
        assert!(matches!(
            classify_service("b", 500, None, None),
            StoreError::Ambiguous(_)
        ));
        assert!(matches!(
            classify_service("b", 403, Some("InvalidAccessKeyId"), None),
            StoreError::AccessDenied(_)
        ));
        assert!(matches!(
            classify_service("b", 501, None, None),
            StoreError::Unsupported(_)
        ));
    }
}
