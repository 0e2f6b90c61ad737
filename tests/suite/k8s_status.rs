//! `jobgate status GROUP` against a real kube-apiserver and SeaweedFS, with
//! the controller running: the ledger next to the cluster's view (the
//! group's status, its Jobs and their holders), the discrepancies it
//! flags, and the one-sentence error for a group that is not there.

use std::process::{Command, Output};
use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    AdmissionLog, Bed, ControllerProcess, apply_credentials, eventually, observe,
};

const NS: &str = "batch";

/// `jobgate status` with `args`, with no AWS credentials in the
/// environment: those of the group's Secret must be used.
fn status(cp: &ControlPlane, args: &[&str]) -> Output {
    let kubeconfig = format!("--kubeconfig={}", cp.kubeconfig.display());
    let mut cmd = Command::new(jobgate_testkit::jobgate_bin());
    cmd.arg("status").arg(&kubeconfig).args(args);
    for var in [
        "AWS_ACCESS_KEY_ID",
        "AWS_SECRET_ACCESS_KEY",
        "AWS_SESSION_TOKEN",
        "AWS_PROFILE",
        "AWS_ENDPOINT_URL",
        "JOBGATE_LEDGER",
        "KUBECONFIG",
    ] {
        cmd.env_remove(var);
    }
    cmd.env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/nonexistent")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent");
    cmd.output().unwrap()
}

fn text(out: &Output) -> (String, String) {
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// The line that starts with `start`, its words joined by single spaces.
fn line(text: &str, start: &str) -> String {
    text.lines()
        .find(|l| l.starts_with(start))
        .unwrap_or_else(|| panic!("no line starting {start:?} in:\n{text}"))
        .split_whitespace()
        .collect::<Vec<_>>()
        .join(" ")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_shows_the_ledger_beside_the_clusters_jobs_and_flags_what_disagrees() {
    let started = Instant::now();
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    let (s3, cp, kube) = (&bed.s3, &bed.cp, &bed.kube);
    apply_credentials(cp, ns, "s3-creds", s3);
    bed.group_in(cp, "etl", ns, 2, None, Some("s3-creds"));
    let names: Vec<String> = (0..3).map(|i| format!("job-{i:02}")).collect();
    bed.jobs(ns, "etl", &names).await;
    // Nothing completes: two Jobs run, the third waits.
    let checker = AdmissionLog::default();
    observe(kube.clone(), "one", ns, checker.clone(), None);
    let mut controller = ControllerProcess::start(cp, s3, "one", ns, false);
    eventually(Duration::from_secs(60), "two admissions", || async {
        (checker.snapshot(|s| s.order.len()) == 2).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "the group's status", || async {
        let out = cp.kubectl(&["get", "cg", "etl", "-n", ns, "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let cols: Vec<&str> = text.split_whitespace().collect();
        (cols.get(1..6) == Some(&["2", "2", "2", "1", "True"][..])).then_some(())
    })
    .await;
    eprintln!("bed up, two admitted: {:?}", started.elapsed());

    let t = Instant::now();
    let out = status(cp, &["-n", ns, "etl"]);
    let took = t.elapsed();
    let (stdout, stderr) = text(&out);
    eprintln!("jobgate status took {took:?}:\n{stdout}{stderr}");
    assert!(out.status.success(), "{stdout}{stderr}");
    let bucket = &bed.bucket;
    assert_eq!(
        line(&stdout, "ledger"),
        format!("ledger s3://{bucket}/jobgate/{ns}/etl.json")
    );
    // The ledger's side, then the cluster's.
    assert_eq!(line(&stdout, "limit   "), "limit 2");
    assert_eq!(line(&stdout, "in use  "), "in use 2");
    assert_eq!(line(&stdout, "group"), format!("group {ns}/etl"));
    assert_eq!(
        line(&stdout, "agent "),
        format!("agent one/{ns}/etl (from the holders of this namespace's Jobs)")
    );
    assert_eq!(line(&stdout, "limit     "), "limit 2");
    assert_eq!(line(&stdout, "in use    "), "in use 2 in all clusters");
    assert_eq!(line(&stdout, "here"), "here 2 admitted, 1 waiting");
    assert!(line(&stdout, "Ready").starts_with("Ready True LedgerReachable"));
    let api: Api<Job> = Api::namespaced(kube.clone(), ns);
    for job in names.iter().take(2) {
        let l = line(&stdout, job);
        let token = api.get(job).await.unwrap().annotations()["jobgate.dev/fencing-token"].clone();
        assert_eq!(
            l,
            format!("{job} admitted {token} yes (token {token})"),
            "{stdout}"
        );
    }
    assert_eq!(line(&stdout, "job-02"), "job-02 waiting - no");
    assert!(
        stdout.contains("no discrepancies between this cluster and the ledger"),
        "{stdout}"
    );

    // The same as one JSON object.
    let out = status(cp, &["-n", ns, "etl", "-o", "json"]);
    let (stdout, stderr) = text(&out);
    assert!(out.status.success(), "{stdout}{stderr}");
    let doc: serde_json::Value = serde_json::from_str(&stdout).unwrap();
    assert_eq!(doc["ledger"]["limit"], 2, "{doc}");
    assert_eq!(doc["ledger"]["holders"].as_object().unwrap().len(), 2);
    let jobs = doc["cluster"]["jobs"].as_array().unwrap();
    let states: Vec<&str> = jobs.iter().map(|j| j["state"].as_str().unwrap()).collect();
    assert_eq!(states, ["admitted", "admitted", "waiting"], "{doc}");
    assert_eq!(jobs[0]["holder"]["agent"], format!("one/{ns}/etl"), "{doc}");
    assert_eq!(doc["cluster"]["status"]["inUse"], 2, "{doc}");
    assert_eq!(doc["cluster"]["discrepancies"], serde_json::json!([]));

    // With the controller gone, an admitted Job deleted: its slot stays
    // held by this cluster's agent without a Job.
    controller.kill9();
    let first = api.get("job-00").await.unwrap();
    let gone = first.uid().unwrap();
    let token = first.annotations()["jobgate.dev/fencing-token"].clone();
    // Background: the default for Jobs (orphan) waits for a garbage
    // collector this control plane does not run.
    api.delete("job-00", &DeleteParams::background())
        .await
        .unwrap();
    eventually(Duration::from_secs(20), "job-00 deleted", || async {
        api.get_opt("job-00").await.ok()?.is_none().then_some(())
    })
    .await;
    let out = status(cp, &["-n", ns, "etl", "--cluster-name", "one"]);
    let (stdout, stderr) = text(&out);
    eprintln!("after deleting job-00 without a controller:\n{stdout}{stderr}");
    assert!(out.status.success(), "{stdout}{stderr}");
    assert_eq!(
        line(&stdout, "agent "),
        format!("agent one/{ns}/etl (from --cluster-name)")
    );
    let flagged = line(&stdout, "- holder");
    assert!(
        flagged.starts_with(&format!(
            "- holder {gone} of this cluster's agent one/{ns}/etl (token {token}) is no Job of the group in namespace {ns}"
        )),
        "{stdout}"
    );

    // A group that is not there: one sentence, and what to run instead.
    let out = status(cp, &["-n", ns, "nope"]);
    let (stdout, stderr) = text(&out);
    assert_eq!(out.status.code(), Some(125), "{stdout}{stderr}");
    assert_eq!(
        stderr,
        format!(
            "jobgate: error: ConcurrencyGroup nope not found in namespace {ns}; list the groups there with `kubectl get cg -n {ns}`\n"
        )
    );
    assert!(stdout.is_empty(), "{stdout}");
    eprintln!("whole test: {:?}", started.elapsed());
}
