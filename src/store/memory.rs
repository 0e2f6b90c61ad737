//! An in-process store for unit and property tests.

use std::collections::HashMap;
use std::sync::Mutex;

use async_trait::async_trait;
use bytes::Bytes;

use super::{Condition, ETag, Fetched, Store, StoreError, Versioned, content_etag};

#[derive(Debug, Default)]
pub struct MemoryStore {
    objects: Mutex<HashMap<String, Versioned>>,
}

impl MemoryStore {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Versioned>> {
        // A panic while holding this lock can only come from a bug in a test;
        // the map itself is always consistent, so keep going.
        self.objects.lock().unwrap_or_else(|p| p.into_inner())
    }
}

#[async_trait]
impl Store for MemoryStore {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        Ok(match self.lock().get(key) {
            None => Fetched::Missing,
            Some(v) if Some(&v.etag) == if_none_match => Fetched::NotModified,
            Some(v) => Fetched::Found(v.clone()),
        })
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        let mut objects = self.lock();
        match (&condition, objects.get(key)) {
            (Condition::Create, Some(_)) => {
                return Err(StoreError::Conflict("object exists".into()));
            }
            (Condition::Match(_), None) => return Err(StoreError::Missing),
            (Condition::Match(want), Some(v)) if &v.etag != want => {
                return Err(StoreError::Conflict("etag changed".into()));
            }
            _ => {}
        }
        let etag = content_etag(&body);
        objects.insert(
            key.to_string(),
            Versioned {
                body,
                etag: etag.clone(),
            },
        );
        Ok(etag)
    }

    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        let mut objects = self.lock();
        match objects.get(key) {
            None => Err(StoreError::Missing),
            Some(v) if &v.etag != etag => Err(StoreError::Conflict("etag changed".into())),
            Some(_) => {
                objects.remove(key);
                Ok(())
            }
        }
    }

    fn describe(&self) -> String {
        "memory".to_string()
    }
}
