//! A wrapper that counts requests by kind, for benchmarks and tests.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Condition, ETag, Fetched, Store, StoreError};

#[derive(Debug, Default)]
pub struct RequestCounts {
    pub gets: AtomicU64,
    pub puts: AtomicU64,
    pub failed_puts: AtomicU64,
    pub deletes: AtomicU64,
}

impl RequestCounts {
    pub fn gets(&self) -> u64 {
        self.gets.load(Ordering::Relaxed)
    }
    pub fn puts(&self) -> u64 {
        self.puts.load(Ordering::Relaxed)
    }
    pub fn failed_puts(&self) -> u64 {
        self.failed_puts.load(Ordering::Relaxed)
    }
}

#[derive(Debug)]
pub struct CountingStore<S> {
    inner: S,
    counts: Arc<RequestCounts>,
}

impl<S> CountingStore<S> {
    pub fn new(inner: S, counts: Arc<RequestCounts>) -> Self {
        Self { inner, counts }
    }
}

#[async_trait]
impl<S: Store> Store for CountingStore<S> {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        self.counts.gets.fetch_add(1, Ordering::Relaxed);
        self.inner.get(key, if_none_match).await
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        self.counts.puts.fetch_add(1, Ordering::Relaxed);
        let result = self.inner.put(key, body, condition).await;
        if result.is_err() {
            self.counts.failed_puts.fetch_add(1, Ordering::Relaxed);
        }
        result
    }

    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        self.counts.deletes.fetch_add(1, Ordering::Relaxed);
        self.inner.delete(key, etag).await
    }

    fn describe(&self) -> String {
        self.inner.describe()
    }
}
