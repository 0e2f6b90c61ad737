//! One storage trait with compare-and-swap semantics, and its backends.
//! Every backend passes the same conformance suite (`tests/suite/store_conformance.rs`).

use std::fmt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

pub mod azure;
mod counting;
mod file;
pub mod gcs;
mod memory;
pub mod s3;
mod url;

pub use azure::{AzureOptions, AzureStore};
pub use counting::{CountingStore, RequestCounts};
pub use file::FileStore;
pub use gcs::{GcsOptions, GcsStore};
pub use memory::MemoryStore;
pub use s3::{S3Options, S3Store};
pub use url::{LedgerUrl, UrlError};

/// An entity tag, kept verbatim (quotes included) as the store returned it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct ETag(pub String);

impl fmt::Display for ETag {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Versioned {
    pub body: Bytes,
    pub etag: ETag,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// Write only if the key does not exist (`If-None-Match: *`).
    Create,
    /// Write only if the current version has this ETag (`If-Match`).
    Match(ETag),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fetched {
    Missing,
    NotModified,
    Found(Versioned),
}

/// How a store operation failed. The distinction that matters is whether the
/// outcome is known: `Conflict` and `Missing` say the write did not happen;
/// `Ambiguous` says it may or may not have, so the caller must re-read.
///
/// The variant is for the program; the text is for a person. Users see it
/// as is (CLI errors, the operator's conditions and Events), so backends put
/// one short sentence naming the cause in `Ambiguous`, `Unavailable` and
/// `AccessDenied`, and keep protocol detail for the debug log.
#[derive(Debug, Clone, thiserror::Error, PartialEq, Eq)]
pub enum StoreError {
    /// The condition did not hold (412 PreconditionFailed, 409 ConditionalRequestConflict).
    #[error("conditional write lost a race ({0})")]
    Conflict(String),
    /// `If-Match` on a key that does not exist.
    #[error("object does not exist")]
    Missing,
    /// The request may have been applied (timeout, 5xx, connection lost after sending).
    #[error("{0}")]
    Ambiguous(String),
    /// The request certainly did not reach the store (e.g. connection refused).
    #[error("{0}")]
    Unavailable(String),
    /// Credentials missing or rejected, or the bucket policy refuses us.
    #[error("{0}")]
    AccessDenied(String),
    #[error("bucket or directory {0:?} does not exist")]
    NoSuchBucket(String),
    #[error("the store does not support conditional writes ({0})")]
    Unsupported(String),
    #[error("{0}")]
    Other(String),
}

impl StoreError {
    /// Worth retrying after re-reading: the store may answer differently later.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            StoreError::Conflict(_)
                | StoreError::Missing
                | StoreError::Ambiguous(_)
                | StoreError::Unavailable(_)
        )
    }
}

#[async_trait]
pub trait Store: Send + Sync + fmt::Debug {
    /// Reads `key`; with `if_none_match`, answers `NotModified` when unchanged.
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError>;

    /// Writes `body` to `key` only if `condition` holds; returns the new ETag.
    /// There is deliberately no unconditional write.
    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError>;

    /// Deletes `key` only if its ETag matches. Used to clean up probe objects.
    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError>;

    /// A human-readable location, e.g. `s3://bucket`.
    fn describe(&self) -> String;
}

pub type DynStore = Arc<dyn Store>;

/// A process-unique suffix for probe keys and agent ids.
pub fn unique_suffix() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    format!("{}-{}-{:08x}", std::process::id(), n, rand::random::<u32>())
}

/// ETag for stores that compute their own: a content hash, like S3's MD5 for
/// simple objects, so identical bodies share an ETag exactly as on S3.
pub(crate) fn content_etag(body: &[u8]) -> ETag {
    use sha2::Digest;
    let digest = sha2::Sha256::digest(body);
    ETag(format!("\"{}\"", hex::encode(&digest[..16])))
}
