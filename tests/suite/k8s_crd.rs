//! The ConcurrencyGroup CRD against a real kube-apiserver: it installs, its
//! printer columns show, and the API server rejects invalid groups.

use std::time::Duration;

fn group(name: &str, spec: &str) -> String {
    format!(
        "apiVersion: jobgate.dev/v1alpha1\nkind: ConcurrencyGroup\nmetadata:\n  name: {name}\nspec:\n{spec}"
    )
}

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn crd_installs_and_the_api_server_validates_groups() {
    // The binary's shared control plane: this test alone uses its default
    // namespace for groups.
    let cp = jobgate_testkit::shared::control_plane();
    let crds = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
    let out = cp.kubectl(&["apply", "-f", crds]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cp.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/concurrencygroups.jobgate.dev",
    ]);
    assert!(out.status.success(), "{}", text(&out));

    let ok = group("nightly", "  limit: 3\n  ledger:\n    bucket: my-bucket\n");
    let mut applied = cp.kubectl_stdin(&["apply", "-f", "-"], &ok);
    for _ in 0..20 {
        if applied.status.success() {
            break;
        }
        // Discovery of a just-established CRD can lag a moment.
        std::thread::sleep(Duration::from_millis(500));
        applied = cp.kubectl_stdin(&["apply", "-f", "-"], &ok);
    }
    assert!(applied.status.success(), "{}", text(&applied));

    let out = cp.kubectl(&["get", "cg"]);
    let table = text(&out);
    assert!(out.status.success(), "{table}");
    let header = table.lines().next().unwrap_or_default();
    for column in [
        "NAME",
        "LIMIT",
        "IN-USE",
        "HERE",
        "WAITING",
        "READY",
        "SUSPENDED",
        "READ",
        "AGE",
    ] {
        assert!(header.contains(column), "missing column {column}: {table}");
    }
    // LIMIT is the limit in force, which only a controller knows; the
    // spec's is in -o wide.
    assert!(table.contains("nightly"), "{table}");
    let wide = text(&cp.kubectl(&["get", "cg", "-o", "wide"]));
    assert!(
        wide.contains("SPEC-LIMIT") && wide.contains("BUCKET") && wide.contains("my-bucket"),
        "{wide}"
    );
    // Empty columns leave blanks: read SPEC-LIMIT at its header's offset.
    let at = wide.lines().next().and_then(|h| h.find("SPEC-LIMIT"));
    let spec_limit = at.and_then(|at| {
        let row = wide.lines().nth(1)?;
        row.get(at..)?.split_whitespace().next()
    });
    assert_eq!(spec_limit, Some("3"), "{wide}");

    let out = cp.kubectl(&[
        "get",
        "concurrencygroup",
        "nightly",
        "-o",
        "jsonpath={.spec.leaseSeconds}/{.spec.onLeaseLoss}",
    ]);
    assert_eq!(
        text(&out),
        "60/Suspend",
        "defaults are applied by the API server"
    );

    for (name, spec, expect) in [
        (
            "zero",
            "  limit: 0\n  ledger:\n    bucket: my-bucket\n",
            "spec.limit",
        ),
        ("nobucket", "  limit: 2\n  ledger: {}\n", "bucket"),
        ("noledger", "  limit: 2\n", "ledger"),
        (
            "badendpoint",
            "  limit: 2\n  ledger:\n    bucket: my-bucket\n    endpoint: s3.example.com\n",
            "endpoint must be an http",
        ),
        (
            "shortlease",
            "  limit: 2\n  leaseSeconds: 1\n  ledger:\n    bucket: my-bucket\n",
            "leaseSeconds",
        ),
        // Valid alone, but the default 30 s grace leaves no time to renew
        // in a 40 s lease: refused at once rather than not Ready later.
        (
            "nogap",
            "  limit: 2\n  leaseSeconds: 40\n  ledger:\n    bucket: my-bucket\n",
            "spec.leaseSeconds is too short for spec.maxGracePeriodSeconds",
        ),
        (
            "dotdot",
            "  limit: 2\n  ledger:\n    bucket: my-bucket\n    key: jobgate/a/../b.json\n",
            "key must not have a '..' segment",
        ),
    ] {
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &group(name, spec));
        let msg = text(&out);
        assert!(!out.status.success(), "{name} was accepted: {msg}");
        assert!(
            msg.contains(expect),
            "{name}: expected {expect:?} in: {msg}"
        );
    }

    // The smallest lease for the default grace passes (its twin above
    // does not).
    let fits = group(
        "fits",
        "  limit: 2\n  leaseSeconds: 44\n  ledger:\n    bucket: my-bucket\n    key: jobgate/a/..b.json\n",
    );
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], &fits);
    assert!(out.status.success(), "{}", text(&out));

    // `kubectl explain` reads the descriptions from the API server.
    let explain = text(&cp.kubectl(&["explain", "cg.spec.leaseSeconds"]));
    assert!(
        explain.contains("in seconds") && explain.contains("default 60"),
        "{explain}"
    );
    let tree = text(&cp.kubectl(&["explain", "cg", "--recursive"]));
    for field in [
        "forcePathStyle",
        "credentialsSecretRef",
        "lastTransitionTime",
        "ledgerReadTime",
    ] {
        assert!(tree.contains(field), "{field} not in:\n{tree}");
    }
    assert!(!tree.contains("Auto-generated"), "{tree}");

    // Bucket and key are fixed once the group exists; the endpoint is not.
    for (patch, expect) in [
        (
            r#"{"spec":{"ledger":{"bucket":"other-bucket"}}}"#,
            Some("bucket and key cannot change"),
        ),
        (
            r#"{"spec":{"ledger":{"key":"jobgate/elsewhere.json"}}}"#,
            Some("bucket and key cannot change"),
        ),
        (
            r#"{"spec":{"ledger":{"endpoint":"https://s3.eu-west-1.amazonaws.com"}}}"#,
            None,
        ),
        (r#"{"spec":{"limit":5}}"#, None),
    ] {
        let out = cp.kubectl(&["patch", "cg", "nightly", "--type=merge", "-p", patch]);
        let msg = text(&out);
        match expect {
            Some(expect) => {
                assert!(!out.status.success(), "{patch} was accepted: {msg}");
                assert!(msg.contains(expect), "{patch}: {msg}");
            }
            None => assert!(out.status.success(), "{patch}: {msg}"),
        }
    }
}
