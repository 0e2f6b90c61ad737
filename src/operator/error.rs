//! Errors of the controller: one variant per pipeline step, so logs and the
//! `reconcile_errors` metric say which step failed.

pub type Result<T, E = Error> = std::result::Result<T, E>;

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("{0}")]
    InvalidTiming(#[from] super::crd::TimingError),

    #[error("listing the group's Jobs: {0}")]
    GatherJobs(#[source] kube::Error),

    #[error("listing the pods of Jobs whose slots would be freed: {0}")]
    GatherPods(#[source] kube::Error),

    /// Outside the admin's `--allowed-ledger` list: nothing was read.
    #[error("{0}")]
    LedgerNotAllowed(String),

    #[error("reading credentials Secret {name:?}: {source}")]
    Credentials {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error(
        "credentials Secret {name:?} was not found in namespace {namespace}: a group reads its Secret from its own namespace only, so create it there (or drop credentialsSecretRef to use the controller's own AWS identity)"
    )]
    CredentialsMissing { name: String, namespace: String },

    #[error(
        "the controller may not read credentials Secret {name:?} in namespace {namespace}: the chart's credentialsSecrets.access leaves this namespace out, so add it to credentialsSecrets.namespaces (or drop credentialsSecretRef to use the controller's own AWS identity)"
    )]
    CredentialsForbidden { name: String, namespace: String },

    #[error("credentials Secret {name:?} lacks key {key}")]
    CredentialsIncomplete { name: String, key: &'static str },

    #[error("opening the ledger: {0}")]
    OpenLedger(#[source] crate::Error),

    #[error("reading the ledger: {0}")]
    ReadLedger(#[source] crate::Error),

    #[error("writing the ledger: {0}")]
    WriteLedger(#[source] crate::Error),

    #[error("patching Job {name}: {source}")]
    PatchJob {
        name: String,
        #[source]
        source: kube::Error,
    },

    #[error("Job {name} changed under every attempt to suspend it; the next pass tries again")]
    JobKeepsChanging { name: String },

    #[error("updating the group's status: {0}")]
    UpdateStatus(#[source] kube::Error),

    #[error("updating the group's finalizer: {0}")]
    Finalizer(#[source] kube::Error),

    #[error("building the finalizer patch: {0}")]
    FinalizerPatch(String),

    #[error(
        "the pass of a deleted group took longer than the {0:?} left before its deletion timeout"
    )]
    PassTimedOut(std::time::Duration),

    #[error("the object has no {0}")]
    MissingField(&'static str),

    #[error("leader election: {0}")]
    Leader(#[from] super::leader::LeaderError),

    #[error("{0}")]
    Startup(String),

    /// The process must stop acting for this cluster: `main` exits, so
    /// that a restart or the standby takes over.
    #[error("{0}")]
    MustExit(String),
}

impl Error {
    /// What a failed read of a group's credentials Secret tells its owner:
    /// a missing Secret and a refused read each have their own fix.
    pub fn reading_secret(name: &str, ns: &str, source: kube::Error) -> Error {
        match source {
            kube::Error::Api(e) if e.code == 404 => Error::CredentialsMissing {
                name: name.to_string(),
                namespace: ns.to_string(),
            },
            kube::Error::Api(e) if e.code == 403 => Error::CredentialsForbidden {
                name: name.to_string(),
                namespace: ns.to_string(),
            },
            source => Error::Credentials {
                name: name.to_string(),
                source,
            },
        }
    }

    /// The pass stopped before it could read the ledger: nothing but this
    /// process's own permits vouches for the group's running Jobs.
    pub fn leaves_ledger_unread(&self) -> bool {
        matches!(
            self,
            Error::InvalidTiming(_)
                | Error::LedgerNotAllowed(_)
                | Error::Credentials { .. }
                | Error::CredentialsMissing { .. }
                | Error::CredentialsForbidden { .. }
                | Error::CredentialsIncomplete { .. }
                | Error::OpenLedger(_)
                | Error::ReadLedger(_)
        )
    }

    /// The ledger cannot be read or written with what this process has
    /// (no client, no credentials, the store refuses or does not answer):
    /// a deleted group waits for it only so long.
    pub fn is_ledger_unusable(&self) -> bool {
        self.leaves_ledger_unread()
            || matches!(self, Error::WriteLedger(_) | Error::PassTimedOut(_))
    }

    /// A stable label for metrics.
    pub fn kind(&self) -> &'static str {
        match self {
            Error::InvalidTiming(_) => "validate",
            Error::LedgerNotAllowed(_) => "ledger_not_allowed",
            Error::GatherJobs(_) => "gather_jobs",
            Error::GatherPods(_) => "gather_pods",
            Error::Credentials { .. }
            | Error::CredentialsMissing { .. }
            | Error::CredentialsForbidden { .. }
            | Error::CredentialsIncomplete { .. } => "credentials",
            Error::OpenLedger(_) => "open_ledger",
            Error::ReadLedger(_) => "read_ledger",
            Error::WriteLedger(_) => "write_ledger",
            Error::PatchJob { .. } | Error::JobKeepsChanging { .. } => "patch_job",
            Error::Finalizer(_) | Error::FinalizerPatch(_) => "finalizer",
            Error::PassTimedOut(_) => "deletion_timeout",
            Error::UpdateStatus(_) => "update_status",
            Error::MissingField(_) => "invalid_object",
            Error::Leader(_) => "leader_election",
            Error::Startup(_) => "startup",
            Error::MustExit(_) => "must_exit",
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(code: u16, reason: &str) -> kube::Error {
        kube::Error::Api(
            kube::core::Status::failure(&format!("secrets \"s3\" is {reason}"), reason)
                .with_code(code)
                .boxed(),
        )
    }

    #[test]
    fn a_refused_secret_read_names_the_chart_value_that_grants_it() {
        let e = Error::reading_secret("s3", "team-a", api_error(403, "Forbidden"));
        assert!(matches!(e, Error::CredentialsForbidden { .. }));
        let msg = e.to_string();
        assert!(msg.contains("credentialsSecrets.namespaces"), "{msg}");
        assert!(msg.contains("team-a"), "{msg}");
        assert!(e.leaves_ledger_unread());
        assert_eq!(e.kind(), "credentials");

        let e = Error::reading_secret("s3", "team-a", api_error(404, "NotFound"));
        assert!(matches!(e, Error::CredentialsMissing { .. }));
        let e = Error::reading_secret("s3", "team-a", api_error(500, "InternalError"));
        assert!(matches!(e, Error::Credentials { .. }));
    }
}
