//! A store in a local directory: the embedded default. Compare-and-swap is
//! atomic across processes: writers serialize on an exclusive `flock` of a
//! sidecar lock file, and the new version replaces the old by `rename`, so
//! readers (who take no lock) always see a whole version.

use std::fs::{self, File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::path::{Component, Path, PathBuf};

use async_trait::async_trait;
use bytes::Bytes;

use super::{Condition, ETag, Fetched, Store, StoreError, Versioned, content_etag, unique_suffix};

#[derive(Debug, Clone)]
pub struct FileStore {
    root: PathBuf,
}

impl FileStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, key: &str) -> Result<PathBuf, StoreError> {
        let rel = Path::new(key);
        if key.is_empty() || rel.components().any(|c| !matches!(c, Component::Normal(_))) {
            return Err(StoreError::Other(format!("invalid key {key:?}")));
        }
        Ok(self.root.join(rel))
    }
}

fn io_err(what: &str, path: &Path, e: std::io::Error) -> StoreError {
    match e.kind() {
        ErrorKind::PermissionDenied => {
            StoreError::AccessDenied(format!("{what} {}: {e}", path.display()))
        }
        _ => StoreError::Other(format!("{what} {}: {e}", path.display())),
    }
}

fn read(path: &Path) -> Result<Option<Versioned>, StoreError> {
    match fs::read(path) {
        Ok(body) => Ok(Some(Versioned {
            etag: content_etag(&body),
            body: Bytes::from(body),
        })),
        Err(e) if e.kind() == ErrorKind::NotFound => Ok(None),
        Err(e) => Err(io_err("reading", path, e)),
    }
}

/// Holds the exclusive lock on `<path>.lock` until dropped.
fn lock(path: &Path) -> Result<File, StoreError> {
    let dir = path.parent().unwrap_or(Path::new("."));
    if !dir.exists() {
        return Err(StoreError::NoSuchBucket(dir.display().to_string()));
    }
    let mut lock_path = path.as_os_str().to_owned();
    lock_path.push(".lock");
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(&lock_path)
        .map_err(|e| match e.kind() {
            // The lock file is ours, not the user's: name what they can fix.
            ErrorKind::PermissionDenied => StoreError::AccessDenied(format!(
                "cannot write in {} (permission denied): every jobgate that uses a ledger there needs to write in its directory",
                dir.display()
            )),
            _ => io_err("opening lock", Path::new(&lock_path), e),
        })?;
    file.lock().map_err(|e| io_err("locking", path, e))?;
    Ok(file)
}

fn check(path: &Path, condition: &Condition) -> Result<(), StoreError> {
    match (condition, read(path)?) {
        (Condition::Create, Some(_)) => Err(StoreError::Conflict("object exists".into())),
        (Condition::Match(_), None) => Err(StoreError::Missing),
        (Condition::Match(want), Some(v)) if &v.etag != want => {
            Err(StoreError::Conflict("etag changed".into()))
        }
        _ => Ok(()),
    }
}

fn put_blocking(path: PathBuf, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
    let _guard = lock(&path)?;
    check(&path, &condition)?;
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp-{}", unique_suffix()));
    let tmp = PathBuf::from(tmp);
    let write = || -> std::io::Result<()> {
        let mut f = File::create(&tmp)?;
        f.write_all(&body)?;
        f.sync_all()?;
        fs::rename(&tmp, &path)
    };
    if let Err(e) = write() {
        let _ = fs::remove_file(&tmp);
        return Err(io_err("writing", &path, e));
    }
    if let Some(dir) = path.parent() {
        // Makes the rename durable; failure here does not undo the write.
        let _ = File::open(dir).and_then(|d| d.sync_all());
    }
    Ok(content_etag(&body))
}

fn delete_blocking(path: PathBuf, etag: ETag) -> Result<(), StoreError> {
    let _guard = lock(&path)?;
    check(&path, &Condition::Match(etag))?;
    fs::remove_file(&path).map_err(|e| io_err("deleting", &path, e))
}

async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, StoreError> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| StoreError::Other(format!("file store task failed: {e}")))?
}

#[async_trait]
impl Store for FileStore {
    async fn get(&self, key: &str, if_none_match: Option<&ETag>) -> Result<Fetched, StoreError> {
        let path = self.path(key)?;
        let found = blocking(move || read(&path)).await?;
        Ok(match found {
            None => Fetched::Missing,
            Some(v) if Some(&v.etag) == if_none_match => Fetched::NotModified,
            Some(v) => Fetched::Found(v),
        })
    }

    async fn put(&self, key: &str, body: Bytes, condition: Condition) -> Result<ETag, StoreError> {
        let path = self.path(key)?;
        blocking(move || put_blocking(path, body, condition)).await
    }

    async fn delete(&self, key: &str, etag: &ETag) -> Result<(), StoreError> {
        let path = self.path(key)?;
        let etag = etag.clone();
        blocking(move || delete_blocking(path, etag)).await
    }

    fn describe(&self) -> String {
        format!("file://{}", self.root.display())
    }
}
