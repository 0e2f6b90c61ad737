//! Two clusters that share a ledger and were given the same cluster name
//! (a values file copied between them), counted on pods: the binary's
//! shared held cluster and a second one of the test's own, each with its
//! own `jobgate controller`, SeaweedFS between them. The second to write
//! finds the agent entry carrying the other's `kube-system` UID, writes
//! nothing and says why, instead of taking the other's slots for its own
//! and freeing them.

use std::time::Duration;

use k8s_openapi::api::core::v1::Event;
use kube::api::{Api, ListParams};

use jobgate_testkit::operator::{
    Bed, ControllerProcess, create_held_job, eventually, held_cluster, ledger_holders,
};
use jobgate_testkit::pods::PodLog;

const NS: &str = "clusters";
const NAME: &str = "copied";

fn ready(cp: &jobgate_testkit::k8s::ControlPlane, ns: &str) -> String {
    let out = cp.kubectl(&[
        "get",
        "-n",
        ns,
        "concurrencygroup/shared",
        "-o",
        r#"jsonpath={.status.conditions[?(@.type=="Ready")].status}/{.status.conditions[?(@.type=="Ready")].reason}/{.status.conditions[?(@.type=="Ready")].message}"#,
    ]);
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_cluster_given_the_same_name_writes_nothing_and_says_why() {
    let bed = Bed::shared_held(NS).await;
    let ns = bed.ns.as_str();
    let (west, west_kube) = held_cluster(ns).await;
    let east = &*bed.cp;
    let pods = PodLog::default();
    pods.watch(bed.kube.clone(), "east", ns);
    pods.watch(west_kube.clone(), "west", ns);
    for cp in [east, &west] {
        bed.group_in(cp, "shared", ns, 1, None, None);
    }
    // Held pods take up to 5 s to stop; the group's default is 0.
    for cp in [east, &west] {
        cp.kubectl_ok(&[
            "patch",
            "-n",
            ns,
            "concurrencygroup/shared",
            "--type=merge",
            "-p",
            r#"{"spec":{"maxGracePeriodSeconds":5,"leaseSeconds":20}}"#,
        ]);
    }
    let east_controller = ControllerProcess::start_with(
        east,
        &bed.s3,
        NAME,
        ns,
        true,
        &["--leader-elect=false"],
        "-east",
    );
    create_held_job(&bed.kube, ns, "east-job", "shared", 1, None).await;
    eventually(Duration::from_secs(60), "east's Job runs", || async {
        (pods.running_in("east") == 1).then_some(())
    })
    .await;

    // West, given the same name, with a Job of its own waiting.
    create_held_job(&west_kube, ns, "west-job", "shared", 1, None).await;
    let west_controller = ControllerProcess::start_with(
        &west,
        &bed.s3,
        NAME,
        ns,
        true,
        &["--leader-elect=false"],
        "-west",
    );
    // Before the fix, west freed east's slot and ran its own Job within
    // seconds: whichever comes first is looked at.
    let condition = eventually(
        Duration::from_secs(60),
        "west's group not Ready, or over the limit",
        || async {
            let c = ready(&west, ns);
            (c.starts_with("False/DuplicateClusterName") || pods.max() > 1).then_some(c)
        },
    )
    .await;
    let within_the_limit = || {
        assert!(
            pods.max() <= 1,
            "two clusters of one name ran over the limit: {}\neast:\n{}\nwest:\n{}",
            pods.summary(1),
            east_controller.log_text(),
            west_controller.log_text()
        )
    };
    within_the_limit();
    // The message names both clusters' kube-system UIDs.
    let uid = |cp: &jobgate_testkit::k8s::ControlPlane| {
        cp.kubectl_ok(&[
            "get",
            "namespace",
            "kube-system",
            "-o",
            "jsonpath={.metadata.uid}",
        ])
    };
    for cluster in [east, &west] {
        let uid = uid(cluster);
        assert!(condition.contains(&uid), "{uid} not in: {condition}");
    }
    // Told as a Warning Event on the group.
    let events: Api<Event> = Api::namespaced(west_kube.clone(), ns);
    eventually(
        Duration::from_secs(30),
        "a DuplicateClusterName Event",
        || async {
            let list = events
                .list(&ListParams::default().fields("reason=DuplicateClusterName"))
                .await
                .ok()?;
            list.items
                .iter()
                .any(|e| e.type_.as_deref() == Some("Warning"))
                .then_some(())
        },
    )
    .await;
    // Long enough for west to have freed east's slot and run its Job, as
    // it did before (in about a second).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let holders = ledger_holders(&bed.s3, &bed.bucket, &bed.key("shared"))
        .await
        .expect("the ledger");
    eprintln!("{}; ledger holders {holders:?}", pods.summary(1));
    within_the_limit();
    assert_eq!(pods.running_in("east"), 1, "east's Job lost its slot");
    assert_eq!(holders.len(), 1, "{holders:?}");
    // East goes on: its condition stays Ready.
    assert!(ready(east, ns).starts_with("True/"), "{}", ready(east, ns));
}
