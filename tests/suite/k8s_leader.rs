//! Leader election against a real kube-apiserver: one leader at a time, a
//! graceful hand-over is quick, a crashed leader is replaced only after a
//! whole lease on the successor's clock, a restart under the same identity
//! takes the lease straight back, and a leader whose lease is taken steps
//! down.

use std::time::Duration;

use jobgate::operator::leader::{Leadership, LeaseConfig, acquire};
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use tokio::task::JoinHandle;
use tokio::time::{Instant, sleep, timeout};

const NS: &str = "default";

async fn client(cp: &jobgate_testkit::k8s::ControlPlane) -> kube::Client {
    let kubeconfig = Kubeconfig::read_from(&cp.kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap();
    kube::Client::try_from(config).unwrap()
}

fn config(name: &str, identity: &str, lease: Duration) -> LeaseConfig {
    LeaseConfig {
        lease_duration: lease,
        renew_interval: lease / 6,
        retry_interval: Duration::from_millis(100),
        ..LeaseConfig::new(NS, name, identity)
    }
}

fn elect(client: &kube::Client, cfg: LeaseConfig) -> JoinHandle<Leadership> {
    let client = client.clone();
    tokio::spawn(async move { acquire(client, cfg).await.unwrap() })
}

async fn within(limit: Duration, election: JoinHandle<Leadership>, what: &str) -> Leadership {
    match timeout(limit, election).await {
        Ok(joined) => joined.unwrap(),
        Err(_) => panic!("{what}: not leader within {limit:?}"),
    }
}

async fn spec(client: &kube::Client, name: &str) -> LeaseSpec {
    let api: Api<Lease> = Api::namespaced(client.clone(), NS);
    api.get(name).await.unwrap().spec.unwrap_or_default()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lease_leader_election() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
        .with_test_writer()
        .try_init();
    // The binary's shared control plane: this test alone makes Leases in
    // its default namespace (controllers elect in their own).
    let cp = jobgate_testkit::shared::control_plane();
    let c = client(cp).await;

    one_leader_and_a_quick_handover(&c).await;
    a_crashed_leader_is_waited_out(&c).await;
    a_leader_watched_while_renewing_is_waited_out(&c).await;
    the_same_identity_takes_its_lease_back_at_once(&c).await;
    a_leader_whose_lease_is_taken_steps_down(&c).await;
}

async fn one_leader_and_a_quick_handover(c: &kube::Client) {
    let lease = Duration::from_secs(2);
    let mut a = elect(c, config("handover", "a", lease));
    let mut b = elect(c, config("handover", "b", lease));
    let (first, joined) = tokio::select! {
        r = &mut a => ("a", r),
        r = &mut b => ("b", r),
    };
    let leader = joined.unwrap();
    let (second, follower) = if first == "a" { ("b", b) } else { ("a", a) };
    assert!(leader.is_leader());
    assert_eq!(
        spec(c, "handover").await.holder_identity.as_deref(),
        Some(first)
    );

    // Longer than a lease: only renewals keep the follower out.
    let until = Instant::now() + lease * 3 / 2;
    while Instant::now() < until {
        assert!(
            !follower.is_finished(),
            "{second} became leader beside {first}"
        );
        assert!(leader.is_leader(), "{first} stopped leading while renewing");
        sleep(Duration::from_millis(100)).await;
    }

    let released = Instant::now();
    leader.release().await;
    let follower = within(lease, follower, second).await;
    let handover = released.elapsed();
    eprintln!("handover after release: {handover:?} (lease {lease:?})");
    assert!(handover < lease / 2, "{handover:?}");
    assert!(follower.is_leader());
    let s = spec(c, "handover").await;
    assert_eq!(s.holder_identity.as_deref(), Some(second));
    assert_eq!(s.lease_transitions, Some(1));
    follower.release().await;
}

async fn a_crashed_leader_is_waited_out(c: &kube::Client) {
    let lease = Duration::from_secs(2);
    let crashed = within(lease, elect(c, config("crash", "a", lease)), "a").await;
    // Dropped before its first renewal, so its last write came before
    // the successor first looked.
    drop(crashed);
    let started = Instant::now();
    let successor = within(lease * 3, elect(c, config("crash", "b", lease)), "b").await;
    let waited = started.elapsed();
    eprintln!("takeover from a crashed leader: {waited:?} (lease {lease:?})");
    assert!(waited >= lease, "took over after {waited:?}");
    assert!(waited < lease + Duration::from_secs(2), "{waited:?}");
    let s = spec(c, "crash").await;
    assert_eq!(s.holder_identity.as_deref(), Some("b"));
    assert_eq!(s.lease_transitions, Some(1));
    successor.release().await;
}

async fn a_leader_watched_while_renewing_is_waited_out(c: &kube::Client) {
    let lease = Duration::from_secs(2);
    let leader = within(lease, elect(c, config("renewing", "a", lease)), "a").await;
    let follower = elect(c, config("renewing", "b", lease));
    sleep(lease * 3 / 2).await;
    assert!(!follower.is_finished(), "b took over from a live leader");
    drop(leader);
    let dropped = Instant::now();
    // Lets a renewal that was in flight at the drop land.
    sleep(Duration::from_millis(300)).await;
    let last = spec(c, "renewing").await;
    assert_eq!(last.holder_identity.as_deref(), Some("a"));
    let renewed = last.renew_time.unwrap().0;
    let follower = within(lease * 3, follower, "b").await;
    // Both clocks belong to this machine, so here (and only in a test)
    // the leader's wall-clock renewTime can be compared with ours.
    let since_renewal = Timestamp::now().duration_since(renewed);
    let since_drop = dropped.elapsed();
    eprintln!(
        "takeover from a renewing leader: {since_drop:?} after the drop, \
         {since_renewal:?} after its last renewal (lease {lease:?})"
    );
    assert!(
        since_renewal >= lease.try_into().unwrap(),
        "took over {since_renewal:?} after the last renewal"
    );
    assert!(
        since_drop < lease + Duration::from_secs(2),
        "{since_drop:?}"
    );
    assert_eq!(
        spec(c, "renewing").await.holder_identity.as_deref(),
        Some("b")
    );
    follower.release().await;
}

async fn the_same_identity_takes_its_lease_back_at_once(c: &kube::Client) {
    let lease = Duration::from_secs(3);
    let before = within(lease, elect(c, config("restart", "a", lease)), "a").await;
    sleep(lease / 3).await;
    let first = spec(c, "restart").await;
    drop(before);
    let started = Instant::now();
    let after = within(lease, elect(c, config("restart", "a", lease)), "a again").await;
    let waited = started.elapsed();
    eprintln!("same identity re-acquired in {waited:?} (lease {lease:?})");
    assert!(waited < lease / 2, "{waited:?}");
    let s = spec(c, "restart").await;
    assert_eq!(s.holder_identity.as_deref(), Some("a"));
    assert_eq!(s.lease_transitions, first.lease_transitions);
    assert_eq!(s.acquire_time, first.acquire_time);
    after.release().await;
}

async fn a_leader_whose_lease_is_taken_steps_down(c: &kube::Client) {
    let lease = Duration::from_secs(3);
    let cfg = config("stolen", "a", lease);
    let renew = cfg.renew_interval;
    let mut leader = within(lease, elect(c, cfg), "a").await;
    let api: Api<Lease> = Api::namespaced(c.clone(), NS);
    let mut l = api.get("stolen").await.unwrap();
    if let Some(s) = l.spec.as_mut() {
        s.holder_identity = Some("intruder".into());
    }
    api.replace("stolen", &PostParams::default(), &l)
        .await
        .unwrap();
    let stolen = Instant::now();
    timeout(lease, leader.lost())
        .await
        .expect("leader did not notice the lease was taken");
    let noticed = stolen.elapsed();
    eprintln!("noticed the lease was taken after {noticed:?} (renewing every {renew:?})");
    assert!(!leader.is_leader());
    assert!(noticed < renew + Duration::from_secs(1), "{noticed:?}");
    leader.release().await;
    assert_eq!(
        spec(c, "stolen").await.holder_identity.as_deref(),
        Some("intruder")
    );
}
