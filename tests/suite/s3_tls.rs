//! An S3-compatible store whose certificate is signed by a private CA:
//! SeaweedFS over HTTPS with a CA of the test's own. `AWS_CA_BUNDLE` makes
//! jobgate trust it (the CLI and the controller, which the chart's
//! `s3.caBundle` sets it for); without it the failure names the fix.

use std::process::{Command, Output, Stdio};
use std::time::Duration;

use jobgate_testkit::SeaweedFs;
use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    Bed, ControllerProcess, GroupSpec, apply_group_with, create_held_job, eventually,
};
use jobgate_testkit::pods::PodLog;

fn jobgate(s3: &SeaweedFs, args: &[&str], ca_bundle: Option<&str>) -> Output {
    let mut cmd = Command::new(jobgate_testkit::jobgate_bin());
    cmd.args(args)
        .envs(s3.env())
        .env_remove("AWS_CA_BUNDLE")
        .stdin(Stdio::null());
    if let Some(path) = ca_bundle {
        cmd.env("AWS_CA_BUNDLE", path);
    }
    cmd.output().unwrap()
}

/// A group of limit 1 whose ledger is in the HTTPS store's bucket "private".
fn private_group(cp: &ControlPlane, ns: &str, name: &str, s3: &SeaweedFs) {
    apply_group_with(
        cp,
        &GroupSpec {
            name,
            ns,
            limit: 1,
            bucket: "private",
            endpoint: &s3.endpoint,
            key: None,
            secret: None,
        },
        serde_json::json!({}),
    );
}

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).trim().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_private_ca_is_trusted_through_aws_ca_bundle_and_named_when_it_is_not() {
    let s3 = SeaweedFs::start_tls()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    assert!(s3.endpoint.starts_with("https://"), "{}", s3.endpoint);
    s3.create_bucket("private").await.unwrap();
    let ca = s3.ca_file();
    let ca = ca.to_str().unwrap();
    let ledger = "s3://private/jobgate/tls.json";
    let run = ["run", "--ledger", ledger, "--limit", "1", "--", "true"];

    let out = jobgate(&s3, &run, Some(ca));
    assert!(out.status.success(), "{}", stderr(&out));
    let status = jobgate(&s3, &["status", "--ledger", ledger], Some(ca));
    assert!(status.status.success(), "{}", stderr(&status));

    // Without the bundle: one line, naming the cause and the fix.
    let out = jobgate(&s3, &run, None);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(
        err.contains("TLS handshake with https://127.0.0.1")
            && err.contains("set AWS_CA_BUNDLE to a PEM file"),
        "{err}"
    );

    // A bundle that cannot be used is refused before anything is sent.
    for (path, why) in [
        ("/nonexistent/ca.pem", "cannot read it"),
        ("/etc/hostname", "no certificate in it"),
    ] {
        let out = jobgate(&s3, &run, Some(path));
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(125), "{err}");
        assert_eq!(err.lines().count(), 1, "{err}");
        assert!(
            err.contains(&format!("AWS_CA_BUNDLE={path}: {why}")),
            "{err}"
        );
    }
}

/// The controller with the bundle admits through the HTTPS store; without
/// it the group is not Ready and says how to fix it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_controller_admits_through_a_store_with_a_private_ca() {
    let s3 = SeaweedFs::start_tls()
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let bed = Bed::shared_held("tls").await;
    let ns = bed.ns.as_str();
    s3.create_bucket("private").await.unwrap();
    private_group(&bed.cp, ns, "trusted", &s3);
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "tls", ns);
    create_held_job(&bed.kube, ns, "a", "trusted", 0, None).await;
    create_held_job(&bed.kube, ns, "b", "trusted", 0, None).await;
    let ca = s3.ca_file();
    let _ctl = ControllerProcess::start_via(
        &bed.cp,
        &s3,
        &bed.cp.kubeconfig,
        ("tls", ns),
        &["--leader-elect=false"],
        "",
        &[("AWS_CA_BUNDLE", ca.to_str().unwrap())],
    );
    eventually(Duration::from_secs(60), "one Job running", || async {
        (pods.running() == 1).then_some(())
    })
    .await;
    let ready = |group: &str| {
        bed.cp.kubectl_ok(&[
            "get",
            "cg",
            group,
            "-n",
            ns,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ])
    };
    assert_eq!(ready("trusted").trim(), "True");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(pods.max(), 1, "{}", pods.summary(1));
    drop(_ctl);

    // Another cluster's controller, without the bundle.
    let plain = jobgate_testkit::shared::control_plane();
    let other = format!("{ns}-plain");
    plain.kubectl_ok(&["create", "namespace", &other]);
    private_group(plain, &other, "untrusted", &s3);
    let _plain_ctl = ControllerProcess::start(plain, &s3, "plain", &other, true);
    let message = eventually(Duration::from_secs(60), "Ready False", || async {
        let out = plain.kubectl_ok(&[
            "get",
            "cg",
            "untrusted",
            "-n",
            &other,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].message}",
        ]);
        (!out.trim().is_empty()).then_some(out)
    })
    .await;
    assert!(
        message.contains("TLS handshake") && message.contains("AWS_CA_BUNDLE"),
        "{message}"
    );
}
