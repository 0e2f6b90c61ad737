//! Leases: a killed agent's slots come back after its lease; a live agent's
//! slots never do.

use std::os::unix::process::CommandExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use jobgate::semaphore::read_ledger;
use jobgate::{Config, Semaphore};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_killed_agents_slots_return_after_its_lease() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let store = server.dyn_store(&bucket).await;
    let url = format!("s3://{bucket}/lease.json");
    let lease = Duration::from_secs(5);

    // A real `jobgate run` process holds the only slot.
    let mut victim = Command::new(jobgate_testkit::jobgate_bin())
        .args([
            "run", "--ledger", &url, "--limit", "1", "--lease", "5s", "--holder", "victim", "--",
            "sleep", "600",
        ])
        .envs(server.env())
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    loop {
        if let Some((l, _)) = read_ledger(&store, "lease.json").await.unwrap()
            && l.holders.contains_key("victim")
        {
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(30),
            "victim never got its slot"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // SIGKILL the whole process group: no release, no goodbye.
    nix::sys::signal::killpg(
        nix::unistd::Pid::from_raw(victim.id() as i32),
        nix::sys::signal::Signal::SIGKILL,
    )
    .unwrap();
    let _ = victim.wait();

    let mut cfg = Config::new("survivor");
    cfg.poll = Duration::from_millis(100);
    let sem = Semaphore::new(store.clone(), "lease.json", cfg);
    let started = Instant::now();
    let permit = tokio::time::timeout(Duration::from_secs(30), sem.acquire("next"))
        .await
        .expect("the dead agent's slot was never reclaimed")
        .unwrap();
    let waited = started.elapsed();
    eprintln!("reclaimed after {waited:?} (lease {lease:?})");
    assert!(
        waited >= lease,
        "evicted before a full lease of silence: {waited:?}"
    );
    assert!(waited < lease * 3, "took too long: {waited:?}");
    let (l, _) = read_ledger(&store, "lease.json").await.unwrap().unwrap();
    assert!(!l.holders.contains_key("victim"));
    assert!(l.holders.contains_key("next"));
    assert!(permit.token > 1);
    sem.release("next").await.unwrap();
    sem.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_live_agents_slots_are_never_evicted() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let store = server.dyn_store(&bucket).await;
    let lease = Duration::from_secs(1);

    let mut live_cfg = Config::new("live");
    live_cfg.limit = Some(1);
    live_cfg.lease = lease;
    let live = Semaphore::new(store.clone(), "live.json", live_cfg);
    let permit = live.acquire("held").await.unwrap();

    let mut waiter_cfg = Config::new("waiter");
    waiter_cfg.poll = Duration::from_millis(50);
    let waiter = Semaphore::new(store.clone(), "live.json", waiter_cfg);
    let waited = tokio::time::timeout(lease * 5, waiter.acquire("want")).await;
    assert!(waited.is_err(), "a live agent's slot was taken: {waited:?}");
    assert!(!permit.is_lost(), "the live holder lost its slot");
    let (l, _) = read_ledger(&store, "live.json").await.unwrap().unwrap();
    assert!(l.holders.contains_key("held"));
    assert!(
        l.agents["live"].renewals >= 4,
        "renewed only {} times in 5 leases",
        l.agents["live"].renewals
    );

    live.release("held").await.unwrap();
    let p = tokio::time::timeout(Duration::from_secs(5), waiter.acquire("want"))
        .await
        .expect("freed slot not taken")
        .unwrap();
    assert!(p.token > permit.token);
    waiter.release("want").await.unwrap();
    live.shutdown().await;
    waiter.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_holder_that_cannot_renew_is_told_before_its_lease_runs_out() {
    let server = jobgate_testkit::seaweed().await;
    let bucket = jobgate_testkit::bucket(&server).await;
    let store = server.dyn_store(&bucket).await;
    let lease = Duration::from_secs(2);
    let mut cfg = Config::new("fragile");
    cfg.limit = Some(1);
    cfg.lease = lease;
    let sem = Semaphore::new(store.clone(), "fence.json", cfg);
    let mut permit = sem.acquire("h").await.unwrap();
    let granted = Instant::now();
    drop(server); // the store goes away: renewals fail from now on
    tokio::time::timeout(lease, permit.lost())
        .await
        .expect("not told within the lease");
    let told = granted.elapsed();
    eprintln!("told after {told:?}");
    assert!(told < lease, "told too late: {told:?}");
    sem.shutdown().await;
}

/// A `jobgate run` process whose machine was suspended for longer than its
/// lease (made to see it: its boot-time clock moves 40 s while its monotonic
/// clock does not) gives up its slot and stops its command within about a
/// second of waking, before any renewal could tell it that another agent
/// holds the slot now. Before, it ran on until a renewal found the slot
/// gone, and here, where nobody took it, for good.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_command_woken_from_a_suspend_longer_than_its_lease_is_stopped_at_once() {
    let dir = tempfile::tempdir().unwrap();
    let slept = dir.path().join("slept-ms");
    std::fs::write(&slept, "0").unwrap();
    let url = format!("file://{}", dir.path().join("ledger.json").display());
    let mut run = Command::new(jobgate_testkit::jobgate_bin())
        .args([
            "run",
            "--ledger",
            &url,
            "--limit",
            "1",
            "--lease",
            "30s",
            "--unsafe-test-extra-boot-time-file",
        ])
        .arg(&slept)
        .args(["--", "sleep", "600"])
        .stdin(Stdio::null())
        .process_group(0)
        .spawn()
        .unwrap();
    // Running, and renewing, well past a renewal interval.
    tokio::time::sleep(Duration::from_secs(8)).await;
    assert!(run.try_wait().unwrap().is_none(), "jobgate run ended early");
    let woke = Instant::now();
    std::fs::write(&slept, "40000").unwrap();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        if woke.elapsed() > Duration::from_secs(20) {
            let _ = nix::sys::signal::killpg(
                nix::unistd::Pid::from_raw(run.id() as i32),
                nix::sys::signal::Signal::SIGKILL,
            );
            panic!("jobgate run kept its command running 20 s after waking from a 40 s suspend");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let stopped = woke.elapsed();
    eprintln!("woken from a 40 s suspend (lease 30 s): stopped {stopped:?} after, {status}");
    assert_eq!(status.code(), Some(123), "exit code for a lost lease");
    assert!(stopped < Duration::from_secs(5), "{stopped:?}");
}

/// A controller rebuilds a group's ledger client (its credentials Secret
/// changed) and the pass that did so stops before the new client takes up
/// the slots held (this replica lost its leader Lease, and no pass runs
/// while the slots' Jobs still do). The replaced client renews them until
/// the new one does: another agent never gets the slot, over two leases.
/// Before, the replaced client stopped with the pass, and the other agent
/// took the slot one lease later.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rebuilt_controller_client_keeps_its_slots_renewed_until_the_new_one_takes_them_up() {
    use jobgate::operator::crd::{ConcurrencyGroup, ConcurrencyGroupSpec, LedgerSpec};
    use jobgate::operator::ledgers::{Credentials, LedgerSettings, Ledgers, lock};
    use jobgate::operator::metrics::Metrics;

    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let store = server.dyn_store(&bucket).await;
    let key = "jobgate/batch/rebuilt.json";
    let lease = Duration::from_secs(10);
    let mut group = ConcurrencyGroup::new(
        "rebuilt",
        ConcurrencyGroupSpec {
            limit: 1,
            suspend: false,
            ledger: LedgerSpec {
                bucket: bucket.clone(),
                endpoint: Some(server.endpoint.clone()),
                region: Some("us-east-1".into()),
                force_path_style: Some(true),
                ..Default::default()
            },
            lease_seconds: lease.as_secs() as u32,
            on_lease_loss: Default::default(),
            max_grace_period_seconds: 0,
            on_controller_loss: Default::default(),
        },
    );
    group.metadata.namespace = Some("batch".into());
    let env: std::collections::HashMap<_, _> = server.env().into_iter().collect();
    let creds = |version: &str| Credentials {
        access_key_id: env["AWS_ACCESS_KEY_ID"].clone(),
        secret_access_key: env["AWS_SECRET_ACCESS_KEY"].clone(),
        version: version.into(),
    };
    let settings = LedgerSettings {
        cluster: "east".into(),
        cluster_uid: None,
        poll: Duration::from_millis(200),
        leader_lease: None,
    };
    let metrics = std::sync::Arc::new(Metrics::new(&mut Default::default()));
    let ledgers = Ledgers::default();

    // A pass admits a Job with the first client.
    let first = ledgers
        .get(&group, Some(creds("1")), &settings, &metrics)
        .await
        .unwrap();
    let permit = first.sem.try_acquire("job-a").await.unwrap().unwrap();
    lock(&first.state).permits.insert("job-a".into(), permit);
    drop(first);
    // The Secret changes; the next pass builds a new client and stops.
    let second = ledgers
        .get(&group, Some(creds("2")), &settings, &metrics)
        .await
        .unwrap();

    // Another cluster waits for the slot.
    let mut cfg = Config::new("west/batch/rebuilt");
    cfg.poll = Duration::from_millis(200);
    let west = Semaphore::new(store.clone(), key, cfg);
    let got = tokio::time::timeout(lease * 2, west.acquire("rival")).await;
    assert!(got.is_err(), "the other cluster took a slot still in use");

    // A pass takes the slot up with the new client: the old one goes, and
    // the slot stays renewed.
    let permit = second.sem.try_acquire("job-a").await.unwrap().unwrap();
    lock(&second.state).permits.insert("job-a".into(), permit);
    ledgers
        .get(&group, Some(creds("2")), &settings, &metrics)
        .await
        .unwrap();
    let got = tokio::time::timeout(lease * 3 / 2, west.acquire("rival")).await;
    assert!(got.is_err(), "the other cluster took a slot still in use");
    let (ledger, _) = read_ledger(&store, key).await.unwrap().unwrap();
    assert_eq!(ledger.holders["job-a"].agent, "east/batch/rebuilt");
}
