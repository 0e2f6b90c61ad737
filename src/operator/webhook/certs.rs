//! The webhook's own CA and serving certificate: when to make new ones, and
//! making them. Pure: the time is passed in, nothing is read or written.
//!
//! The CA lives ten years and signs a serving certificate that lives one;
//! the serving certificate is renewed a month before it ends, or when the
//! names it must carry change. Every replica serves the same certificate
//! (kept in one Secret), so the API server trusts whichever it reaches.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use time::OffsetDateTime;
use x509_parser::extensions::GeneralName;
use x509_parser::pem::parse_x509_pem;

const DAY: u64 = 24 * 60 * 60;
const CA_LIFETIME: Duration = Duration::from_secs(10 * 365 * DAY);
const LEAF_LIFETIME: Duration = Duration::from_secs(365 * DAY);
/// Renew this long before the end, so that a controller that was down for
/// weeks still renews in time.
const RENEW_BEFORE: Duration = Duration::from_secs(30 * DAY);
/// Clocks of the API server and the controller may differ a little.
const BACKDATE: Duration = Duration::from_secs(60 * 60);

/// A CA and the serving certificate it signed, all PEM.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Material {
    pub ca_cert: String,
    pub ca_key: String,
    pub cert: String,
    pub key: String,
}

#[derive(Debug, thiserror::Error)]
#[error("making the webhook's certificate: {0}")]
pub struct CertError(#[from] rcgen::Error);

/// What to do with the certificates found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Plan {
    Keep,
    /// A new serving certificate from the same CA; says why.
    NewLeaf(&'static str),
    /// A new CA and serving certificate; says why.
    NewCa(&'static str),
}

struct Parsed {
    not_after: u64,
    names: Vec<String>,
    subject: Vec<u8>,
    issuer: Vec<u8>,
    /// The SubjectPublicKeyInfo, to check that a key belongs to it.
    spki: Vec<u8>,
}

fn parse(pem: &str) -> Option<Parsed> {
    let (_, pem) = parse_x509_pem(pem.as_bytes()).ok()?;
    let cert = pem.parse_x509().ok()?;
    let mut names = Vec::new();
    if let Ok(Some(san)) = cert.subject_alternative_name() {
        for name in &san.value.general_names {
            match name {
                GeneralName::DNSName(d) => names.push((*d).to_string()),
                GeneralName::IPAddress(ip) => {
                    if let Ok(v4) = <[u8; 4]>::try_from(*ip) {
                        names.push(std::net::Ipv4Addr::from(v4).to_string());
                    } else if let Ok(v6) = <[u8; 16]>::try_from(*ip) {
                        names.push(std::net::Ipv6Addr::from(v6).to_string());
                    }
                }
                _ => {}
            }
        }
    }
    Some(Parsed {
        not_after: u64::try_from(cert.validity().not_after.timestamp()).unwrap_or(0),
        names,
        subject: cert.subject().as_raw().to_vec(),
        issuer: cert.issuer().as_raw().to_vec(),
        spki: cert.public_key().raw.to_vec(),
    })
}

/// Whether `key_pem` is the private key of `cert`: rustls refuses a pair
/// that does not match, so such a pair must be replaced, not kept.
fn key_matches(cert: &Parsed, key_pem: &str) -> bool {
    use rcgen::PublicKeyData;
    KeyPair::from_pem(key_pem).is_ok_and(|k| k.subject_public_key_info() == cert.spki)
}

/// Names as they compare: IP addresses in their canonical form, DNS names
/// in lower case, sorted, without repeats.
pub fn normalize(names: &[String]) -> Vec<String> {
    let mut out: Vec<String> = names
        .iter()
        .map(|n| n.trim())
        .filter(|n| !n.is_empty())
        .map(
            |n| match n.trim_matches(['[', ']']).parse::<std::net::IpAddr>() {
                Ok(ip) => ip.to_string(),
                Err(_) => n.to_ascii_lowercase(),
            },
        )
        .collect();
    out.sort_unstable();
    out.dedup();
    out
}

fn unix(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// Whether the certificates found (if any) serve `names` at `now`.
pub fn plan(found: Option<&Material>, names: &[String], now: SystemTime) -> Plan {
    let Some(found) = found else {
        return Plan::NewCa("no certificate yet");
    };
    let now = unix(now);
    let renew = RENEW_BEFORE.as_secs();
    let Some(ca) = parse(&found.ca_cert).filter(|c| key_matches(c, &found.ca_key)) else {
        return Plan::NewCa("the CA cannot be read");
    };
    if ca.not_after <= now + renew {
        return Plan::NewCa("the CA expires within 30 days");
    }
    let Some(leaf) = parse(&found.cert).filter(|c| key_matches(c, &found.key)) else {
        return Plan::NewLeaf("the serving certificate cannot be read");
    };
    if leaf.issuer != ca.subject {
        return Plan::NewLeaf("the serving certificate is not from this CA");
    }
    if leaf.not_after <= now + renew {
        return Plan::NewLeaf("the serving certificate expires within 30 days");
    }
    if normalize(names) != normalize(&leaf.names) {
        return Plan::NewLeaf("the names to serve changed");
    }
    Plan::Keep
}

/// At most this many CAs in a published caBundle.
const MAX_CAS: usize = 2;

/// The caBundle to publish for `ca`: `ca` first, then the CAs of `current`
/// (the bundle the webhook configuration has now) that are still valid,
/// at most [`MAX_CAS`] in all. Keeping the previous CA matters when the CA
/// is replaced (its Secret was emptied, say): the other replicas serve a
/// certificate from the old CA until they next read the Secret, and the API
/// server must go on trusting them meanwhile.
pub fn bundle(ca: &str, current: Option<&str>, now: SystemTime) -> String {
    let now = unix(now);
    let ca = ca.trim();
    let mut out = vec![ca.to_string()];
    for block in pem_blocks(current.unwrap_or_default()) {
        if out.len() >= MAX_CAS {
            break;
        }
        let valid = parse(&block).is_some_and(|c| c.not_after > now);
        if valid && !out.contains(&block) {
            out.push(block);
        }
    }
    out.join("\n") + "\n"
}

/// The PEM certificates in `text`, each trimmed.
fn pem_blocks(text: &str) -> Vec<String> {
    const END: &str = "-----END CERTIFICATE-----";
    let mut blocks = Vec::new();
    let mut rest = text;
    while let Some(start) = rest.find("-----BEGIN CERTIFICATE-----") {
        let Some(len) = rest[start..].find(END) else {
            break;
        };
        let end = start + len + END.len();
        blocks.push(rest[start..end].trim().to_string());
        rest = &rest[end..];
    }
    blocks
}

fn offset(t: u64) -> OffsetDateTime {
    OffsetDateTime::from_unix_timestamp(i64::try_from(t).unwrap_or(i64::MAX))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn ca_params(now: u64) -> CertificateParams {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::OrganizationName, "jobgate");
    // Unique per CA, so a serving certificate from an earlier CA is told
    // apart by its issuer.
    dn.push(DnType::CommonName, format!("jobgate webhook CA {now}"));
    params.distinguished_name = dn;
    params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    params.not_before = offset(now.saturating_sub(BACKDATE.as_secs()));
    params.not_after = offset(now + CA_LIFETIME.as_secs());
    params
}

/// Carries out `plan` (which must not be [`Plan::Keep`]): a new serving
/// certificate for `names`, signed by the found CA or a new one.
pub fn issue(
    plan: Plan,
    found: Option<&Material>,
    names: &[String],
    now: SystemTime,
) -> Result<Material, CertError> {
    let now = unix(now);
    let (ca_cert, ca_key_pem, issuer) = match (plan, found) {
        (Plan::NewLeaf(_) | Plan::Keep, Some(found)) => {
            let key = KeyPair::from_pem(&found.ca_key)?;
            let issuer = Issuer::from_ca_cert_pem(&found.ca_cert, key)?;
            (found.ca_cert.clone(), found.ca_key.clone(), issuer)
        }
        _ => {
            let key = KeyPair::generate()?;
            let params = ca_params(now);
            let cert = params.self_signed(&key)?;
            let key_pem = key.serialize_pem();
            (cert.pem(), key_pem, Issuer::new(params, key))
        }
    };
    let mut params = CertificateParams::new(names.to_vec())?;
    let mut dn = DistinguishedName::new();
    dn.push(
        DnType::CommonName,
        names.first().cloned().unwrap_or_else(|| "jobgate".into()),
    );
    params.distinguished_name = dn;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    params.not_before = offset(now.saturating_sub(BACKDATE.as_secs()));
    params.not_after = offset(now + LEAF_LIFETIME.as_secs());
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(Material {
        ca_cert,
        ca_key: ca_key_pem,
        cert: cert.pem(),
        key: key.serialize_pem(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names() -> Vec<String> {
        vec!["jobgate-webhook.jobgate.svc".into(), "127.0.0.1".into()]
    }

    fn at(days: u64) -> SystemTime {
        UNIX_EPOCH + Duration::from_secs(1_800_000_000 + days * DAY)
    }

    #[test]
    fn nothing_found_makes_a_ca_and_a_certificate_that_are_then_kept() {
        assert_eq!(
            plan(None, &names(), at(0)),
            Plan::NewCa("no certificate yet")
        );
        let m = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        assert_eq!(plan(Some(&m), &names(), at(0)), Plan::Keep);
        // Order and repeats of the names do not matter.
        let mut reordered = names();
        reordered.reverse();
        reordered.push("127.0.0.1".into());
        assert_eq!(plan(Some(&m), &reordered, at(1)), Plan::Keep);
    }

    #[test]
    fn the_serving_certificate_is_renewed_a_month_before_it_ends() {
        let m = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        assert_eq!(plan(Some(&m), &names(), at(334)), Plan::Keep);
        let p = plan(Some(&m), &names(), at(336));
        assert!(matches!(p, Plan::NewLeaf(_)), "{p:?}");
        let renewed = issue(p, Some(&m), &names(), at(336)).unwrap();
        // Same CA: the caBundle the API server has stays valid.
        assert_eq!(renewed.ca_cert, m.ca_cert);
        assert_ne!(renewed.cert, m.cert);
        assert_eq!(plan(Some(&renewed), &names(), at(336)), Plan::Keep);
    }

    #[test]
    fn new_names_get_a_new_serving_certificate() {
        let m = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        let mut more = names();
        more.push("jobgate-webhook.other.svc".into());
        assert_eq!(
            plan(Some(&m), &more, at(0)),
            Plan::NewLeaf("the names to serve changed")
        );
    }

    #[test]
    fn a_ca_near_its_end_or_unreadable_is_replaced() {
        let m = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        assert!(matches!(plan(Some(&m), &names(), at(3640)), Plan::NewCa(_)));
        let broken = Material {
            ca_key: "not a key".into(),
            ..m.clone()
        };
        assert!(matches!(
            plan(Some(&broken), &names(), at(0)),
            Plan::NewCa(_)
        ));
    }

    #[test]
    fn names_compare_in_canonical_form() {
        let m = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        let spelled = vec![
            "JobGate-Webhook.jobgate.SVC".to_string(),
            "[127.0.0.1]".into(),
        ];
        assert_eq!(plan(Some(&m), &spelled, at(0)), Plan::Keep);
        let v6 = issue(Plan::NewCa("test"), None, &["0:0::1".to_string()], at(0)).unwrap();
        assert_eq!(plan(Some(&v6), &["::1".to_string()], at(0)), Plan::Keep);
    }

    #[test]
    fn a_key_that_does_not_match_its_certificate_is_replaced() {
        let a = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        let b = issue(Plan::NewLeaf("test"), Some(&a), &names(), at(0)).unwrap();
        let mismatched = Material {
            key: b.key,
            ..a.clone()
        };
        assert_eq!(
            plan(Some(&mismatched), &names(), at(0)),
            Plan::NewLeaf("the serving certificate cannot be read")
        );
        let bad_ca = Material {
            ca_key: b.ca_key.clone(),
            ..a
        };
        // b's CA key is a's CA key (same CA): still fine.
        assert_eq!(plan(Some(&bad_ca), &names(), at(0)), Plan::Keep);
    }

    #[test]
    fn a_new_ca_is_published_with_the_previous_one_while_it_is_valid() {
        let old = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        let new = issue(Plan::NewCa("test"), None, &names(), at(1)).unwrap();
        let first = bundle(&old.ca_cert, None, at(0));
        assert_eq!(pem_blocks(&first), vec![old.ca_cert.trim().to_string()]);
        // Publishing the same CA again changes nothing.
        assert_eq!(bundle(&old.ca_cert, Some(&first), at(0)), first);
        let both = bundle(&new.ca_cert, Some(&first), at(1));
        assert_eq!(
            pem_blocks(&both),
            vec![
                new.ca_cert.trim().to_string(),
                old.ca_cert.trim().to_string()
            ]
        );
        assert_eq!(bundle(&new.ca_cert, Some(&both), at(1)), both);
        // A third CA pushes the oldest out; an expired one is dropped.
        let third = issue(Plan::NewCa("test"), None, &names(), at(2)).unwrap();
        let next = bundle(&third.ca_cert, Some(&both), at(2));
        assert_eq!(
            pem_blocks(&next),
            vec![
                third.ca_cert.trim().to_string(),
                new.ca_cert.trim().to_string()
            ]
        );
        let later = bundle(&third.ca_cert, Some(&both), at(3660 + 3));
        assert_eq!(pem_blocks(&later), vec![third.ca_cert.trim().to_string()]);
    }

    #[test]
    fn a_certificate_from_another_ca_is_replaced() {
        let a = issue(Plan::NewCa("test"), None, &names(), at(0)).unwrap();
        let b = issue(Plan::NewCa("test"), None, &names(), at(1)).unwrap();
        let mixed = Material {
            cert: b.cert,
            key: b.key,
            ..a
        };
        assert_eq!(
            plan(Some(&mixed), &names(), at(1)),
            Plan::NewLeaf("the serving certificate is not from this CA")
        );
    }
}
