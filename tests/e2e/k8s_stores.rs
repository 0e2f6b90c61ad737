//! Real containers under ledgers in Google Cloud Storage and Azure Blob
//! Storage: one real node (kubelet, containerd), a `jobgate controller`,
//! and two groups of limit 2, one with `store: GCS` on fake-gcs-server and
//! one with `store: Azure` on Azurite, each with five Jobs whose busybox
//! containers sleep 3 s. Counted on pods, per group: never more than 2
//! with pods that may run, both ledgers drain, and every Job succeeds.

use std::time::Duration;

use serde_json::json;

use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::node::BUSYBOX_IMAGE;
use jobgate_testkit::operator::{
    ControllerProcess, GroupSpec, apply_group_with, client, drained, eventually, install_crd,
    succeeded_jobs,
};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::stores::{self, AZURITE_ACCOUNT, Azurite, FakeGcs};
use jobgate_testkit::{bucket, seaweed};

const LIMIT: usize = 2;
const JOBS: usize = 5;

fn job(ns: &str, name: &str) -> String {
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  namespace: {ns}\n  labels:\n    jobgate.dev/group: etl\nspec:\n  suspend: true\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      hostNetwork: true\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: work\n          image: {BUSYBOX_IMAGE}\n          imagePullPolicy: Never\n          command: [\"sleep\", \"3\"]\n"
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn real_jobs_run_under_ledgers_in_gcs_and_azure() {
    let s3 = seaweed().await;
    let unused_bucket = bucket(&s3).await;
    let gcs = stores::start(FakeGcs::start).await;
    let gcs_bucket = stores::name();
    gcs.create_bucket(&gcs_bucket).await.unwrap();
    let azure = stores::start(Azurite::start).await;
    let container = stores::name();
    azure.create_container(&container).await.unwrap();

    // Node addresses of their own, apart from the other real-node tests'.
    let cp = ControlPlane::start_real_at(&["node-s"], 20);
    install_crd(&cp);
    let kube = client(&cp).await;
    let groups = [
        (
            "on-gcs",
            json!({"store": "GCS", "bucket": gcs_bucket, "endpoint": gcs.0.endpoint}),
            gcs.dyn_store(&gcs_bucket),
        ),
        (
            "on-azure",
            json!({"store": "Azure", "account": AZURITE_ACCOUNT, "bucket": container, "endpoint": azure.0.endpoint}),
            azure.dyn_store(&container),
        ),
    ];
    let mut logs = Vec::new();
    for (ns, ledger, _) in &groups {
        cp.kubectl(&["create", "namespace", ns]);
        cp.wait_default_service_account(ns);
        apply_group_with(
            &cp,
            &GroupSpec {
                name: "etl",
                ns,
                limit: LIMIT as u32,
                bucket: &unused_bucket,
                endpoint: &s3.endpoint,
                key: None,
                secret: None,
            },
            json!({"leaseSeconds": 30, "maxGracePeriodSeconds": 2, "ledger": ledger}),
        );
        let pods = PodLog::default();
        pods.watch(kube.clone(), "real", ns);
        logs.push(pods);
        for i in 0..JOBS {
            let out = cp.kubectl_stdin(&["apply", "-f", "-"], &job(ns, &format!("job-{i}")));
            assert!(
                out.status.success(),
                "{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
    }
    let env = azure.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    // One controller for both namespaces (no --namespace).
    let controller = ControllerProcess::start_via(
        &cp,
        &s3,
        &cp.kubeconfig,
        ("real", ""),
        &["--leader-elect=false"],
        "-stores",
        &env,
    );
    for (ns, _, _) in &groups {
        eventually(Duration::from_secs(180), "every Job succeeded", || async {
            (succeeded_jobs(&cp, ns) == JOBS).then_some(())
        })
        .await;
    }
    for ((ns, _, store), pods) in groups.iter().zip(&logs) {
        let key = format!("jobgate/{ns}/etl.json");
        eventually(Duration::from_secs(30), "an empty ledger", || {
            drained(store, &key)
        })
        .await;
        assert!(
            pods.max() <= LIMIT,
            "{ns}: {} pods at once over {LIMIT}: {}",
            pods.max(),
            pods.summary(LIMIT)
        );
        assert_eq!(
            pods.max(),
            LIMIT,
            "{ns}: the limit was never used fully; {}",
            controller.log_text()
        );
    }
}
