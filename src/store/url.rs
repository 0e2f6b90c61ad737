//! Ledger URLs: `s3://BUCKET/KEY`, `gs://BUCKET/KEY` (Google Cloud
//! Storage), `az://ACCOUNT/CONTAINER/KEY` (Azure Blob Storage), or
//! `file:///path/to/ledger.json`.

use std::path::PathBuf;

/// A ledger URL that is not one; the crate's `Error::InvalidUrl` carries it
/// to the user.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid ledger URL {url:?}: {why}")]
pub struct UrlError {
    pub url: String,
    pub why: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerUrl {
    S3 {
        bucket: String,
        key: String,
    },
    Gcs {
        bucket: String,
        key: String,
    },
    /// The container is Azure's bucket; the account names the service.
    Azure {
        account: String,
        container: String,
        key: String,
    },
    File {
        dir: PathBuf,
        key: String,
    },
}

impl LedgerUrl {
    pub fn parse(url: &str) -> Result<Self, UrlError> {
        let bad = |why: &str| UrlError {
            url: url.to_string(),
            why: why.to_string(),
        };
        if let Some(rest) = url.strip_prefix("s3://") {
            let (bucket, key) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected s3://BUCKET/KEY"))?;
            if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
                return Err(bad(
                    "expected s3://BUCKET/KEY with a non-empty bucket and key",
                ));
            }
            return Ok(LedgerUrl::S3 {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("gs://") {
            let (bucket, key) = rest
                .split_once('/')
                .filter(|(b, k)| !b.is_empty() && !k.is_empty() && !k.ends_with('/'))
                .ok_or_else(|| bad("expected gs://BUCKET/KEY with a non-empty bucket and key"))?;
            return Ok(LedgerUrl::Gcs {
                bucket: bucket.to_string(),
                key: key.to_string(),
            });
        }
        if let Some(rest) = url.strip_prefix("az://") {
            let mut parts = rest.splitn(3, '/');
            let (account, container, key) = (parts.next(), parts.next(), parts.next());
            return match (account, container, key) {
                (Some(a), Some(c), Some(k))
                    if !a.is_empty() && !c.is_empty() && !k.is_empty() && !k.ends_with('/') =>
                {
                    Ok(LedgerUrl::Azure {
                        account: a.to_string(),
                        container: c.to_string(),
                        key: k.to_string(),
                    })
                }
                _ => Err(bad(
                    "expected az://ACCOUNT/CONTAINER/KEY, naming the storage account, the container and the blob",
                )),
            };
        }
        if let Some(path) = url.strip_prefix("file://") {
            let path = PathBuf::from(path);
            if !path.is_absolute() {
                return Err(bad("expected file:///ABSOLUTE/PATH"));
            }
            let key = path
                .file_name()
                .and_then(|k| k.to_str())
                .ok_or_else(|| bad("expected a file name after the directory"))?
                .to_string();
            let dir = path
                .parent()
                .map(PathBuf::from)
                .unwrap_or_else(|| PathBuf::from("/"));
            return Ok(LedgerUrl::File { dir, key });
        }
        Err(bad(
            "expected s3://BUCKET/KEY, gs://BUCKET/KEY, az://ACCOUNT/CONTAINER/KEY or file:///PATH",
        ))
    }

    pub fn key(&self) -> &str {
        match self {
            LedgerUrl::S3 { key, .. }
            | LedgerUrl::Gcs { key, .. }
            | LedgerUrl::Azure { key, .. }
            | LedgerUrl::File { key, .. } => key,
        }
    }
}

impl std::fmt::Display for LedgerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerUrl::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            LedgerUrl::Gcs { bucket, key } => write!(f, "gs://{bucket}/{key}"),
            LedgerUrl::Azure {
                account,
                container,
                key,
            } => write!(f, "az://{account}/{container}/{key}"),
            LedgerUrl::File { dir, key } => write!(f, "file://{}", dir.join(key).display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_every_scheme() {
        assert_eq!(
            LedgerUrl::parse("s3://b/jobgate/etl.json").unwrap(),
            LedgerUrl::S3 {
                bucket: "b".into(),
                key: "jobgate/etl.json".into()
            }
        );
        assert_eq!(
            LedgerUrl::parse("gs://b_1/jobgate/etl.json").unwrap(),
            LedgerUrl::Gcs {
                bucket: "b_1".into(),
                key: "jobgate/etl.json".into()
            }
        );
        let az = "az://acct/box/jobgate/etl.json";
        assert_eq!(
            LedgerUrl::parse(az).unwrap(),
            LedgerUrl::Azure {
                account: "acct".into(),
                container: "box".into(),
                key: "jobgate/etl.json".into()
            }
        );
        assert_eq!(LedgerUrl::parse(az).unwrap().to_string(), az);
        assert_eq!(
            LedgerUrl::parse("file:///tmp/x/etl.json").unwrap(),
            LedgerUrl::File {
                dir: "/tmp/x".into(),
                key: "etl.json".into()
            }
        );
    }

    #[test]
    fn rejects_the_rest() {
        for bad in [
            "s3://bucket",
            "s3:///key",
            "file://relative/x",
            "http://x/y",
            "s3://b/dir/",
            "gs://bucket",
            "gs:///key",
            "az://acct/box",
            "az://acct//key",
            "az://acct/box/dir/",
        ] {
            assert!(LedgerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
