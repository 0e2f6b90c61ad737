//! The controller end to end: a real kube-apiserver (and etcd), SeaweedFS as
//! the S3 ledger store, and the `jobgate controller` binary. Jobs are
//! completed by a stand-in for the Job controller (see `jobgate_testkit::operator`),
//! except in the full-mode test, which runs the same flow through
//! kube-controller-manager, kube-scheduler and kwok.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams};

use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    AdmissionLog, Bed, ControllerProcess, Sim, apply_credentials, cluster, create_job, create_jobs,
    eventually, ledger_holders, observe, read_ledger,
};

const NS: &str = "batch";

fn names(order: &[(String, String)]) -> Vec<String> {
    order.iter().map(|(_, j)| j.clone()).collect()
}

/// `kubectl get events` for the objects that `selector` picks.
fn events_of(cp: &ControlPlane, ns: &str, selector: &str) -> String {
    let out = cp.kubectl(&["get", "events", "-n", ns, "--field-selector", selector]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn job_names(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("job-{i:02}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn limit_three_admits_ten_jobs_oldest_first_and_frees_every_slot() {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    let (s3, cp, kube) = (&bed.s3, &bed.cp, &bed.kube);
    // Credentials come from a Secret named by the group, not the environment.
    apply_credentials(cp, ns, "s3-creds", s3);
    bed.group_in(cp, "etl", ns, 3, None, Some("s3-creds"));
    bed.jobs(ns, "etl", &job_names(10)).await;
    let checker = AdmissionLog::default();
    let sim = Sim::new((200, 600));
    sim.pause(true);
    observe(kube.clone(), "one", ns, checker.clone(), Some(sim.clone()));
    let controller = ControllerProcess::start(cp, s3, "one", ns, false);

    eventually(Duration::from_secs(60), "three admissions", || async {
        (checker.snapshot(|s| s.order.len()) >= 3).then_some(())
    })
    .await;
    // Nothing finishes while paused, so nothing more may be admitted.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let first = checker.snapshot(|s| names(&s.by_token()));
    assert_eq!(first, job_names(3), "{}", controller.log_text());
    let status = eventually(Duration::from_secs(20), "group status", || async {
        let out = cp.kubectl(&["get", "cg", "etl", "-n", ns, "--no-headers"]);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        let cols: Vec<&str> = text.split_whitespace().collect();
        (cols.get(1..6) == Some(&["3", "3", "3", "7", "True"][..])).then_some(text)
    })
    .await;
    assert!(status.starts_with("etl"), "{status}");
    // READ: how long ago IN-USE was read from the ledger.
    let read = cp.kubectl_ok(&[
        "get",
        "cg",
        "etl",
        "-n",
        ns,
        "-o",
        "jsonpath={.status.ledgerReadTime}",
    ]);
    let read = humantime::parse_rfc3339(read.trim())
        .unwrap_or_else(|e| panic!("ledgerReadTime {read:?}: {e}"));
    let age = std::time::SystemTime::now()
        .duration_since(read)
        .unwrap_or_default();
    assert!(age < Duration::from_secs(40), "IN-USE read {age:?} ago");
    let events = events_of(
        cp,
        ns,
        "involvedObject.kind=ConcurrencyGroup,involvedObject.name=etl",
    );
    assert!(events.contains("LedgerReachable"), "{events}");
    let events = events_of(cp, ns, "involvedObject.name=job-05");
    assert!(
        events.contains("Waiting") && events.contains("in use 3/3 in all clusters"),
        "{events}"
    );

    sim.pause(false);
    eventually(Duration::from_secs(90), "all ten Jobs finished", || async {
        (checker.snapshot(|s| s.finished.len()) == 10).then_some(())
    })
    .await;
    bed.ledger_drains(&bed.key("etl")).await;
    checker.snapshot(|s| {
        assert!(s.max_running <= 3, "{} Jobs ran at once", s.max_running);
        assert_eq!(s.max_running, 3, "the limit was never used fully");
        assert_eq!(names(&s.by_token()), job_names(10), "admission order");
        assert!(s.admissions.values().all(|n| *n == 1), "{:?}", s.admissions);
    });
    let metrics = controller.metrics();
    assert!(
        metrics.contains(&format!(
            r#"jobgate_admissions_total{{namespace="{ns}",group="etl"}} 10"#
        )),
        "{metrics}"
    );
    assert!(
        metrics.contains("jobgate_s3_request_duration_seconds_bucket"),
        "{metrics}"
    );
    assert!(
        metrics.contains(&format!(
            r#"jobgate_releases_total{{namespace="{ns}",group="etl",reason="finished"}} 10"#
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_an_admitted_job_frees_its_slot_and_a_job_created_running_is_handled() {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    let (s3, bucket, cp, kube) = (&bed.s3, &bed.bucket, &bed.cp, &bed.kube);
    // A key of its own, under the namespace's prefix that the controller
    // allows by default.
    let key = format!("jobgate/{ns}/custom/solo.json");
    bed.group_in(cp, "solo", ns, 1, Some(&key), None);
    let jobs: Api<Job> = Api::namespaced(kube.clone(), ns);
    let checker = AdmissionLog::default();
    // Nothing completes in this test: slots are freed by deletion only.
    observe(kube.clone(), "one", ns, checker.clone(), None);
    let first = create_job(kube, ns, "first", "solo", true).await;
    let second = create_job(kube, ns, "second", "solo", true).await;
    let controller = ControllerProcess::start(cp, s3, "one", ns, true);
    let holder_is = |uid: String| {
        let s3 = &s3;
        let bucket = &bucket;
        let key = &key;
        move || {
            let uid = uid.clone();
            async move {
                ledger_holders(s3, bucket, key)
                    .await
                    .filter(|h| h.len() == 1 && h.contains_key(&uid))
            }
        }
    };
    eventually(
        Duration::from_secs(30),
        "first admitted",
        holder_is(first.uid().unwrap()),
    )
    .await;
    // The ledger write comes first, the Job's patch right after it.
    eventually(Duration::from_secs(30), "first unsuspended", || async {
        let j = jobs.get("first").await.ok()?;
        (j.spec?.suspend == Some(false)).then_some(())
    })
    .await;
    let admitted = jobs.get("first").await.unwrap();
    assert_eq!(admitted.spec.unwrap().suspend, Some(false));
    let annotations = admitted.metadata.annotations.unwrap_or_default();
    assert!(
        annotations.contains_key("jobgate.dev/admitted-at"),
        "{annotations:?}"
    );
    assert!(
        annotations.contains_key("jobgate.dev/fencing-token"),
        "{annotations:?}"
    );

    // 3. Deleting the admitted Job frees its slot for the next one.
    jobs.delete("first", &DeleteParams::background())
        .await
        .unwrap();
    eventually(
        Duration::from_secs(30),
        "second admitted",
        holder_is(second.uid().unwrap()),
    )
    .await;

    // 6. A labelled Job created running while no slot is free is suspended
    // again, with a Warning that says how to create it.
    create_job(kube, ns, "rogue", "solo", false).await;
    eventually(Duration::from_secs(30), "rogue suspended", || async {
        let j = jobs.get("rogue").await.ok()?;
        (j.spec?.suspend == Some(true)).then_some(())
    })
    .await;
    let events = events_of(cp, ns, "involvedObject.name=rogue");
    assert!(
        events.contains("SuspendedNoSlot") && events.contains("spec.suspend: true"),
        "{events}"
    );
    // It then waits like any other Job.
    jobs.delete("second", &DeleteParams::background())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "rogue admitted", || async {
        let j = jobs.get("rogue").await.ok()?;
        let admitted = j.annotations().contains_key("jobgate.dev/admitted-at");
        (j.spec?.suspend == Some(false) && admitted).then_some(())
    })
    .await;

    // With a slot free, a Job created running keeps running and gets it.
    jobs.delete("rogue", &DeleteParams::background())
        .await
        .unwrap();
    eventually(Duration::from_secs(30), "an empty ledger", || async {
        ledger_holders(s3, bucket, &key)
            .await
            .filter(|h| h.is_empty())
    })
    .await;
    let lucky = create_job(kube, ns, "lucky", "solo", false).await;
    eventually(
        Duration::from_secs(30),
        "lucky adopted",
        holder_is(lucky.uid().unwrap()),
    )
    .await;
    let j = jobs.get("lucky").await.unwrap();
    assert_eq!(j.spec.as_ref().unwrap().suspend, Some(false));
    let events = events_of(cp, ns, "involvedObject.name=lucky");
    assert!(
        events.contains("RunningWithoutSlot"),
        "{events}\n{}",
        controller.log_text()
    );
    checker.snapshot(|s| {
        assert!(s.admissions.values().all(|n| *n <= 2), "{:?}", s.admissions);
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn controller_killed_during_admission_leaks_nothing_and_admits_once() {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    let (s3, cp, kube) = (&bed.s3, &bed.cp, &bed.kube);
    bed.group_in(cp, "crashy", ns, 3, None, None);
    let checker = AdmissionLog::default();
    observe(
        kube.clone(),
        "one",
        ns,
        checker.clone(),
        Some(Sim::new((100, 500))),
    );
    bed.jobs(ns, "crashy", &job_names(30)).await;
    let mut controller = ControllerProcess::start(cp, s3, "one", ns, true);
    let mut kills = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(180);
    while checker.snapshot(|s| s.finished.len()) < 30 {
        assert!(
            tokio::time::Instant::now() < deadline,
            "not finished after {kills} kills: {:?}\n{}",
            checker.snapshot(|s| s.finished.len()),
            controller.log_text()
        );
        if kills < 10 {
            let pause = 150 + rand::random::<u64>() % 900;
            tokio::time::sleep(Duration::from_millis(pause)).await;
            controller.kill9();
            kills += 1;
            tokio::time::sleep(Duration::from_millis(rand::random::<u64>() % 300)).await;
            controller.restart();
        } else {
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    bed.ledger_drains(&bed.key("crashy")).await;
    checker.snapshot(|s| {
        assert!(s.max_running <= 3, "{} Jobs ran at once", s.max_running);
        assert_eq!(s.admissions.len(), 30);
        assert!(s.admissions.values().all(|n| *n == 1), "{:?}", s.admissions);
    });
    assert!(kills >= 5, "only {kills} kills before the Jobs finished");
    eprintln!(
        "kill test: {kills} SIGKILLs, max {} at once",
        checker.snapshot(|s| s.max_running)
    );
}

/// Two clusters share one ledger. Fairness is measured from the moment both
/// wait, whichever controller happened to start first: no Job completes
/// until the ledger shows both clusters' recorded waits.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_clusters_sharing_a_ledger_share_the_limit_fairly() {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    let key = bed.key("shared");
    let (west, west_kube) = cluster(ns, false).await;
    let (east, east_kube) = (&*bed.cp, &bed.kube);
    let s3 = &bed.s3;
    let checker = AdmissionLog::default();
    let sim = Sim::new((200, 700));
    sim.pause(true);
    let mut controllers = Vec::new();
    for (name, cp, kube) in [("east", east, east_kube), ("west", &west, &west_kube)] {
        bed.group_in(cp, "shared", ns, 4, None, None);
        create_jobs(kube, ns, "shared", &job_names(20)).await;
        observe(kube.clone(), name, ns, checker.clone(), Some(sim.clone()));
    }
    for (name, cp) in [("east", east), ("west", &west)] {
        controllers.push(ControllerProcess::start(cp, s3, name, ns, true));
    }
    let logs = |controllers: &[ControllerProcess]| {
        let logs: Vec<String> = controllers.iter().map(|c| c.log_text()).collect();
        logs.join("\n----\n")
    };
    // Both clusters hold or wait: the first to start holds every slot (or
    // they split them), and both have Jobs left, so both record a wait.
    eventually(Duration::from_secs(60), "both clusters wait", || async {
        let ledger = read_ledger(s3, &bed.bucket, &key).await?;
        let waits = ["east", "west"].map(|c| {
            ledger
                .agents
                .get(&format!("{c}/{ns}/shared"))
                .map(|a| a.waiting)
        });
        // And the four admissions are seen: the ledger write comes before
        // the Jobs are unsuspended.
        let seen = checker.snapshot(|s| s.order.len());
        (ledger.holders.len() == 4 && waits.iter().all(|w| w.is_some_and(|n| n > 0)) && seen == 4)
            .then_some(())
    })
    .await;
    let before = checker.snapshot(|s| s.order.len());
    assert_eq!(before, 4, "admitted while no slot was free");
    sim.pause(false);
    eventually(
        Duration::from_secs(240),
        "all forty Jobs finished",
        || async { (checker.snapshot(|s| s.finished.len()) == 40).then_some(()) },
    )
    .await;
    bed.ledger_drains(&key).await;
    checker.snapshot(|s| {
        assert!(s.max_running <= 4, "{} Jobs ran at once", s.max_running);
        assert!(s.admissions.values().all(|n| *n == 1), "{:?}", s.admissions);
        // From the moment both wait, free slots go to the cluster holding
        // fewer: neither waits for the other to run out of Jobs.
        let window = &s.order[before..before + 16];
        let count = |cluster: &str| window.iter().filter(|(c, _)| c == cluster).count();
        let first: Vec<&str> = s.order[..before].iter().map(|(c, _)| c.as_str()).collect();
        eprintln!(
            "two clusters: max {} at once; first four {first:?}; next 16: east {}, west {}",
            s.max_running,
            count("east"),
            count("west"),
        );
        for cluster in ["east", "west"] {
            let n = count(cluster);
            assert!(
                n >= 5,
                "{cluster} got {n} of the 16 admissions after both waited: {window:?}\n{}",
                logs(&controllers)
            );
        }
    });
}

/// The same admission flow with the real Job controller: kube-controller-manager
/// creates pods for admitted Jobs, kube-scheduler binds them to a kwok node,
/// kwok runs them to success, and the Job controller marks the Jobs Complete.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn full_control_plane_runs_ten_jobs_through_a_limit_of_three() {
    let bed = Bed::shared(NS, true).await;
    let ns = bed.ns.as_str();
    let (s3, cp, kube) = (&bed.s3, &bed.cp, &bed.kube);
    bed.group_in(cp, "etl", ns, 3, None, None);
    bed.jobs(ns, "etl", &job_names(10)).await;
    let checker = AdmissionLog::default();
    // No stand-in: kube-controller-manager and kwok finish the Jobs.
    observe(kube.clone(), "full", ns, checker.clone(), None);
    let controller = ControllerProcess::start(cp, s3, "full", ns, true);
    eventually(
        Duration::from_secs(120),
        "all ten Jobs complete",
        || async { (checker.snapshot(|s| s.finished.len()) == 10).then_some(()) },
    )
    .await;
    bed.ledger_drains(&bed.key("etl")).await;
    checker.snapshot(|s| {
        assert!(s.max_running <= 3, "{} Jobs ran at once", s.max_running);
        assert_eq!(names(&s.by_token()), job_names(10), "admission order");
        assert!(s.admissions.values().all(|n| *n == 1), "{:?}", s.admissions);
    });
    // The pods really ran: the Job controller counted a success for each.
    let jobs: Api<Job> = Api::namespaced(kube.clone(), ns);
    for name in job_names(10) {
        let j = jobs.get(&name).await.unwrap();
        let succeeded = j.status.and_then(|s| s.succeeded).unwrap_or(0);
        assert_eq!(succeeded, 1, "{name}: {}", controller.log_text());
    }
}

/// Two replicas with leader election: only the leader admits; when it is
/// killed, the other takes over after the Lease runs out and takes up the
/// same slots (same cluster name, same ledger agent).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_standby_replica_takes_over_when_the_leader_dies() {
    let bed = Bed::shared(NS, false).await;
    let ns = bed.ns.as_str();
    let (s3, cp, kube) = (&bed.s3, &bed.cp, &bed.kube);
    bed.group_in(cp, "ha", ns, 2, None, None);
    let checker = AdmissionLog::default();
    let sim = Sim::new((300, 600));
    sim.pause(true);
    observe(kube.clone(), "one", ns, checker.clone(), Some(sim.clone()));
    bed.jobs(ns, "ha", &job_names(8)).await;
    let lease_ns = format!("--leader-election-namespace={ns}");
    let flags = [
        "--leader-elect=true",
        lease_ns.as_str(),
        "--leader-election-lease=3s",
    ];
    let mut first = ControllerProcess::start_with(cp, s3, "one", ns, true, &flags, "-a");
    eventually(Duration::from_secs(30), "two admissions", || async {
        (checker.snapshot(|s| s.order.len()) == 2).then_some(())
    })
    .await;
    let second = ControllerProcess::start_with(cp, s3, "one", ns, true, &flags, "-b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !second.log_text().contains("became the leader"),
        "{}",
        second.log_text()
    );
    first.kill9();
    let killed = std::time::Instant::now();
    sim.pause(false);
    eventually(
        Duration::from_secs(60),
        "all eight Jobs finished",
        || async { (checker.snapshot(|s| s.finished.len()) == 8).then_some(()) },
    )
    .await;
    assert!(second.log_text().contains("became the leader"));
    eprintln!(
        "standby finished the work {:?} after the leader died",
        killed.elapsed()
    );
    checker.snapshot(|s| {
        assert!(s.max_running <= 2, "{} Jobs ran at once", s.max_running);
        assert!(s.admissions.values().all(|n| *n == 1), "{:?}", s.admissions);
    });
    bed.ledger_drains(&bed.key("ha")).await;
}
