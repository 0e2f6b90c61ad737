//! Tenant isolation end to end, on a real kube-apiserver with SeaweedFS: a
//! group may use only the ledger locations the controller allows (by
//! default keys under its own namespace's prefix), a group outside them
//! gets neither its ledger nor its credentials read, credentials Secrets
//! come only from the group's own namespace, and Secret values never show
//! up in the controller's log, in Events or in a group's status.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::api::Api;

use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    AdmissionLog, Bed, ControllerProcess, Sim, apply_secret, create_job, eventually, observe,
    read_ledger,
};
use jobgate_testkit::seaweedfs::{TENANT_ACCESS_KEY, TENANT_SECRET_KEY};

const TEAM_A: &str = "team-a";
const TEAM_B: &str = "team-b";

/// The `Ready` condition of a group: (status, reason, message).
fn ready(cp: &ControlPlane, ns: &str, name: &str) -> Option<(String, String, String)> {
    let out = cp.kubectl(&["get", "cg", name, "-n", ns, "-o", "json"]);
    let group: serde_json::Value = serde_json::from_slice(&out.stdout).ok()?;
    let conditions = group["status"]["conditions"].as_array()?;
    let c = conditions.iter().find(|c| c["type"] == "Ready")?;
    let field = |k: &str| c[k].as_str().unwrap_or_default().to_string();
    Some((field("status"), field("reason"), field("message")))
}

/// Waits for a group's `Ready` to have `status` and `reason`; returns the
/// message.
async fn ready_becomes(
    cp: &ControlPlane,
    controller: &ControllerProcess,
    ns: &str,
    name: &str,
    want: (&str, &str),
) -> String {
    let what = format!("group {ns}/{name} Ready={} {}", want.0, want.1);
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        let now = ready(cp, ns, name);
        if let Some((status, reason, message)) = &now
            && (status.as_str(), reason.as_str()) == want
        {
            return message.clone();
        }
        if tokio::time::Instant::now() > deadline {
            panic!(
                "timed out waiting for {what}; last: {now:?}\n{}",
                controller.log_text()
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A group on the bed's bucket whose credentials come from `secret`.
fn group(bed: &Bed, ns: &str, name: &str, key: Option<&str>, secret: &str) {
    bed.group_in(&bed.cp, name, ns, 1, key, Some(secret));
}

/// Every object key in the bucket.
async fn keys(bed: &Bed) -> BTreeSet<String> {
    let client = bed.s3.sdk_client(Duration::from_secs(10));
    let listed = client
        .list_objects_v2()
        .bucket(&bed.bucket)
        .send()
        .await
        .unwrap();
    listed
        .contents()
        .iter()
        .filter_map(|o| o.key().map(str::to_string))
        .collect()
}

fn suspended(job: &Job) -> bool {
    job.spec.as_ref().and_then(|s| s.suspend) == Some(true)
}

/// Cases 1, 3 and 4 under the default allowlist, then case 2 with
/// `--allowed-ledger` on the same control plane and bucket.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn groups_reach_only_allowed_ledgers_and_their_own_namespaces_secrets() {
    let started = std::time::Instant::now();
    let bed = Bed::start(TEAM_A, false).await;
    let (cp, kube) = (&bed.cp, &bed.kube);
    cp.kubectl_ok(&["create", "namespace", TEAM_B]);
    // Credentials only from Secrets: the controller has none of its own,
    // so nothing can fall back to them.
    apply_secret(cp, TEAM_A, "s3-creds", TENANT_ACCESS_KEY, TENANT_SECRET_KEY);
    apply_secret(
        cp,
        TEAM_B,
        "b-only-creds",
        TENANT_ACCESS_KEY,
        TENANT_SECRET_KEY,
    );
    // 1. Team a names team b's ledger, and a Secret that does not exist:
    // were the Secret read first, the reason would be CredentialsUnavailable.
    group(
        &bed,
        TEAM_A,
        "intruder",
        Some("jobgate/team-b/etl.json"),
        "missing",
    );
    // A group with the default key, jobgate/team-a/etl.json.
    group(&bed, TEAM_A, "etl", None, "s3-creds");
    // 3. Team a names a Secret that exists only in team b.
    group(&bed, TEAM_A, "borrower", None, "b-only-creds");
    // The same Secret works for a group of its own namespace.
    group(&bed, TEAM_B, "owner", None, "b-only-creds");
    for (ns, name, group) in [
        (TEAM_A, "sneaky", "intruder"),
        (TEAM_A, "etl-1", "etl"),
        (TEAM_A, "borrowed", "borrower"),
        (TEAM_B, "owned", "owner"),
    ] {
        create_job(kube, ns, name, group, true).await;
    }
    let checker = AdmissionLog::default();
    let sim = Sim::new((300, 600));
    observe(
        kube.clone(),
        TEAM_A,
        TEAM_A,
        checker.clone(),
        Some(sim.clone()),
    );
    observe(
        kube.clone(),
        TEAM_B,
        TEAM_B,
        checker.clone(),
        Some(sim.clone()),
    );
    // Every namespace (an empty --namespace), default allowlist.
    let mut controller = ControllerProcess::start_with(
        cp,
        &bed.s3,
        "one",
        "",
        false,
        &["--leader-elect=false"],
        "-default",
    );
    let t0 = std::time::Instant::now();

    let refused = ready_becomes(
        cp,
        &controller,
        TEAM_A,
        "intruder",
        ("False", "LedgerNotAllowed"),
    )
    .await;
    let bucket = &bed.bucket;
    assert!(
        refused.contains(&format!("s3://{bucket}/jobgate/team-b/etl.json"))
            && refused.contains("s3://*/jobgate/team-a/"),
        "the message names the refused location and what is allowed: {refused}"
    );
    ready_becomes(cp, &controller, TEAM_A, "etl", ("True", "LedgerReachable")).await;
    eventually(Duration::from_secs(30), "etl-1 admitted", || async {
        checker.snapshot(|s| {
            s.admissions
                .contains_key(&(TEAM_A.to_string(), "etl-1".to_string()))
                .then_some(())
        })
    })
    .await;
    let borrowed = ready_becomes(
        cp,
        &controller,
        TEAM_A,
        "borrower",
        ("False", "CredentialsUnavailable"),
    )
    .await;
    assert!(
        borrowed.contains("\"b-only-creds\" was not found in namespace team-a"),
        "{borrowed}"
    );
    ready_becomes(
        cp,
        &controller,
        TEAM_B,
        "owner",
        ("True", "LedgerReachable"),
    )
    .await;
    eventually(Duration::from_secs(30), "owned admitted", || async {
        checker.snapshot(|s| {
            s.admissions
                .contains_key(&(TEAM_B.to_string(), "owned".to_string()))
                .then_some(())
        })
    })
    .await;
    println!("case 1 and 3 verdicts after {:?}", t0.elapsed());
    // Several passes of the refused groups later (they retry every 5 s):
    // still nothing of theirs in the bucket, and their Jobs still wait.
    tokio::time::sleep(Duration::from_secs(6)).await;
    let jobs_a: Api<Job> = Api::namespaced(kube.clone(), TEAM_A);
    for name in ["sneaky", "borrowed"] {
        let job = jobs_a.get(name).await.unwrap();
        assert!(suspended(&job), "{name} must stay suspended");
    }
    let want: BTreeSet<String> = ["jobgate/team-a/etl.json", "jobgate/team-b/owner.json"]
        .into_iter()
        .map(String::from)
        .collect();
    assert_eq!(
        keys(&bed).await,
        want,
        "only the allowed groups' ledgers exist"
    );
    let events = cp.kubectl_ok(&[
        "get",
        "events",
        "-n",
        TEAM_A,
        "--field-selector",
        "involvedObject.kind=ConcurrencyGroup,involvedObject.name=intruder",
    ]);
    assert!(
        events.contains("LedgerNotAllowed") && events.contains("Warning"),
        "{events}"
    );
    let metrics = controller.metrics();
    assert!(
        metrics.contains(r#"jobgate_reconcile_errors_total{kind="ledger_not_allowed"}"#),
        "{metrics}"
    );

    // 4. No Secret value anywhere: the controller's log (jobgate at debug),
    // every Event, every group's status.
    let scanned = [
        ("the controller's log", controller.log_text()),
        (
            "Events",
            cp.kubectl_ok(&["get", "events", "-A", "-o", "yaml"]),
        ),
        (
            "ConcurrencyGroups",
            cp.kubectl_ok(&["get", "cg", "-A", "-o", "yaml"]),
        ),
    ];
    // What is scanned is what should be: the log at debug, the refused
    // groups' Events and conditions.
    assert!(scanned[0].1.contains("DEBUG"), "{}", scanned[0].1);
    assert!(
        scanned[1].1.contains("LedgerNotAllowed"),
        "{}",
        scanned[1].1
    );
    assert!(
        scanned[2].1.contains("CredentialsUnavailable"),
        "{}",
        scanned[2].1
    );
    for (what, text) in &scanned {
        for secret in [TENANT_ACCESS_KEY, TENANT_SECRET_KEY] {
            assert!(!text.contains(secret), "{what} shows a credential:\n{text}");
        }
    }
    println!(
        "scanned {} bytes of log, Events and status",
        scanned.iter().map(|(_, t)| t.len()).sum::<usize>()
    );

    // 2. The admin allows a shared prefix: two namespaces share one ledger
    // and its limit. The entry replaces the default, so the default key is
    // refused now.
    assert_eq!(controller.terminate(), Some(0), "{}", controller.log_text());
    // The limit is counted from here on: the Jobs of case 1 are done.
    eventually(Duration::from_secs(30), "no Job running", || async {
        checker.snapshot(|s| s.running.is_empty().then_some(()))
    })
    .await;
    checker.seen.lock().unwrap().max_running = 0;
    let shared_entry = format!("--allowed-ledger=s3://{bucket}/shared/");
    let controller = ControllerProcess::start_with(
        cp,
        &bed.s3,
        "one",
        "",
        false,
        &["--leader-elect=false", &shared_entry],
        "-shared",
    );
    let t2 = std::time::Instant::now();
    group(&bed, TEAM_A, "shared", Some("shared/x.json"), "s3-creds");
    group(
        &bed,
        TEAM_B,
        "shared",
        Some("shared/x.json"),
        "b-only-creds",
    );
    let shared_jobs = [
        (TEAM_A, "shared-a1"),
        (TEAM_A, "shared-a2"),
        (TEAM_B, "shared-b1"),
        (TEAM_B, "shared-b2"),
    ];
    for (ns, name) in shared_jobs {
        create_job(kube, ns, name, "shared", true).await;
    }
    for ns in [TEAM_A, TEAM_B] {
        ready_becomes(cp, &controller, ns, "shared", ("True", "LedgerReachable")).await;
    }
    // Whose slots the shared ledger holds, sampled while the Jobs run.
    let holders = std::sync::Mutex::new(BTreeSet::new());
    eventually(
        Duration::from_secs(60),
        "every shared Job finished",
        || async {
            if let Some(ledger) = read_ledger(&bed.s3, bucket, "shared/x.json").await {
                let mut seen = holders.lock().unwrap();
                seen.extend(ledger.holders.values().map(|h| h.agent.clone()));
            }
            checker.snapshot(|s| {
                shared_jobs
                    .iter()
                    .all(|(ns, j)| s.finished.contains(&(ns.to_string(), j.to_string())))
                    .then_some(())
            })
        },
    )
    .await;
    checker.snapshot(|s| {
        assert_eq!(
            s.max_running, 1,
            "the shared limit of 1 held across namespaces"
        );
    });
    let holders = holders.into_inner().unwrap();
    assert_eq!(
        holders,
        BTreeSet::from([
            "one/team-a/shared".to_string(),
            "one/team-b/shared".to_string()
        ]),
        "both namespaces' groups held slots in the one shared ledger"
    );
    assert!(keys(&bed).await.contains("shared/x.json"));
    let replaced = ready_becomes(
        cp,
        &controller,
        TEAM_A,
        "etl",
        ("False", "LedgerNotAllowed"),
    )
    .await;
    assert!(
        replaced.contains(&format!("s3://{bucket}/shared/"))
            && replaced.contains("--allowed-ledger list"),
        "{replaced}"
    );
    println!("case 2 done after {:?}", t2.elapsed());
    let log = controller.log_text();
    for secret in [TENANT_ACCESS_KEY, TENANT_SECRET_KEY] {
        assert!(!log.contains(secret), "the log shows a credential:\n{log}");
    }
    println!("whole test {:?}", started.elapsed());
}

/// A bad template stops the controller before it connects to anything,
/// with one line that says what is wrong.
#[test]
fn a_bad_allowed_ledger_template_stops_the_controller_with_one_line() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_jobgate"))
        .args([
            "controller",
            "--kubeconfig=/nonexistent",
            "--allowed-ledger=s3://ledgers/{tenant}/",
        ])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        stderr.contains("--allowed-ledger") && stderr.contains("{tenant}"),
        "{stderr}"
    );
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
}
