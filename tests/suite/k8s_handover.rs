//! A leader replaced while a grant's write is in flight, counted on pods:
//! the binary's shared held cluster, SeaweedFS, and two `jobgate
//! controller` replicas of one cluster with leader election. The leader
//! reaches S3 through a fault proxy that lets its grant land and holds the
//! answer, and its API server through a TCP proxy that is then cut: it
//! loses its Lease and drops the pass that asked, and the standby takes
//! over and lets the Job run on that slot. When the old leader reaches S3
//! again (its API server still cut off), the answer reaches its client,
//! which must not free the slot under the Job the standby let run.

use std::time::Duration;

use serde_json::json;

use jobgate_testkit::faultproxy::{FaultProxy, Faults, Holds};
use jobgate_testkit::operator::{
    Bed, ControllerProcess, create_held_job, eventually, ledger_holders,
};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::tcpproxy::TcpProxy;

const NS: &str = "handover";

fn job_field(bed: &Bed, job: &str, path: &str) -> String {
    let out = bed.cp.kubectl(&[
        "get",
        "-n",
        &bed.ns,
        &format!("job/{job}"),
        "-o",
        &format!("jsonpath={path}"),
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_answered_after_its_leader_was_replaced_is_not_freed_under_the_standbys_job() {
    let bed = Bed::shared_held(NS).await;
    let ns = bed.ns.as_str();
    // No endpoint in the spec: each replica reaches S3 where its
    // environment says, the leader through the proxy.
    bed.group_with(
        "ha",
        1,
        json!({
            "leaseSeconds": 20,
            "maxGracePeriodSeconds": 5,
            "ledger": {"bucket": bed.bucket, "region": "us-east-1", "forcePathStyle": true},
        }),
    );
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "one", ns);
    let proxy = FaultProxy::start(&bed.s3.endpoint, Faults::default()).await;
    let lease_ns = format!("--leader-election-namespace={ns}");
    let flags = [
        "--leader-elect=true",
        lease_ns.as_str(),
        "--leader-election-lease=3s",
    ];
    let api = TcpProxy::start(([127, 0, 0, 1], bed.cp.apiserver_port()).into()).await;
    let kubeconfig = bed
        .cp
        .kubeconfig_via(api.addr.port(), &format!("{ns}-leader.kubeconfig"));
    let leader = ControllerProcess::start_via(
        &bed.cp,
        &bed.s3,
        &kubeconfig,
        ("one", ns),
        &flags,
        "-a",
        &[("AWS_ENDPOINT_URL", &proxy.endpoint)],
    );
    eventually(
        Duration::from_secs(30),
        "a leader that has passed",
        || async {
            let log = leader.log_text();
            (log.contains("became the leader") && log.contains("opened ledger")).then_some(())
        },
    )
    .await;
    let standby = ControllerProcess::start_with(&bed.cp, &bed.s3, "one", ns, true, &flags, "-b");
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(!standby.log_text().contains("became the leader"));

    // The grant lands, its answer is held, and the leader is cut off from
    // its API server.
    proxy.hold(Holds {
        put_answers: true,
        ..Default::default()
    });
    create_held_job(&bed.kube, ns, "first", "ha", 1, None).await;
    let key = bed.key("ha");
    eventually(Duration::from_secs(30), "the grant written", || async {
        let holders = ledger_holders(&bed.s3, &bed.bucket, &key).await?;
        (holders.len() == 1).then_some(())
    })
    .await;
    api.cut(true);

    // The standby leads, finds the slot held and lets the Job run.
    eventually(Duration::from_secs(30), "first runs", || async {
        (pods.running() == 1).then_some(())
    })
    .await;
    assert!(standby.log_text().contains("became the leader"));
    create_held_job(&bed.kube, ns, "second", "ha", 1, None).await;

    // The old leader has lost its Lease and dropped its pass; it reaches S3
    // again, and the grant's answer reaches its client.
    eventually(
        Duration::from_secs(30),
        "the old leader steps down",
        || async { leader.log_text().contains("lost leadership").then_some(()) },
    )
    .await;
    proxy.hold(Holds::default());
    // Long enough for a freed slot to be taken: the standby polls every
    // 300 ms while a Job waits.
    tokio::time::sleep(Duration::from_secs(10)).await;
    eprintln!("{}", pods.summary(1));
    assert!(
        pods.max() <= 1,
        "two Jobs ran at limit 1: {}\nold leader:\n{}\nstandby:\n{}",
        pods.summary(1),
        leader.log_text(),
        standby.log_text()
    );
    assert_eq!(job_field(&bed, "second", "{.spec.suspend}"), "true");
    let holders = ledger_holders(&bed.s3, &bed.bucket, &key)
        .await
        .expect("the ledger");
    let first = job_field(&bed, "first", "{.metadata.uid}");
    assert!(
        holders.contains_key(&first),
        "first's slot freed: {holders:?}"
    );
}
