//! The naive design jobgate replaces, kept as a baseline for benchmarks and
//! for proving that the limit checker can fail: a `{"count": N}` object read
//! and written with *unconditional* GET and PUT. Two workers that read the
//! same count both get in, and a crashed worker's slot is never returned.
//! Never use this for anything but comparison.

use std::sync::Arc;
use std::sync::atomic::Ordering;

use aws_sdk_s3::primitives::ByteStream;
use serde::{Deserialize, Serialize};

use jobgate::store::{RequestCounts, StoreError};

#[derive(Debug, Serialize, Deserialize)]
struct Count {
    count: i64,
}

#[derive(Debug, Clone)]
pub struct NaiveCounter {
    client: aws_sdk_s3::Client,
    bucket: String,
    key: String,
    limit: i64,
    counts: Arc<RequestCounts>,
}

impl NaiveCounter {
    /// `client` is a plain SDK client: this design needs unconditional
    /// writes, which jobgate's stores deliberately cannot make.
    pub fn new(
        client: aws_sdk_s3::Client,
        bucket: impl Into<String>,
        key: impl Into<String>,
        limit: i64,
    ) -> Self {
        Self {
            client,
            bucket: bucket.into(),
            key: key.into(),
            limit,
            counts: Arc::default(),
        }
    }

    /// Counts this counter's GETs and PUTs into `counts`.
    pub fn with_counts(mut self, counts: Arc<RequestCounts>) -> Self {
        self.counts = counts;
        self
    }

    async fn read(&self) -> Result<i64, StoreError> {
        self.counts.gets.fetch_add(1, Ordering::Relaxed);
        let out = self
            .client
            .get_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .send()
            .await;
        match out {
            Ok(out) => {
                let body = out
                    .body
                    .collect()
                    .await
                    .map_err(|e| StoreError::Other(e.to_string()))?
                    .into_bytes();
                let c: Count =
                    serde_json::from_slice(&body).map_err(|e| StoreError::Other(e.to_string()))?;
                Ok(c.count)
            }
            Err(e) if e.as_service_error().is_some_and(|s| s.is_no_such_key()) => Ok(0),
            Err(e) => Err(StoreError::Other(e.to_string())),
        }
    }

    async fn write(&self, count: i64) -> Result<(), StoreError> {
        self.counts.puts.fetch_add(1, Ordering::Relaxed);
        let body =
            serde_json::to_vec(&Count { count }).map_err(|e| StoreError::Other(e.to_string()))?;
        self.client
            .put_object()
            .bucket(&self.bucket)
            .key(&self.key)
            .body(ByteStream::from(body))
            .send()
            .await
            .map(|_| ())
            .map_err(|e| StoreError::Other(e.to_string()))
    }

    /// One try: read the count and, if below the limit, write count + 1.
    pub async fn try_acquire(&self) -> Result<bool, StoreError> {
        let count = self.read().await?;
        if count >= self.limit {
            return Ok(false);
        }
        self.write(count + 1).await?;
        Ok(true)
    }

    pub async fn release(&self) -> Result<(), StoreError> {
        let count = self.read().await?;
        self.write((count - 1).max(0)).await
    }

    pub async fn reset(&self) -> Result<(), StoreError> {
        self.write(0).await
    }
}
