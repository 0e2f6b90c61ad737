//! Extra certificate authorities for S3 endpoints with a private CA: the
//! PEM file named by `AWS_CA_BUNDLE` (the AWS CLI's and other SDKs' setting,
//! which the Rust SDK does not read itself) is trusted beside the system's
//! roots, for the store and for the credential providers (STS) alike.

use std::path::Path;

use aws_sdk_s3::config::SharedHttpClient;
use aws_smithy_http_client::Builder;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore};

/// The environment variable, as the AWS CLI names it.
pub const CA_BUNDLE_VAR: &str = "AWS_CA_BUNDLE";

/// The PEM bytes of `AWS_CA_BUNDLE`, checked, or `None` when it is unset or
/// empty. The error is one sentence for the user: what is wrong and what to
/// do.
pub fn from_env() -> Result<Option<Vec<u8>>, String> {
    match std::env::var_os(CA_BUNDLE_VAR) {
        Some(path) if !path.is_empty() => read(Path::new(&path)).map(Some),
        _ => Ok(None),
    }
}

/// Reads and checks a CA bundle: a PEM file with at least one certificate,
/// every one of which parses.
pub fn read(path: &Path) -> Result<Vec<u8>, String> {
    let bytes = std::fs::read(path).map_err(|e| {
        format!(
            "{CA_BUNDLE_VAR}={}: cannot read it ({e}); point it at a PEM file with the CA certificates of your S3 endpoint, or unset it",
            path.display()
        )
    })?;
    check(&bytes).map_err(|why| {
        format!(
            "{CA_BUNDLE_VAR}={}: {why}; it must hold PEM certificates (-----BEGIN CERTIFICATE-----), such as the CA that signed your S3 endpoint's certificate",
            path.display()
        )
    })?;
    Ok(bytes)
}

/// Why `pem` is not a usable bundle, if it is not.
fn check(pem: &[u8]) -> Result<(), String> {
    let mut certificates = 0;
    for block in x509_parser::pem::Pem::iter_from_buffer(pem) {
        let block = block.map_err(|e| format!("not valid PEM ({e})"))?;
        if block.label != "CERTIFICATE" {
            continue;
        }
        block
            .parse_x509()
            .map_err(|e| format!("certificate {} does not parse ({e})", certificates + 1))?;
        certificates += 1;
    }
    if certificates == 0 {
        return Err("no certificate in it".into());
    }
    Ok(())
}

/// An HTTPS client that trusts the system's roots and the certificates in
/// `pem`.
pub fn https_client(pem: Vec<u8>) -> Result<SharedHttpClient, String> {
    let trust = TrustStore::default().with_pem_certificate(pem);
    let context = TlsContext::builder()
        .with_trust_store(trust)
        .build()
        .map_err(|e| format!("{CA_BUNDLE_VAR}: {e}"))?;
    Ok(Builder::new()
        .tls_provider(tls::Provider::Rustls(
            tls::rustls_provider::CryptoMode::AwsLc,
        ))
        .tls_context(context)
        .build_https())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ca_pem() -> String {
        let key = rcgen::KeyPair::generate().unwrap();
        let mut params = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        params.self_signed(&key).unwrap().pem()
    }

    #[test]
    fn a_bundle_needs_certificates_that_parse() {
        assert!(check(ca_pem().as_bytes()).is_ok());
        let two = format!("{}{}", ca_pem(), ca_pem());
        assert!(check(two.as_bytes()).is_ok());
        assert_eq!(check(b"").unwrap_err(), "no certificate in it");
        assert_eq!(
            check(b"-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n").unwrap_err(),
            "no certificate in it"
        );
        let broken = "-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(
            check(broken.as_bytes())
                .unwrap_err()
                .starts_with("certificate 1 does not parse"),
        );
    }

    #[test]
    fn an_unreadable_bundle_says_which_file_and_what_to_do() {
        let err = read(Path::new("/nonexistent/ca.pem")).unwrap_err();
        assert!(
            err.starts_with("AWS_CA_BUNDLE=/nonexistent/ca.pem: cannot read it"),
            "{err}"
        );
        assert!(err.contains("or unset it"), "{err}");
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("ca.pem");
        std::fs::write(&path, "hello").unwrap();
        let err = read(&path).unwrap_err();
        assert!(err.contains("no certificate in it"), "{err}");
        std::fs::write(&path, ca_pem()).unwrap();
        assert!(https_client(read(&path).unwrap()).is_ok());
    }
}
