//! Ledger URLs: `s3://bucket/key` or `file:///path/to/ledger.json`.

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
    S3 { bucket: String, key: String },
    File { dir: PathBuf, key: String },
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
        Err(bad("expected s3://BUCKET/KEY or file:///PATH"))
    }

    pub fn key(&self) -> &str {
        match self {
            LedgerUrl::S3 { key, .. } | LedgerUrl::File { key, .. } => key,
        }
    }
}

impl std::fmt::Display for LedgerUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            LedgerUrl::S3 { bucket, key } => write!(f, "s3://{bucket}/{key}"),
            LedgerUrl::File { dir, key } => write!(f, "file://{}", dir.join(key).display()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_both_schemes() {
        assert_eq!(
            LedgerUrl::parse("s3://b/jobgate/etl.json").unwrap(),
            LedgerUrl::S3 {
                bucket: "b".into(),
                key: "jobgate/etl.json".into()
            }
        );
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
        ] {
            assert!(LedgerUrl::parse(bad).is_err(), "{bad}");
        }
    }
}
