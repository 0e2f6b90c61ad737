//! The Google Cloud Storage backend, on the JSON API.
//!
//! Compare-and-swap on GCS is keyed on an object's *generation*, not its
//! ETag: `ifGenerationMatch=G` writes only over generation G, and
//! `ifGenerationMatch=0` only where no object exists. GCS's S3-compatible
//! XML API ignores `If-Match`/`If-None-Match` on PUT, so an S3 client there
//! gets last-writer-wins; this backend never uses it.
//!
//! Why not `object_store`'s GCS client: it sends the precondition as the XML
//! API's `x-goog-if-generation-match` header, which GCS honours but
//! fake-gcs-server (the emulator Google's own client libraries test
//! against) ignores, so its conditional writes could not be tested here.
//! The JSON API's query parameters work on both. `object_store` still
//! provides the credential chain (service-account key, application default
//! credentials, then the metadata server, which is how GKE Workload Identity
//! hands out tokens).
//!
//! A [`Versioned`]'s ETag holds the generation as a decimal number; it is
//! only ever compared and passed back here. No request is retried: a
//! retried conditional write whose first attempt landed comes back 412,
//! which only a re-read can tell from a lost race.

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use bytes::Bytes;
use object_store::CredentialProvider;
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};
use reqwest::{Method, StatusCode, Url};
use tracing::debug;

use super::s3::innermost;
use super::{Condition, ETag, Fetched, Store, StoreError, Versioned};

/// Where Google's own client libraries look for an emulator
/// (`host:port` or a URL); with it set, requests carry no credentials.
pub const EMULATOR_ENV: &str = "STORAGE_EMULATOR_HOST";

const GOOGLE: &str = "https://storage.googleapis.com";

/// A generation no object has: what an ETag this store never issued (one
/// that names no generation) is sent as, so the store still answers the
/// condition and a store that ignores it is still caught.
const NO_GENERATION: u64 = i64::MAX as u64;

/// How to reach GCS. Unset fields use `STORAGE_EMULATOR_HOST`, else Google.
#[derive(Debug, Clone, Default)]
pub struct GcsOptions {
    /// Another address of the JSON API, e.g. an emulator's
    /// `http://127.0.0.1:4443`. Requests to it carry no credentials.
    pub endpoint: Option<String>,
    pub connect_timeout: Option<Duration>,
    pub request_timeout: Option<Duration>,
}

type Tokens = Arc<dyn CredentialProvider<Credential = GcpCredential>>;

#[derive(Clone)]
pub struct GcsStore {
    http: reqwest::Client,
    base: String,
    bucket: String,
    /// `None` for an emulator.
    tokens: Option<Tokens>,
}

impl std::fmt::Debug for GcsStore {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("GcsStore")
            .field("base", &self.base)
            .field("bucket", &self.bucket)
            .finish()
    }
}

/// The base URL of the JSON API: the option, then the emulator variable
/// (which may omit the scheme), else Google.
fn base_url(explicit: Option<&str>, emulator: Option<&str>) -> (String, bool) {
    match explicit.or(emulator).filter(|e| !e.is_empty()) {
        Some(e) if e.contains("://") => (e.trim_end_matches('/').to_string(), true),
        Some(e) => (format!("http://{}", e.trim_end_matches('/')), true),
        None => (GOOGLE.to_string(), false),
    }
}

/// The generation an ETag names (see the module's doc). Never 0, which
/// would turn a swap into a create.
fn generation(etag: &ETag) -> u64 {
    match etag.0.trim_matches('"').parse() {
        Ok(0) | Err(_) => NO_GENERATION,
        Ok(g) => g,
    }
}

impl GcsStore {
    /// A client for `bucket`. Fails only when the credential chain cannot
    /// be set up (a malformed key file, say); missing credentials surface
    /// on the first request.
    pub fn connect(bucket: &str, opts: &GcsOptions) -> Result<Self, StoreError> {
        let emulator = std::env::var(EMULATOR_ENV).ok();
        let (base, custom) = base_url(opts.endpoint.as_deref(), emulator.as_deref());
        let tokens = if custom {
            None
        } else {
            let store = GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .build()
                .map_err(|e| {
                    StoreError::AccessDenied(format!(
                        "cannot set up Google credentials ({}); see GOOGLE_APPLICATION_CREDENTIALS",
                        innermost(&e)
                    ))
                })?;
            Some(store.credentials().clone())
        };
        let http = reqwest::Client::builder()
            .connect_timeout(opts.connect_timeout.unwrap_or(Duration::from_secs(3)))
            .timeout(opts.request_timeout.unwrap_or(Duration::from_secs(10)))
            .build()
            .map_err(|e| StoreError::Other(format!("cannot build an HTTP client ({e})")))?;
        Ok(GcsStore {
            http,
            base,
            bucket: bucket.to_string(),
            tokens,
        })
    }

    fn url(&self, upload: bool, key: Option<&str>) -> Result<Url, StoreError> {
        let prefix = if upload { "/upload" } else { "" };
        let mut url = Url::parse(&format!("{}{prefix}/storage/v1/b", self.base))
            .map_err(|e| StoreError::Other(format!("bad GCS endpoint {:?} ({e})", self.base)))?;
        {
            let mut path = url
                .path_segments_mut()
                .map_err(|_| StoreError::Other(format!("bad GCS endpoint {:?}", self.base)))?;
            path.push(&self.bucket).push("o");
            if let Some(key) = key {
                path.push(key);
            }
        }
        Ok(url)
    }

    async fn request(
        &self,
        method: Method,
        url: Url,
    ) -> Result<reqwest::RequestBuilder, StoreError> {
        let mut req = self.http.request(method, url);
        if let Some(tokens) = &self.tokens {
            let token = tokens.get_credential().await.map_err(|e| {
                debug!(detail = %e, "getting a Google access token failed");
                StoreError::AccessDenied(format!(
                    "no Google credentials ({}): on GKE use Workload Identity, elsewhere set GOOGLE_APPLICATION_CREDENTIALS",
                    innermost(&e)
                ))
            })?;
            req = req.bearer_auth(&token.bearer);
        }
        Ok(req)
    }

    /// What a failed exchange means. `wrote` says whether the request could
    /// have changed anything, which decides `Ambiguous` against `Unavailable`.
    fn transport(&self, err: reqwest::Error, wrote: bool) -> StoreError {
        debug!(bucket = %self.bucket, endpoint = %self.base, detail = %err, "GCS request failed");
        let sentence = if err.is_timeout() {
            format!("{} did not answer in time", self.base)
        } else if err.is_connect() {
            return StoreError::Unavailable(format!(
                "cannot connect to {} ({})",
                self.base,
                innermost(&err)
            ));
        } else {
            format!(
                "the connection to {} broke off ({})",
                self.base,
                innermost(&err)
            )
        };
        if wrote {
            StoreError::Ambiguous(sentence)
        } else {
            StoreError::Unavailable(sentence)
        }
    }

    /// An answer other than success; `wrote` as in [`Self::transport`].
    async fn refused(&self, resp: reqwest::Response, wrote: bool) -> StoreError {
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        let err = classify(&self.bucket, &self.base, status, &text, wrote);
        if !matches!(err, StoreError::Conflict(_) | StoreError::Missing) {
            debug!(bucket = %self.bucket, status = %status, body = %text, "GCS refused a request: {err}");
        }
        err
    }
}

/// Which `StoreError` a GCS status is (pure; the body only tells a missing
/// bucket from a missing object).
fn classify(bucket: &str, base: &str, status: StatusCode, body: &str, wrote: bool) -> StoreError {
    match status.as_u16() {
        412 => StoreError::Conflict("generation precondition failed".into()),
        // GCS answers 409 to concurrent writes of one object at times.
        409 => StoreError::Conflict("a concurrent write of the object".into()),
        404 if names_missing_bucket(body) => StoreError::NoSuchBucket(bucket.to_string()),
        404 => StoreError::Missing,
        401 => StoreError::AccessDenied(format!(
            "{base} rejected the credentials: refresh them, or check the Workload Identity binding"
        )),
        403 => StoreError::AccessDenied(format!(
            "access to gs://{bucket} denied: grant roles/storage.objectUser on the bucket"
        )),
        429 | 500..=599 if wrote => StoreError::Ambiguous(format!(
            "{base} answered {status} to a write, which may have landed"
        )),
        429 | 500..=599 => StoreError::Unavailable(format!("{base} answered {status}")),
        _ => StoreError::Other(format!("{base} answered {status}")),
    }
}

/// Whether a 404's body says the bucket, not the object, is missing: GCS's
/// "The specified bucket does not exist." or fake-gcs-server's "bucket not
/// found". Not any mention of "bucket": a missing object's message names
/// its bucket ("No such object: my-bucket/key").
fn names_missing_bucket(body: &str) -> bool {
    let text = body.to_ascii_lowercase();
    text.contains("specified bucket does not exist") || text.contains("bucket not found")
}

/// The `generation` of an upload's JSON answer, or of a read's header.
fn generation_of(body: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(body).ok()?;
    match value.get("generation")? {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Number(n) => Some(n.to_string()),
        _ => None,
    }
}

#[async_trait]
impl Store for GcsStore {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        let mut url = self.url(false, Some(key))?;
        url.query_pairs_mut().append_pair("alt", "media");
        if let Some(etag) = if_none_match {
            url.query_pairs_mut()
                .append_pair("ifGenerationNotMatch", &generation(etag).to_string());
        }
        let resp = self
            .request(Method::GET, url)
            .await?
            .send()
            .await
            .map_err(|e| self.transport(e, false))?;
        match resp.status() {
            StatusCode::NOT_MODIFIED => return Ok(Fetched::NotModified),
            s if s.is_success() => {}
            _ => {
                return match self.refused(resp, false).await {
                    StoreError::Missing => Ok(Fetched::Missing),
                    other => Err(other),
                };
            }
        }
        let etag = resp
            .headers()
            .get("x-goog-generation")
            .and_then(|v| v.to_str().ok())
            .map(|g| ETag(g.to_string()))
            .ok_or_else(|| StoreError::Other("GCS returned no generation".into()))?;
        // Emulators that ignore `ifGenerationNotMatch` still say which
        // generation they sent.
        if if_none_match == Some(&etag) {
            return Ok(Fetched::NotModified);
        }
        let body = resp.bytes().await.map_err(|e| self.transport(e, false))?;
        Ok(Fetched::Found(Versioned { body, etag }))
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        let mut url = self.url(true, None)?;
        let expected = match &condition {
            Condition::Create => 0,
            Condition::Match(etag) => generation(etag),
        };
        url.query_pairs_mut()
            .append_pair("uploadType", "media")
            .append_pair("name", key)
            .append_pair("ifGenerationMatch", &expected.to_string());
        let resp = self
            .request(Method::POST, url)
            .await?
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .map_err(|e| self.transport(e, true))?;
        if !resp.status().is_success() {
            return Err(match self.refused(resp, true).await {
                // A create has nothing to find but the bucket (a failed
                // generation precondition is 412), whatever the 404 says:
                // fake-gcs-server's is a bare "Not Found".
                StoreError::Missing if condition == Condition::Create => {
                    StoreError::NoSuchBucket(self.bucket.clone())
                }
                other => other,
            });
        }
        let answer = resp.bytes().await.map_err(|e| self.transport(e, true))?;
        generation_of(&answer).map(ETag).ok_or_else(|| {
            StoreError::Ambiguous("GCS accepted the write but returned no generation".into())
        })
    }

    /// Deletes that generation and no other: `generation` names it (an
    /// emulator that ignores `ifGenerationMatch` on deletes still honours
    /// it), and 404 then means the object has moved on.
    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        let mut url = self.url(false, Some(key))?;
        let g = generation(etag).to_string();
        url.query_pairs_mut()
            .append_pair("generation", &g)
            .append_pair("ifGenerationMatch", &g);
        let resp = self
            .request(Method::DELETE, url)
            .await?
            .send()
            .await
            .map_err(|e| self.transport(e, true))?;
        if resp.status().is_success() {
            return Ok(());
        }
        Err(match self.refused(resp, true).await {
            StoreError::Missing => StoreError::Conflict("not at that generation".into()),
            other => other,
        })
    }

    fn describe(&self) -> String {
        format!("gs://{}", self.bucket)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_endpoint_comes_from_the_option_then_the_emulator_variable() {
        assert_eq!(base_url(None, None), (GOOGLE.to_string(), false));
        assert_eq!(
            base_url(None, Some("127.0.0.1:4443")),
            ("http://127.0.0.1:4443".to_string(), true)
        );
        assert_eq!(
            base_url(Some("http://a:1/"), Some("b:2")),
            ("http://a:1".to_string(), true)
        );
    }

    #[test]
    fn an_etag_names_a_generation_or_one_no_object_has() {
        assert_eq!(
            generation(&ETag("1796624758820155".into())),
            1796624758820155
        );
        assert_eq!(generation(&ETag("\"12\"".into())), 12);
        assert_eq!(generation(&ETag("\"bogus\"".into())), NO_GENERATION);
        // Never 0, which would turn a swap into a create.
        assert_eq!(generation(&ETag("\"0000\"".into())), NO_GENERATION);
    }

    #[test]
    fn statuses_map_to_what_the_semaphore_does_next() {
        let c = |s: u16, body: &str, wrote: bool| {
            classify("b", "g", StatusCode::from_u16(s).unwrap(), body, wrote)
        };
        assert!(matches!(c(412, "", true), StoreError::Conflict(_)));
        assert_eq!(c(404, "No such object", false), StoreError::Missing);
        assert_eq!(
            c(404, "The specified bucket does not exist.", true),
            StoreError::NoSuchBucket("b".into())
        );
        assert_eq!(
            c(
                404,
                r#"{"error":{"code":404,"message":"bucket not found"}}"#,
                false
            ),
            StoreError::NoSuchBucket("b".into())
        );
        // A missing object's message names its bucket, which may itself
        // hold the word: still a missing object.
        assert_eq!(
            c(
                404,
                "No such object: my-jobgate-bucket/jobgate/etl.json",
                false
            ),
            StoreError::Missing
        );
        assert!(matches!(c(503, "", true), StoreError::Ambiguous(_)));
        assert!(matches!(c(503, "", false), StoreError::Unavailable(_)));
        assert!(matches!(c(403, "", false), StoreError::AccessDenied(_)));
    }

    #[test]
    fn generations_come_as_strings_or_numbers() {
        assert_eq!(
            generation_of(br#"{"generation":"17"}"#),
            Some("17".to_string())
        );
        assert_eq!(
            generation_of(br#"{"generation":17}"#),
            Some("17".to_string())
        );
        assert_eq!(generation_of(b"{}"), None);
    }
}
