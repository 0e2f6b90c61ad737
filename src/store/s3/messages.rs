//! What S3 failures say to a person: one sentence naming the cause and,
//! where there is one, the fix. Which `StoreError` a failure becomes is
//! decided in `super`; only the wording is made here, from the SDK's chain of
//! underlying errors.

use std::time::Duration;

use aws_config::imds::client::error::TokenError as ImdsTokenError;
use aws_credential_types::provider::error::CredentialsError;
use aws_sdk_s3::error::DisplayErrorContext;

use crate::store::StoreError;

/// Where requests go, as the user configured it: error messages name it, so
/// that "cannot reach X" points at the setting to fix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Target {
    pub endpoint: String,
    pub connect_timeout: Duration,
    pub attempt_timeout: Duration,
}

/// The endpoint as users configure it, by the SDK's precedence: the
/// `--endpoint-url` option, `AWS_ENDPOINT_URL_S3`, then `AWS_ENDPOINT_URL` or
/// the profile (already resolved into `shared`); else AWS's own endpoint.
pub(super) fn endpoint_name(
    explicit: Option<&str>,
    s3_env: Option<&str>,
    ignore_env: Option<&str>,
    shared: Option<&str>,
    region: &str,
) -> String {
    let ignored = ignore_env.is_some_and(|v| v.eq_ignore_ascii_case("true"));
    let s3_env = s3_env.filter(|e| !e.is_empty() && !ignored);
    explicit
        .or(s3_env)
        .or(shared)
        .map_or_else(|| format!("s3.{region}.amazonaws.com"), String::from)
}

pub(super) fn context<E: std::error::Error>(err: &E) -> String {
    DisplayErrorContext(err).to_string()
}

pub(super) fn credentials_problem(text: &str) -> bool {
    let t = text.to_ascii_lowercase();
    t.contains("credential") || t.contains("identity")
}

/// Why a request never got an answer, in terms of its fix. Only the wording
/// depends on it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Cause {
    NoCredentials,
    CredentialsTimedOut,
    CredentialsInvalid(String),
    CredentialsFailed(String),
    Refused,
    Dns(String),
    Unroutable(&'static str),
    Tls(String),
    ConnectTimeout,
    Timeout,
    ConnectionLost(String),
    Other(String),
}

impl Cause {
    /// Walks the error's source chain for the most specific known cause.
    pub(super) fn of(err: &(dyn std::error::Error + 'static)) -> Cause {
        let chain = source_chain(err);
        if let Some(c) = chain
            .iter()
            .find_map(|e| e.downcast_ref::<CredentialsError>())
        {
            // The SDK prefixes profile errors with which provider failed to
            // build, which would crowd the actual mistake out of `brief`.
            let detail = || {
                let text = source_chain(c)
                    .last()
                    .map_or_else(String::new, |e| e.to_string());
                let text = text
                    .split_once("could not be built: ")
                    .map_or(text.as_str(), |(_, t)| t);
                brief(text)
            };
            return match c {
                CredentialsError::CredentialsNotLoaded(_) => Cause::NoCredentials,
                // IMDS refusing a session token means there is no instance
                // identity to use (IMDS disabled, or not EC2 behind a proxy
                // that answers for it): as good as no credentials at all.
                CredentialsError::ProviderError(_) if chain.iter().any(|e| imds_forbidden(*e)) => {
                    Cause::NoCredentials
                }
                CredentialsError::ProviderTimedOut(_) => Cause::CredentialsTimedOut,
                CredentialsError::InvalidConfiguration(_) => Cause::CredentialsInvalid(detail()),
                _ => Cause::CredentialsFailed(detail()),
            };
        }
        let ios: Vec<&std::io::Error> = chain
            .iter()
            .filter_map(|e| e.downcast_ref::<std::io::Error>())
            .collect();
        use std::io::ErrorKind as K;
        if ios.iter().any(|io| io.kind() == K::ConnectionRefused) {
            return Cause::Refused;
        }
        if let Some(io) = ios.iter().find(|io| {
            matches!(
                io.kind(),
                K::NetworkUnreachable | K::HostUnreachable | K::AddrNotAvailable
            )
        }) {
            return Cause::Unroutable(match io.kind() {
                K::NetworkUnreachable => "network unreachable",
                K::HostUnreachable => "host unreachable",
                _ => "no usable local address",
            });
        }
        // hyper's connector reports resolver failures as "dns error", with
        // the resolver's message below it.
        if let Some(at) = chain.iter().position(|e| e.to_string() == "dns error") {
            let why = chain
                .get(at + 1)
                .map_or_else(String::new, |e| e.to_string());
            let why = why
                .strip_prefix("failed to lookup address information: ")
                .unwrap_or(&why);
            return Cause::Dns(brief(why));
        }
        // rustls failures reach us as InvalidData I/O errors wrapping the
        // rustls error, under hyper's "client error (Connect)"; TCP itself
        // never raises InvalidData, so while connecting it means TLS. (If
        // hyper rewords that, the failure still reads well as a lost
        // connection below.)
        let connecting = chain.iter().any(|e| e.to_string().contains("(Connect)"));
        if let Some(tls) = ios
            .iter()
            .find(|io| connecting && io.kind() == K::InvalidData && io.get_ref().is_some())
        {
            let why = tls.to_string();
            return Cause::Tls(if why.contains("corrupt message") {
                "the server does not speak TLS; use http:// for a plain-HTTP endpoint".into()
            } else if why.contains("UnknownIssuer") {
                format!(
                    "{}: its certificate is signed by a CA this host does not trust; for a private CA, set AWS_CA_BUNDLE to a PEM file with it",
                    brief(&why)
                )
            } else {
                brief(&why)
            });
        }
        if let Some(timeout) = chain
            .iter()
            .map(|e| e.to_string())
            .find(|m| m.contains("timeout occurred"))
        {
            return if timeout.contains("connect timeout") {
                Cause::ConnectTimeout
            } else {
                Cause::Timeout
            };
        }
        if let Some(io) = ios.first() {
            return Cause::ConnectionLost(match io.kind() {
                K::ConnectionReset => "connection reset".into(),
                K::ConnectionAborted => "connection aborted".into(),
                K::BrokenPipe => "connection closed while sending".into(),
                K::UnexpectedEof => "connection closed early".into(),
                _ => brief(&io.to_string()),
            });
        }
        Cause::Other(innermost(err))
    }

    pub(super) fn sentence(&self, t: &Target) -> String {
        let ep = &t.endpoint;
        let secs = |d: Duration| humantime::format_duration(d).to_string();
        match self {
            Cause::NoCredentials => "no AWS credentials found (set AWS_ACCESS_KEY_ID and \
                AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or pod identity)"
                .into(),
            Cause::CredentialsTimedOut => {
                "loading AWS credentials timed out (run with -v to see which source)".into()
            }
            Cause::CredentialsInvalid(why) => {
                format!("the AWS credentials configuration is invalid ({why})")
            }
            Cause::CredentialsFailed(why) => format!("cannot load AWS credentials ({why})"),
            Cause::Refused => format!("cannot reach {ep} (connection refused)"),
            Cause::Dns(why) => format!("cannot reach {ep} (DNS lookup failed: {why})"),
            Cause::Unroutable(why) => format!("cannot reach {ep} ({why})"),
            Cause::Tls(why) => format!("TLS handshake with {ep} failed ({why})"),
            Cause::ConnectTimeout => format!(
                "cannot reach {ep} (no connection within {})",
                secs(t.connect_timeout)
            ),
            Cause::Timeout => format!("no answer from {ep} within {}", secs(t.attempt_timeout)),
            Cause::ConnectionLost(why) => format!("connection to {ep} failed ({why})"),
            Cause::Other(why) => format!("request to {ep} failed ({why})"),
        }
    }
}

pub(super) fn imds_forbidden(err: &(dyn std::error::Error + 'static)) -> bool {
    err.downcast_ref::<ImdsTokenError>()
        .is_some_and(|e| e.to_string().contains("forbidden"))
}

/// The error and its sources, including the error inside each I/O error
/// (whose own `source()` skips it).
pub(crate) fn source_chain<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> Vec<&'a (dyn std::error::Error + 'static)> {
    let mut chain = Vec::new();
    let mut next = Some(err);
    // Bounded in case a source chain ever loops.
    while let Some(e) = next.filter(|_| chain.len() < 64) {
        chain.push(e);
        if let Some(inner) = e
            .downcast_ref::<std::io::Error>()
            .and_then(std::io::Error::get_ref)
        {
            chain.push(inner);
        }
        next = e.source();
    }
    chain
}

/// The deepest error's message, which names the concrete failure, shortened.
pub(crate) fn innermost(err: &(dyn std::error::Error + 'static)) -> String {
    let chain = source_chain(err);
    let last = chain.last().map_or_else(String::new, |e| e.to_string());
    brief(&last)
}

/// One line of at most 100 characters: the result goes inside a sentence.
pub(crate) fn brief(text: &str) -> String {
    const MAX: usize = 100;
    let line = text.lines().next().unwrap_or("").trim();
    if line.chars().count() <= MAX {
        return line.to_string();
    }
    let cut: String = line.chars().take(MAX - 1).collect();
    format!("{}…", cut.trim_end())
}

/// Classifies by the S3 error code first and the status second: a
/// precondition failure has been seen arriving with an unexpected status.
/// The server's own message stays out of the sentence (it is in the debug
/// log); the code says what happened.
pub(super) fn classify_service(
    bucket: &str,
    endpoint: &str,
    status: u16,
    code: Option<&str>,
) -> StoreError {
    let answer = match code {
        Some(code) => format!("HTTP {status} {code}"),
        None => format!("HTTP {status}"),
    };
    match code {
        Some("PreconditionFailed") | Some("ConditionalRequestConflict") => {
            return StoreError::Conflict(answer);
        }
        Some("NoSuchKey") => return StoreError::Missing,
        Some("NoSuchBucket") => return StoreError::NoSuchBucket(bucket.to_string()),
        Some("AccessDenied") => {
            return StoreError::AccessDenied(format!(
                "access denied to bucket {bucket} (check the bucket policy and the permissions of the credentials in use)"
            ));
        }
        Some("InvalidAccessKeyId") => {
            return StoreError::AccessDenied(format!(
                "access denied: {endpoint} does not know the access key id (check AWS_ACCESS_KEY_ID or the profile)"
            ));
        }
        Some("SignatureDoesNotMatch") => {
            return StoreError::AccessDenied(
                "access denied: the secret access key does not match the access key id (check AWS_SECRET_ACCESS_KEY or the profile)".into(),
            );
        }
        Some("ExpiredToken") => {
            return StoreError::AccessDenied(
                "access denied: the session token has expired (refresh the credentials)".into(),
            );
        }
        Some("InvalidToken") => {
            return StoreError::AccessDenied(
                "access denied: the session token is invalid (check AWS_SESSION_TOKEN or the profile)".into(),
            );
        }
        Some("NotImplemented") => return StoreError::Unsupported(answer),
        Some("SlowDown" | "InternalError" | "ServiceUnavailable" | "RequestTimeout") => {
            return StoreError::Ambiguous(format!("{endpoint} answered {answer}"));
        }
        _ => {}
    }
    match status {
        412 | 409 => StoreError::Conflict(answer),
        404 => StoreError::Missing,
        401 | 403 => StoreError::AccessDenied(format!(
            "access denied: {endpoint} answered {answer} (check the credentials and the bucket policy)"
        )),
        501 => StoreError::Unsupported(answer),
        408 | 429 | 500..=599 => StoreError::Ambiguous(format!("{endpoint} answered {answer}")),
        _ => StoreError::Other(format!("{endpoint} answered {answer}")),
    }
}

/// A read refused with 403. S3 answers a read of an object that does not
/// exist with 403 instead of 404 to callers that may not list the bucket,
/// so a ledger not created yet reads as forbidden: both causes are named.
pub fn read_denied(bucket: &str, key: &str) -> String {
    format!(
        "access denied reading {key} in bucket {bucket}: wrong credentials, or no s3:ListBucket on its prefix (then S3 answers 403 for a ledger not created yet)"
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Error as IoError, ErrorKind};

    fn target(endpoint: &str) -> Target {
        Target {
            endpoint: endpoint.into(),
            connect_timeout: Duration::from_secs(3),
            attempt_timeout: Duration::from_secs(10),
        }
    }

    /// An error with a message and an optional source, like the layers the
    /// SDK and hyper wrap around a failure.
    #[derive(Debug)]
    struct Layer(
        &'static str,
        Option<Box<dyn std::error::Error + Send + Sync>>,
    );

    impl std::fmt::Display for Layer {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            f.write_str(self.0)
        }
    }

    impl std::error::Error for Layer {
        fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
            self.1.as_deref().map(|e| e as _)
        }
    }

    fn wrap(msg: &'static str, inner: impl std::error::Error + Send + Sync + 'static) -> Layer {
        Layer(msg, Some(Box::new(inner)))
    }

    #[test]
    fn classifies_by_code_before_status() {
        let c = |status, code| classify_service("b", "http://s3", status, code);
        assert!(matches!(
            c(200, Some("PreconditionFailed")),
            StoreError::Conflict(_)
        ));
        assert!(matches!(
            c(409, Some("ConditionalRequestConflict")),
            StoreError::Conflict(_)
        ));
        assert_eq!(c(404, Some("NoSuchKey")), StoreError::Missing);
        assert_eq!(
            c(404, Some("NoSuchBucket")),
            StoreError::NoSuchBucket("b".into())
        );
        assert!(matches!(c(503, Some("SlowDown")), StoreError::Ambiguous(_)));
        assert!(matches!(c(500, None), StoreError::Ambiguous(_)));
        assert!(matches!(
            c(403, Some("InvalidAccessKeyId")),
            StoreError::AccessDenied(_)
        ));
        assert!(matches!(c(501, None), StoreError::Unsupported(_)));
    }

    #[test]
    fn a_refused_read_names_both_causes() {
        let text = read_denied("my-bucket", "jobgate/batch/etl.json");
        assert!(text.contains("wrong credentials"), "{text}");
        assert!(text.contains("s3:ListBucket"), "{text}");
        assert!(text.contains("jobgate/batch/etl.json") && text.contains("my-bucket"));
    }

    #[test]
    fn service_errors_read_as_one_sentence() {
        let text = |status, code| classify_service("b", "http://s3:9000", status, code).to_string();
        for (status, code) in [
            (403, Some("AccessDenied")),
            (403, Some("InvalidAccessKeyId")),
            (403, Some("SignatureDoesNotMatch")),
            (400, Some("ExpiredToken")),
            (400, Some("InvalidToken")),
            (403, None),
        ] {
            let t = text(status, code);
            assert!(t.starts_with("access denied"), "{t}");
            assert!(t.len() < 160 && !t.contains('\n'), "{t}");
        }
        assert_eq!(
            text(503, Some("SlowDown")),
            "http://s3:9000 answered HTTP 503 SlowDown"
        );
        assert_eq!(
            text(501, Some("NotImplemented")),
            "the store does not support conditional writes (HTTP 501 NotImplemented)"
        );
        assert_eq!(text(418, None), "http://s3:9000 answered HTTP 418");
    }

    #[test]
    fn a_refused_connection_names_the_endpoint() {
        let err = wrap(
            "client error (Connect)",
            wrap(
                "tcp connect error",
                IoError::from(ErrorKind::ConnectionRefused),
            ),
        );
        let cause = Cause::of(&err);
        assert_eq!(cause, Cause::Refused);
        assert_eq!(
            cause.sentence(&target("http://127.0.0.1:1")),
            "cannot reach http://127.0.0.1:1 (connection refused)"
        );
    }

    #[test]
    fn a_failed_lookup_says_dns() {
        let err = wrap(
            "client error (Connect)",
            wrap(
                "dns error",
                IoError::other("failed to lookup address information: Name or service not known"),
            ),
        );
        assert_eq!(
            Cause::of(&err).sentence(&target("http://minio:9000")),
            "cannot reach http://minio:9000 (DNS lookup failed: Name or service not known)"
        );
    }

    #[test]
    fn tls_failures_are_told_apart_from_plain_http() {
        // As tokio-rustls reports them: InvalidData wrapping rustls' error,
        // inside the connector's own I/O error.
        let tls = |msg: &'static str| {
            wrap(
                "client error (Connect)",
                IoError::other(IoError::new(ErrorKind::InvalidData, Layer(msg, None))),
            )
        };
        let ep = target("https://s3.local");
        assert_eq!(
            Cause::of(&tls("invalid peer certificate: UnknownIssuer")).sentence(&ep),
            "TLS handshake with https://s3.local failed (invalid peer certificate: UnknownIssuer: its certificate is signed by a CA this host does not trust; for a private CA, set AWS_CA_BUNDLE to a PEM file with it)"
        );
        let plain = Cause::of(&tls("received corrupt message of type InvalidContentType"));
        assert!(plain.sentence(&ep).contains("use http://"), "{plain:?}");
        // Once connected, bad data is not a handshake problem.
        let body = wrap(
            "error reading a body from connection",
            IoError::new(ErrorKind::InvalidData, Layer("invalid chunk size", None)),
        );
        assert_eq!(
            Cause::of(&body).sentence(&ep),
            "connection to https://s3.local failed (invalid chunk size)"
        );
    }

    #[test]
    fn timeouts_say_which_wait_ran_out() {
        let connect = wrap(
            "timeout",
            Layer("HTTP connect timeout occurred after 3s", None),
        );
        assert_eq!(
            Cause::of(&connect).sentence(&target("http://s3")),
            "cannot reach http://s3 (no connection within 3s)"
        );
        assert_eq!(
            Cause::Timeout.sentence(&target("http://s3")),
            "no answer from http://s3 within 10s"
        );
    }

    #[test]
    fn credential_errors_win_over_everything_below_them() {
        let missing = wrap(
            "other",
            CredentialsError::not_loaded("no providers in chain provided credentials"),
        );
        let cause = Cause::of(&missing);
        assert_eq!(cause, Cause::NoCredentials);
        let text = cause.sentence(&target("s3.us-east-1.amazonaws.com"));
        assert!(text.starts_with("no AWS credentials found"), "{text}");
        assert!(text.contains("AWS_ACCESS_KEY_ID"), "{text}");
        // A provider that failed on the network is still a credentials
        // problem: the I/O error below it must not turn it into "cannot reach".
        let imds = wrap(
            "other",
            CredentialsError::provider_error(wrap(
                "failed to load IMDS session token",
                IoError::from(ErrorKind::ConnectionRefused),
            )),
        );
        assert!(matches!(Cause::of(&imds), Cause::CredentialsFailed(_)));
        assert!(
            Cause::of(&imds)
                .sentence(&target("x"))
                .starts_with("cannot load AWS credentials (")
        );
    }

    #[test]
    fn other_io_errors_keep_their_kind_short() {
        let reset = wrap("io error", IoError::from(ErrorKind::ConnectionReset));
        assert_eq!(
            Cause::of(&reset).sentence(&target("http://s3")),
            "connection to http://s3 failed (connection reset)"
        );
        let unknown = Layer("something odd", None);
        assert_eq!(
            Cause::of(&unknown).sentence(&target("http://s3")),
            "request to http://s3 failed (something odd)"
        );
    }

    #[test]
    fn long_details_are_cut_to_one_short_line() {
        let long = "x".repeat(500);
        let cut = brief(&format!("{long}\nsecond line"));
        assert_eq!(cut.chars().count(), 100);
        assert!(cut.ends_with('…'));
        assert_eq!(brief("short\nmore"), "short");
    }

    #[test]
    fn the_endpoint_is_named_as_configured() {
        let name = |explicit, s3_env, ignore, shared| {
            endpoint_name(explicit, s3_env, ignore, shared, "eu-west-1")
        };
        assert_eq!(name(None, None, None, None), "s3.eu-west-1.amazonaws.com");
        assert_eq!(
            name(Some("http://a"), Some("http://b"), None, Some("http://c")),
            "http://a"
        );
        assert_eq!(
            name(None, Some("http://b"), None, Some("http://c")),
            "http://b"
        );
        assert_eq!(
            name(None, Some("http://b"), Some("true"), None),
            "s3.eu-west-1.amazonaws.com"
        );
        assert_eq!(name(None, Some(""), None, Some("http://c")), "http://c");
    }
}
