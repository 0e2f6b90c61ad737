//! `jobgate doctor` on each store's emulator, through the CLI as a user runs
//! it: GCS (fake-gcs-server) and Azure (Azurite) pass every probe; behind a
//! proxy that drops the preconditions of writes (what GCS's S3-compatible
//! API does to `If-Match`), GCS and an S3 (moto) fail the probes that
//! matter and the verdict is NOT SAFE.

use std::process::{Command, Output, Stdio};

use jobgate_testkit::stores::{self, AZURITE_ACCOUNT, Azurite, FakeGcs, Moto};
use jobgate_testkit::stripper::Stripper;

fn jobgate(args: &[&str], env: &[(&str, String)]) -> Output {
    Command::new(jobgate_testkit::jobgate_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        // Never look for cloud credentials on a metadata endpoint.
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn doctor(ledger: &str, endpoint: &str, env: &[(&str, String)]) -> (Option<i32>, String) {
    let out = tokio::task::block_in_place(|| {
        jobgate(
            &["doctor", "--ledger", ledger, "--endpoint-url", endpoint],
            env,
        )
    });
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    (out.status.code(), text)
}

fn assert_safe((code, text): (Option<i32>, String)) {
    assert_eq!(code, Some(0), "{text}");
    assert!(!text.contains("FAIL"), "{text}");
    assert!(text.contains("verdict: OK"), "{text}");
}

/// What a store that ignores the preconditions must fail: every write
/// probe, and the verdict.
fn assert_refused((code, text): (Option<i32>, String)) {
    assert_eq!(code, Some(1), "{text}");
    for probe in [
        "FAIL  create-only write: a second create overwrote the object",
        "FAIL  write conditioned on a version the object does not have: accepted",
        "FAIL  write conditioned on a version of a missing object: accepted",
        "FAIL  concurrent create-only writes: 16 writers: 16 won",
        "FAIL  concurrent writes conditioned on one version: 16 writers: 16 won",
        "verdict: NOT SAFE",
    ] {
        assert!(text.contains(probe), "missing {probe:?} in:\n{text}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_gcs_and_refuses_it_without_preconditions() {
    let server = stores::start(FakeGcs::start).await;
    let bucket = stores::name();
    server.create_bucket(&bucket).await.unwrap();
    let ledger = format!("gs://{bucket}/jobgate/doctor.json");
    assert_safe(doctor(&ledger, &server.0.endpoint, &[]));
    let proxy = Stripper::start(&server.0.endpoint).await;
    assert_refused(doctor(&ledger, &proxy.endpoint, &[]));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_passes_azure() {
    let server = stores::start(Azurite::start).await;
    let container = stores::name();
    server.create_container(&container).await.unwrap();
    let ledger = format!("az://{AZURITE_ACCOUNT}/{container}/jobgate/doctor.json");
    assert_safe(doctor(&ledger, &server.0.endpoint, &server.env()));
}

/// moto checks no signature, so the proxy can drop S3's conditional
/// headers and the request still goes through.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn doctor_refuses_an_s3_store_without_preconditions() {
    let server = stores::start(Moto::start).await;
    let bucket = stores::name();
    server.create_bucket(&bucket).await.unwrap();
    let proxy = Stripper::start(&server.0.endpoint).await;
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "moto".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "moto".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let ledger = format!("s3://{bucket}/jobgate/doctor.json");
    assert_refused(doctor(&ledger, &proxy.endpoint, &env));
}

/// What a GCS user gets wrong first: a bucket that does not exist is named
/// as such (fake-gcs-server's 404 says only "Not Found"), and a ledger not
/// created yet in a bucket whose name holds "bucket" reads as not created,
/// not as a missing bucket (GCS's message names the object's bucket).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gcs_tells_a_missing_bucket_from_a_missing_ledger() {
    let server = stores::start(FakeGcs::start).await;
    let bucket = format!("{}-bucket", stores::name());
    server.create_bucket(&bucket).await.unwrap();
    let endpoint = ["--endpoint-url", server.0.endpoint.as_str()];
    let run = |ledger: &str| {
        let mut args = vec!["run", "--ledger", ledger, "--limit", "1"];
        args.extend(endpoint);
        args.extend(["--", "true"]);
        tokio::task::block_in_place(|| jobgate(&args, &[]))
    };
    let out = run("gs://no-such-bucket-here/jobgate/x.json");
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(
        err.trim(),
        "jobgate: error: bucket or directory \"no-such-bucket-here\" does not exist"
    );
    let ledger = format!("gs://{bucket}/jobgate/x.json");
    let mut status = vec!["status", "--ledger", ledger.as_str()];
    status.extend(endpoint);
    let out = tokio::task::block_in_place(|| jobgate(&status, &[]));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("does not exist yet"), "{err}");
    let out = run(&ledger);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}
