//! The library's error type. Every variant renders as one readable line.

use crate::store::StoreError;

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    Store(#[from] StoreError),

    #[error("ledger {key}: {source}")]
    Ledger {
        key: String,
        #[source]
        source: crate::ledger::LedgerError,
    },

    #[error(
        "ledger {0} does not exist yet (the first `jobgate run --limit N`, or ConcurrencyGroup, that uses it creates it)"
    )]
    LedgerMissing(String),

    #[error(
        "ledger {0} was deleted while in use; slots held here are given up and it is not re-created behind running holders (see docs/guarantees.md)"
    )]
    LedgerVanished(String),

    #[error("invalid limit {0}: the limit is a whole number from 1 to {max}", max = u32::MAX)]
    InvalidLimit(i64),

    #[error("invalid ledger URL {url:?}: {why}")]
    InvalidUrl { url: String, why: String },

    #[error("holder {holder:?} is already held by agent {agent:?}; holder ids must be unique")]
    HolderTaken { holder: String, agent: String },

    #[error("holder {0:?} is not in the ledger")]
    HolderNotFound(String),

    #[error(
        "agent {agent:?} is already in use in this ledger by another writer ({theirs}; this one is {mine}); nothing was written. Two clusters were given the same cluster name: give one of them another (the chart's clusterName)"
    )]
    AgentClaimed {
        agent: String,
        theirs: String,
        mine: String,
    },

    #[error(
        "the store does not enforce conditional writes ({0}); refusing to use it because the limit could not be guaranteed"
    )]
    ConditionalWritesUnsupported(String),

    #[error("gave up after {attempts} attempt(s): {last}")]
    Exhausted { attempts: u32, last: String },

    #[error("the semaphore client has shut down")]
    Closed,

    #[error("{0}")]
    InvalidArgument(String),

    #[error("{0}")]
    Io(String),

    #[error("the ledger kept changing under us ({0} lost races in a row)")]
    TooManyConflicts(u32),

    #[error(
        "{0} answered \"not found\" to a write that creates an object: this endpoint does not behave like S3 (a wrong port, or an ordinary web server?)"
    )]
    NotS3(String),
}

impl From<crate::store::UrlError> for Error {
    fn from(e: crate::store::UrlError) -> Self {
        Error::InvalidUrl {
            url: e.url,
            why: e.why,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Each way a store error reaches a user, with the S3 store's longest
    /// common sentence inside: still one line, short enough to read.
    #[test]
    fn wrapped_store_errors_stay_one_short_line() {
        let sentence = "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or pod identity)";
        let errors = [
            Error::Store(StoreError::AccessDenied(sentence.into())),
            Error::Store(StoreError::Unavailable(sentence.into())),
            Error::Store(StoreError::Ambiguous(sentence.into())),
            Error::Exhausted {
                attempts: 10,
                last: sentence.into(),
            },
            Error::ConditionalWritesUnsupported("HTTP 501 NotImplemented".into()),
        ];
        for e in errors {
            let line = format!("jobgate: error: {e}");
            assert!(!line.contains('\n'), "{line}");
            assert!(line.chars().count() < 200, "{line}");
        }
    }
}
