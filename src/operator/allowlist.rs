//! Which ledger locations a ConcurrencyGroup may use: the cluster admin's
//! allowlist (`--allowed-ledger`), checked before the controller reads the
//! group's credentials or touches S3, so that a tenant who may create
//! groups in one namespace cannot make the controller read, create or
//! rewrite ledgers that belong to another namespace (pure, unit-tested).
//!
//! A template is `s3://BUCKET/PREFIX`: `BUCKET` is a bucket name or `*`
//! (any bucket); `PREFIX` may hold `{namespace}` and `{name}` (the group's
//! namespace and name), each at most once per path segment. A `PREFIX`
//! that ends in `/` allows every key below it; otherwise it allows that one
//! key. Without any `--allowed-ledger` the default is
//! [`DEFAULT_TEMPLATE`], which keeps the default key
//! (`jobgate/<namespace>/<name>.json`) allowed. The S3 endpoint is not part
//! of a location.

use std::fmt;

/// The allowlist when the admin gives none: any bucket, keys under the
/// group's own namespace.
pub const DEFAULT_TEMPLATE: &str = "s3://*/jobgate/{namespace}/";

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
    /// `None`: any bucket.
    bucket: Option<String>,
    /// The key part, with placeholders; empty for a whole bucket.
    path: String,
}

impl Template {
    pub fn parse(raw: &str) -> Result<Template, TemplateError> {
        let fail = |why: &str| TemplateError {
            template: raw.to_string(),
            why: why.to_string(),
        };
        let rest = raw.strip_prefix("s3://").ok_or_else(|| {
            fail("it must start with s3://, as in s3://my-bucket/jobgate/{namespace}/")
        })?;
        let Some((bucket, path)) = rest.split_once('/') else {
            return Err(fail(
                "it names no key prefix; end it with / to allow the whole bucket (s3://BUCKET/) or give one (s3://BUCKET/jobgate/{namespace}/)",
            ));
        };
        let bucket = match bucket {
            "*" => None,
            b if valid_bucket(b) => Some(b.to_string()),
            _ => {
                return Err(fail(
                    "the bucket must be * (any bucket) or an S3 bucket name (3 to 63 lowercase letters, digits, dots and hyphens)",
                ));
            }
        };
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
            bucket,
            path: path.to_string(),
        })
    }

    /// The key (or, ending in `/`, the prefix) for one group.
    fn expand(&self, namespace: &str, name: &str) -> String {
        self.path.replace(NAMESPACE, namespace).replace(NAME, name)
    }

    fn admits(&self, bucket: &str, key: &str, namespace: &str, name: &str) -> bool {
        if self.bucket.as_deref().is_some_and(|b| b != bucket) {
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
            templates: vec![Template {
                raw: DEFAULT_TEMPLATE.to_string(),
                bucket: None,
                path: "jobgate/{namespace}/".to_string(),
            }],
            default: true,
        }
    }
}

impl Allowlist {
    /// The admin's templates; none at all means [`DEFAULT_TEMPLATE`].
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

    /// Whether the group `namespace/name` may use `s3://bucket/key`; if not,
    /// one sentence that says which location was refused and what is
    /// allowed.
    pub fn allowed(
        &self,
        bucket: &str,
        key: &str,
        namespace: &str,
        name: &str,
    ) -> Result<(), String> {
        let location = format!("s3://{bucket}/{key}");
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
            .any(|t| t.admits(bucket, key, namespace, name))
        {
            return Ok(());
        }
        let allowed: Vec<String> = self
            .templates
            .iter()
            .map(|t| {
                format!(
                    "s3://{}/{}",
                    t.bucket.as_deref().unwrap_or("*"),
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

fn valid_bucket(b: &str) -> bool {
    (3..=63).contains(&b.len())
        && b.bytes()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == b'.' || c == b'-')
        && b.starts_with(|c: char| c.is_ascii_alphanumeric())
        && b.ends_with(|c: char| c.is_ascii_alphanumeric())
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
        assert_eq!(a, list(&[DEFAULT_TEMPLATE]).with_default_flag());
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
            ("jobgate-ledgers/jobgate/", "must start with s3://"),
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

    impl Allowlist {
        fn with_default_flag(mut self) -> Self {
            self.default = true;
            self
        }
    }
}
