//! Which ledger locations a ConcurrencyGroup may use: the cluster admin's
//! allowlist (`--allowed-ledger`), checked before the controller reads the
//! group's credentials or touches S3, so that a tenant who may create
//! groups in one namespace cannot make the controller read, create or
//! rewrite ledgers that belong to another namespace (pure, unit-tested).
//!
//! A template is `s3://BUCKET/PREFIX`, `gs://BUCKET/PREFIX` or
//! `az://ACCOUNT/CONTAINER/PREFIX`: each of `BUCKET`, `ACCOUNT` and
//! `CONTAINER` is a name or `*` (any); `PREFIX` may hold `{namespace}` and
//! `{name}` (the group's namespace and name), each at most once per path
//! segment. A `PREFIX` that ends in `/` allows every key below it;
//! otherwise it allows that one key. A template allows only its own store.
//! Without any `--allowed-ledger` the default is [`DEFAULT_TEMPLATES`],
//! which keeps the default key (`jobgate/<namespace>/<name>.json`) allowed
//! in any bucket of any of the three. The endpoint is not part of a
//! location.

use std::fmt;

/// The allowlist when the admin gives none: any bucket of any store, keys
/// under the group's own namespace.
pub const DEFAULT_TEMPLATES: [&str; 3] = [
    "s3://*/jobgate/{namespace}/",
    "gs://*/jobgate/{namespace}/",
    "az://*/*/jobgate/{namespace}/",
];

/// Which kind of store a location is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Scheme {
    S3,
    Gcs,
    Azure,
}

impl Scheme {
    fn prefix(self) -> &'static str {
        match self {
            Scheme::S3 => "s3://",
            Scheme::Gcs => "gs://",
            Scheme::Azure => "az://",
        }
    }
}

/// Where a ledger lives, short of its key: the store and its bucket (for
/// Azure, the account and the container).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Place {
    pub scheme: Scheme,
    /// `[bucket]`, or `[account, container]` on Azure.
    pub names: Vec<String>,
}

impl Place {
    pub fn s3(bucket: &str) -> Place {
        Place {
            scheme: Scheme::S3,
            names: vec![bucket.to_string()],
        }
    }
}

/// An S3 bucket, as most locations are.
impl From<&str> for Place {
    fn from(bucket: &str) -> Place {
        Place::s3(bucket)
    }
}

impl fmt::Display for Place {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.scheme.prefix(), self.names.join("/"))
    }
}

const NAMESPACE: &str = "{namespace}";
const NAME: &str = "{name}";

/// Why a template was refused at startup.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("--allowed-ledger {template:?}: {why}")]
pub struct TemplateError {
    pub template: String,
    pub why: String,
}

/// One parsed `--allowed-ledger` entry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Template {
    /// As given, for messages.
    raw: String,
    scheme: Scheme,
    /// One per name of a [`Place`]; `None`: any.
    names: Vec<Option<String>>,
    /// The key part, with placeholders; empty for a whole bucket.
    path: String,
}

impl Template {
    pub fn parse(raw: &str) -> Result<Template, TemplateError> {
        let fail = |why: &str| TemplateError {
            template: raw.to_string(),
            why: why.to_string(),
        };
        let (scheme, rest) = [Scheme::S3, Scheme::Gcs, Scheme::Azure]
            .into_iter()
            .find_map(|s| raw.strip_prefix(s.prefix()).map(|rest| (s, rest)))
            .ok_or_else(|| {
                fail("it must start with s3://, gs:// or az://, as in s3://my-bucket/jobgate/{namespace}/")
            })?;
        let count = if scheme == Scheme::Azure { 2 } else { 1 };
        let mut parts = rest.splitn(count + 1, '/');
        let names: Vec<&str> = parts.by_ref().take(count).collect();
        let Some(path) = parts.next() else {
            return Err(fail(match scheme {
                Scheme::Azure => {
                    "it names no key prefix; end it with / to allow the whole container (az://ACCOUNT/CONTAINER/) or give one (az://ACCOUNT/CONTAINER/jobgate/{namespace}/)"
                }
                _ => {
                    "it names no key prefix; end it with / to allow the whole bucket (s3://BUCKET/) or give one (s3://BUCKET/jobgate/{namespace}/)"
                }
            }));
        };
        let names = names
            .iter()
            .enumerate()
            .map(|(i, n)| match *n {
                "*" => Ok(None),
                n if valid_name(scheme, i, n) => Ok(Some(n.to_string())),
                _ => Err(fail(match (scheme, i) {
                    (Scheme::S3, _) => "the bucket must be * (any bucket) or an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)",
                    (Scheme::Gcs, _) => "the bucket must be * (any bucket) or a GCS bucket name (3 to 63 lowercase letters, digits, dots, hyphens and underscores)",
                    (Scheme::Azure, 0) => "the account must be * (any account) or a storage account name (3 to 24 lowercase letters and digits)",
                    (Scheme::Azure, _) => "the container must be * (any container) or a container name (3 to 63 lowercase letters, digits and hyphens)",
                })),
            })
            .collect::<Result<Vec<_>, _>>()?;
        if path.starts_with('/') {
            return Err(fail(
                "the key prefix starts with /, which no key does; write s3://BUCKET/PREFIX with a single slash",
            ));
        }
        let segments: Vec<&str> = path.split('/').collect();
        let last = segments.len() - 1;
        for (i, segment) in segments.iter().enumerate() {
            // The last segment is empty exactly when the prefix ends in `/`.
            if segment.is_empty() && i != last {
                return Err(fail(
                    "the key prefix has an empty segment (//); remove the extra slash",
                ));
            }
            if *segment == "." || *segment == ".." {
                return Err(fail(
                    "the key prefix has a . or .. segment, which stores may resolve differently; write the prefix out plainly",
                ));
            }
            let placeholders = segment.matches(NAMESPACE).count() + segment.matches(NAME).count();
            if placeholders > 1 {
                // `{namespace}-{name}` is the same key for namespace `a-b`
                // and group `c` as for namespace `a` and group `b-c`.
                return Err(fail(
                    "a path segment holds more than one placeholder, so two groups could map to the same key; put {namespace} and {name} in segments of their own",
                ));
            }
            let bare = segment.replace(NAMESPACE, "").replace(NAME, "");
            if bare.contains('{') || bare.contains('}') {
                return Err(fail(
                    "it has a placeholder other than {namespace} and {name}, or an unmatched brace",
                ));
            }
            if bare.chars().any(|c| c == '\\' || c.is_control()) {
                return Err(fail(
                    "the key prefix holds a backslash or a control character; use plain key characters",
                ));
            }
        }
        Ok(Template {
            raw: raw.to_string(),
            scheme,
            names,
            path: path.to_string(),
        })
    }

    /// The key (or, ending in `/`, the prefix) for one group.
    fn expand(&self, namespace: &str, name: &str) -> String {
        self.path.replace(NAMESPACE, namespace).replace(NAME, name)
    }

    fn admits(&self, place: &Place, key: &str, namespace: &str, name: &str) -> bool {
        if self.scheme != place.scheme
            || self.names.len() != place.names.len()
            || self
                .names
                .iter()
                .zip(&place.names)
                .any(|(want, got)| want.as_ref().is_some_and(|w| w != got))
        {
            return false;
        }
        let want = self.expand(namespace, name);
        if want.is_empty() {
            return true;
        }
        // A prefix ends in `/`, so `jobgate/a/` never admits `jobgate/ab/x`.
        if want.ends_with('/') {
            key.len() > want.len() && key.starts_with(&want)
        } else {
            key == want
        }
    }
}

impl fmt::Display for Template {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.raw)
    }
}

/// The ledger locations groups may use.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Allowlist {
    templates: Vec<Template>,
    /// No `--allowed-ledger` was given.
    default: bool,
}

impl Default for Allowlist {
    fn default() -> Self {
        Allowlist {
            templates: DEFAULT_TEMPLATES
                .iter()
                .filter_map(|t| Template::parse(t).ok())
                .collect(),
            default: true,
        }
    }
}

impl Allowlist {
    /// The admin's templates; none at all means [`DEFAULT_TEMPLATES`].
    pub fn parse<S: AsRef<str>>(templates: &[S]) -> Result<Allowlist, TemplateError> {
        if templates.is_empty() {
            return Ok(Allowlist::default());
        }
        let templates = templates
            .iter()
            .map(|t| Template::parse(t.as_ref()))
            .collect::<Result<_, _>>()?;
        Ok(Allowlist {
            templates,
            default: false,
        })
    }

    /// Whether the group `namespace/name` may use the ledger `key` in
    /// `place`; if not, one sentence that says which location was refused
    /// and what is allowed.
    pub fn allowed(
        &self,
        place: impl Into<Place>,
        key: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), String> {
        let place = place.into();
        let location = format!("{place}/{key}");
        if let Some(why) = unsafe_key(key) {
            return Err(format!(
                "ledger {location} is refused: its key {why}; use a plain key such as jobgate/{namespace}/{name}.json"
            ));
        }
        // A namespace or name with a slash could climb out of its prefix,
        // and one with a brace would be expanded again as a placeholder;
        // Kubernetes never issues either, so refuse rather than reason
        // about them.
        if [namespace, name]
            .iter()
            .any(|s| s.is_empty() || s.contains('/') || s.contains('{'))
        {
            return Err(format!(
                "ledger {location} is refused: the group's namespace or name ({namespace}/{name}) cannot be placed in a key prefix"
            ));
        }
        if self
            .templates
            .iter()
            .any(|t| t.admits(&place, key, namespace, name))
        {
            return Ok(());
        }
        // The templates of this store, if any; otherwise every one.
        let same: Vec<&Template> = self
            .templates
            .iter()
            .filter(|t| t.scheme == place.scheme)
            .collect();
        let shown = if same.is_empty() {
            self.templates.iter().collect()
        } else {
            same
        };
        let allowed: Vec<String> = shown
            .iter()
            .map(|t| {
                let names: Vec<&str> = t
                    .names
                    .iter()
                    .map(|n| n.as_deref().unwrap_or("*"))
                    .collect();
                format!(
                    "{}{}/{}",
                    t.scheme.prefix(),
                    names.join("/"),
                    t.expand(namespace, name)
                )
            })
            .collect();
        let source = if self.default {
            " (the default; the cluster admin can allow more with --allowed-ledger, chart value allowedLedgers)"
        } else {
            " (the controller's --allowed-ledger list)"
        };
        Err(format!(
            "ledger {location} is not allowed for group {namespace}/{name}: this group may use only {}{source}; change spec.ledger to a location there, or ask the cluster admin to allow this one",
            allowed.join(", ")
        ))
    }

    /// The templates, for the startup log.
    pub fn describe(&self) -> String {
        let list: Vec<&str> = self.templates.iter().map(|t| t.raw.as_str()).collect();
        list.join(", ")
    }
}

/// Why a key could address something other than what the prefix check
/// saw, if it could: stores and proxies may resolve `.` and `..` segments,
/// collapse `//`, or treat `\` as a separator.
fn unsafe_key(key: &str) -> Option<&'static str> {
    if key.is_empty() {
        return Some("is empty");
    }
    if key.starts_with('/') {
        return Some("starts with /");
    }
    if key.chars().any(|c| c == '\\' || c.is_control()) {
        return Some("holds a backslash or a control character");
    }
    let segments: Vec<&str> = key.split('/').collect();
    if segments.iter().any(|s| *s == "." || *s == "..") {
        return Some("has a . or .. segment");
    }
    if segments.iter().any(|s| s.is_empty()) {
        return Some("has an empty segment (// or a trailing /)");
    }
    None
}

/// Whether `n` can be the `index`th name of a place in `scheme`, by each
/// store's naming rules.
fn valid_name(scheme: Scheme, index: usize, n: &str) -> bool {
    let plain = |extra: &[u8], len: std::ops::RangeInclusive<usize>| {
        len.contains(&n.len())
            && n.bytes()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || extra.contains(&c))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric())
            && n.ends_with(|c: char| c.is_ascii_alphanumeric())
    };
    match (scheme, index) {
        (Scheme::S3, _) => plain(b".-", 3..=63),
        (Scheme::Gcs, _) => plain(b".-_", 3..=63),
        (Scheme::Azure, 0) => plain(b"", 3..=24),
        (Scheme::Azure, _) => plain(b"-", 3..=63),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn list(templates: &[&str]) -> Allowlist {
        Allowlist::parse(templates).unwrap()
    }

    fn parse_error(template: &str) -> String {
        Template::parse(template).unwrap_err().to_string()
    }

    #[test]
    fn the_default_allows_keys_under_the_groups_own_namespace_in_any_bucket() {
        let a = Allowlist::default();
        assert_eq!(a, list(&[]));
        assert_eq!(a, list(&DEFAULT_TEMPLATES).with_default_flag());
        // The default key of `ledger_key()`.
        assert_eq!(
            a.allowed("b", "jobgate/team-a/etl.json", "team-a", "etl"),
            Ok(())
        );
        assert_eq!(
            a.allowed("other", "jobgate/team-a/x/y.json", "team-a", "etl"),
            Ok(())
        );
        let refused = a
            .allowed("b", "jobgate/team-b/etl.json", "team-a", "etl")
            .unwrap_err();
        assert!(
            refused.contains("s3://b/jobgate/team-b/etl.json"),
            "{refused}"
        );
        assert!(refused.contains("s3://*/jobgate/team-a/"), "{refused}");
        assert!(refused.contains("--allowed-ledger"), "{refused}");
        assert!(a.allowed("b", "groups/etl.json", "team-a", "etl").is_err());
    }

    #[test]
    fn prefixes_match_whole_segments_only() {
        let a = Allowlist::default();
        assert!(a.allowed("b", "jobgate/ab/x.json", "a", "g").is_err());
        assert!(a.allowed("b", "jobgate/a", "a", "g").is_err());
        assert!(
            a.allowed("b", "jobgate/a/", "a", "g").is_err(),
            "the prefix itself"
        );
        assert!(a.allowed("b", "jobgate/a/x.json", "a", "g").is_ok());
        let shared = list(&["s3://shared-bucket/shared/"]);
        assert!(
            shared
                .allowed("shared-bucket", "shared/x.json", "a", "g")
                .is_ok()
        );
        assert!(
            shared
                .allowed("shared-bucket", "sharedx/x.json", "a", "g")
                .is_err()
        );
        assert!(shared.allowed("shared-bucket", "shared", "a", "g").is_err());
        assert!(
            shared
                .allowed("other-bucket", "shared/x.json", "a", "g")
                .is_err()
        );
    }

    #[test]
    fn climbing_out_of_a_prefix_is_refused() {
        let a = Allowlist::default();
        for key in [
            "jobgate/a/../b/x.json",
            "jobgate/a/./x.json",
            "jobgate/a//x.json",
            "/jobgate/a/x.json",
            "jobgate/a/x\\..\\..\\b.json",
            "jobgate/a/x.json/",
            "jobgate/a/..",
            "",
        ] {
            let why = a.allowed("b", key, "a", "g").unwrap_err();
            assert!(why.contains("is refused"), "{key}: {why}");
        }
        // A namespace can never hold a slash; if one did, it is refused.
        assert!(a.allowed("b", "jobgate/a/b/x.json", "a/b", "g").is_err());
        assert!(a.allowed("b", "jobgate//x.json", "", "g").is_err());
    }

    #[test]
    fn flags_replace_the_default_and_any_one_may_match() {
        let a = list(&[
            "s3://jobgate-ledgers/jobgate/{namespace}/",
            "s3://shared-bucket/shared/",
        ]);
        assert!(
            a.allowed("jobgate-ledgers", "jobgate/ns/g.json", "ns", "g")
                .is_ok()
        );
        assert!(
            a.allowed("shared-bucket", "shared/x.json", "ns", "g")
                .is_ok()
        );
        assert!(
            a.allowed("shared-bucket", "shared/x.json", "other", "h")
                .is_ok()
        );
        // The default's any-bucket no longer applies.
        let why = a
            .allowed("elsewhere", "jobgate/ns/g.json", "ns", "g")
            .unwrap_err();
        assert!(why.contains("s3://jobgate-ledgers/jobgate/ns/"), "{why}");
        assert!(why.contains("s3://shared-bucket/shared/"), "{why}");
        assert!(
            why.contains("the controller's --allowed-ledger list"),
            "{why}"
        );
    }

    #[test]
    fn a_template_without_a_trailing_slash_is_one_key() {
        let a = list(&["s3://bkt/jobgate/{namespace}/{name}.json"]);
        assert!(a.allowed("bkt", "jobgate/ns/etl.json", "ns", "etl").is_ok());
        assert!(
            a.allowed("bkt", "jobgate/ns/other.json", "ns", "etl")
                .is_err()
        );
        assert!(
            a.allowed("bkt", "jobgate/ns/etl.json.bak", "ns", "etl")
                .is_err()
        );
        let per_group = list(&["s3://bkt/t/{namespace}/{name}/"]);
        assert!(
            per_group
                .allowed("bkt", "t/ns/etl/l.json", "ns", "etl")
                .is_ok()
        );
        assert!(
            per_group
                .allowed("bkt", "t/ns/etl2/l.json", "ns", "etl")
                .is_err()
        );
        let whole = list(&["s3://bkt/"]);
        assert!(
            whole
                .allowed("bkt", "anything/at/all.json", "ns", "g")
                .is_ok()
        );
        assert!(whole.allowed("other", "anything.json", "ns", "g").is_err());
    }

    #[test]
    fn bad_templates_get_one_sentence_each() {
        for (template, says) in [
            (
                "jobgate-ledgers/jobgate/",
                "must start with s3://, gs:// or az://",
            ),
            ("gs://Bad/x/", "a GCS bucket name"),
            ("az://acct/box", "the whole container"),
            ("az://Acct_1/box/x/", "storage account name"),
            ("az://acct/B/x/", "container name"),
            ("s3://jobgate-ledgers", "end it with /"),
            ("s3://Bad_Bucket/x/", "the bucket must be"),
            ("s3://b/x/", "the bucket must be"),
            ("s3://bucket//x/", "starts with /"),
            ("s3://bucket/x//y/", "empty segment"),
            ("s3://bucket/x/../y/", ". or .."),
            (
                "s3://bucket/{namespace}-{name}/",
                "more than one placeholder",
            ),
            ("s3://bucket/{tenant}/", "other than {namespace} and {name}"),
            ("s3://bucket/{namespace/", "unmatched brace"),
            ("s3://bucket/a\\b/", "backslash"),
        ] {
            let msg = parse_error(template);
            assert!(msg.contains(says), "{template}: {msg}");
            assert!(msg.starts_with("--allowed-ledger"), "{msg}");
            assert!(!msg.contains('\n'), "{msg}");
        }
        let err = Allowlist::parse(&["s3://ok-bucket/x/", "nope"]).unwrap_err();
        assert_eq!(err.template, "nope");
    }

    #[test]
    fn placeholders_in_a_segment_with_text_are_allowed_once() {
        let a = list(&["s3://bkt/tenants/ns-{namespace}/"]);
        assert!(a.allowed("bkt", "tenants/ns-a/g.json", "a", "g").is_ok());
        assert!(a.allowed("bkt", "tenants/ns-ab/g.json", "a", "g").is_err());
    }

    #[test]
    fn each_template_allows_only_its_own_store() {
        let gcs = |b: &str| Place {
            scheme: Scheme::Gcs,
            names: vec![b.into()],
        };
        let az = |a: &str, c: &str| Place {
            scheme: Scheme::Azure,
            names: vec![a.into(), c.into()],
        };
        let a = list(&["gs://ledgers_1/jobgate/{namespace}/", "az://acct/*/t/"]);
        assert!(
            a.allowed(gcs("ledgers_1"), "jobgate/ns/g.json", "ns", "g")
                .is_ok()
        );
        assert!(
            a.allowed(gcs("other"), "jobgate/ns/g.json", "ns", "g")
                .is_err()
        );
        // The same bucket name in S3 is another bucket.
        assert!(
            a.allowed("ledgers_1", "jobgate/ns/g.json", "ns", "g")
                .is_err()
        );
        assert!(a.allowed(az("acct", "box"), "t/x.json", "ns", "g").is_ok());
        assert!(
            a.allowed(az("other", "box"), "t/x.json", "ns", "g")
                .is_err()
        );
        let why = a
            .allowed(az("other", "box"), "t/x.json", "ns", "g")
            .unwrap_err();
        assert!(
            why.contains("ledger az://other/box/t/x.json is not allowed"),
            "{why}"
        );
        assert!(why.contains("only az://acct/*/t/"), "{why}");
    }

    #[test]
    fn the_default_allows_every_store() {
        let a = Allowlist::default();
        let gcs = Place {
            scheme: Scheme::Gcs,
            names: vec!["b".into()],
        };
        let az = Place {
            scheme: Scheme::Azure,
            names: vec!["acct".into(), "box".into()],
        };
        assert!(
            a.allowed(gcs.clone(), "jobgate/ns/g.json", "ns", "g")
                .is_ok()
        );
        assert!(
            a.allowed(az.clone(), "jobgate/ns/g.json", "ns", "g")
                .is_ok()
        );
        assert!(a.allowed(gcs, "jobgate/other/g.json", "ns", "g").is_err());
        assert!(a.allowed(az, "elsewhere/g.json", "ns", "g").is_err());
    }

    impl Allowlist {
        fn with_default_flag(mut self) -> Self {
            self.default = true;
            self
        }
    }
}
