//! `helm install` of charts/jobgate for real: a control plane with two real
//! nodes (kubelet, containerd, runc), the controller image built from this
//! build's binary, two controller pods with leader election under the
//! chart's ServiceAccount and RBAC, the Job webhook served by those pods
//! with their own certificate, and Jobs whose busybox containers really
//! run. The
//! limit is counted on pods throughout, across a kill of the leader pod,
//! then `helm upgrade` and `helm uninstall`.
//!
//! The leader is killed deterministically: its process is frozen (SIGSTOP),
//! so it neither renews nor hands over its Lease, and its pod is
//! force-deleted, so the kubelet kills the container instead of restarting
//! it. The standby then takes over only once the 15 s Lease has run out;
//! the test prints how long that took and asserts at least 10 s (the
//! Lease minus the time since the last renewal).
//!
//! Pods use the host's network (the test bed has no pod network): each
//! node has its own loopback address, and the controller binds its pod's.
//! The API server calls the webhook at node-a's address (`webhook.url`):
//! Kubernetes refuses loopback addresses as a Service's endpoints
//! (`ValidateEndpointIP`), so the chart's Service cannot route here; that
//! configuration is checked by server-side dry run in tests/helm_chart.rs.

use std::time::Duration;

use k8s_openapi::api::batch::v1::Job;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use serde_json::json;

use jobgate_testkit::chart::{self, Install};
use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::node::{BUSYBOX_IMAGE, JOBGATE_IMAGE};
use jobgate_testkit::operator::{GroupSpec, apply_group_with, client, eventually, ledger_holders};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::{bucket, jobgate_bin, seaweed};

const RELEASE: &str = "jobgate";
const SYSTEM_NS: &str = "jobgate";
const NS: &str = "batch";
const SELECTOR: &str = "app.kubernetes.io/instance=jobgate";

fn job(name: &str, seconds: u32) -> String {
    // No `suspend`: the webhook adds it.
    format!(
        "apiVersion: batch/v1\nkind: Job\nmetadata:\n  name: {name}\n  namespace: {NS}\n  labels:\n    jobgate.dev/group: etl\nspec:\n  backoffLimit: 0\n  template:\n    spec:\n      restartPolicy: Never\n      hostNetwork: true\n      terminationGracePeriodSeconds: 1\n      containers:\n        - name: work\n          image: {BUSYBOX_IMAGE}\n          imagePullPolicy: Never\n          command: [\"sleep\", \"{seconds}\"]\n"
    )
}

fn http_get(host: &str, port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect((host, port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}

async fn controller_pods(kube: &Client) -> Vec<Pod> {
    let pods: Api<Pod> = Api::namespaced(kube.clone(), SYSTEM_NS);
    pods.list(&ListParams::default().labels(SELECTOR))
        .await
        .map(|l| l.items)
        .unwrap_or_default()
}

fn ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

fn leader(cp: &ControlPlane) -> String {
    let out = cp.kubectl(&[
        "get",
        "lease",
        "-n",
        SYSTEM_NS,
        "jobgate-controller",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ]);
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

async fn succeeded(kube: &Client) -> usize {
    let jobs: Api<Job> = Api::namespaced(kube.clone(), NS);
    jobs.list(&ListParams::default())
        .await
        .map(|l| {
            l.items
                .iter()
                .filter(|j| j.status.as_ref().and_then(|s| s.succeeded).unwrap_or(0) > 0)
                .count()
        })
        .unwrap_or(0)
}

fn logs(cp: &ControlPlane) -> String {
    let out = cp.kubectl(&[
        "logs",
        "-n",
        SYSTEM_NS,
        "-l",
        SELECTOR,
        "--tail=40",
        "--prefix",
    ]);
    chart::text(&out)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn helm_install_on_real_nodes_admits_real_jobs_under_the_limit_through_a_leader_kill() {
    let s3 = seaweed().await;
    let bucket = bucket(&s3).await;
    let cp = ControlPlane::start_real(&["node-a", "node-b"]);
    cp.import_jobgate_image(&jobgate_bin(), JOBGATE_IMAGE);
    let kube = client(&cp).await;

    let install = Install {
        release: RELEASE,
        namespace: SYSTEM_NS,
        cluster_name: "real",
        replicas: 2,
        image: JOBGATE_IMAGE,
        s3: &s3,
        webhook_node: "node-a",
    };
    let (out, values_file, metrics_port) = chart::install(&cp, &install);
    assert!(
        out.status.success(),
        "helm install: {}\n{}",
        chart::text(&out),
        logs(&cp)
    );

    // Two ready controller pods, one per node, under the chart's
    // ServiceAccount: the only credential in them is its projected token.
    let pods = eventually(
        Duration::from_secs(120),
        "two ready controller pods",
        || async {
            let pods = controller_pods(&kube).await;
            (pods.len() == 2 && pods.iter().all(ready)).then_some(pods)
        },
    )
    .await;
    let mut nodes: Vec<String> = pods
        .iter()
        .filter_map(|p| p.spec.as_ref()?.node_name.clone())
        .collect();
    nodes.sort();
    assert_eq!(nodes, ["node-a", "node-b"]);
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(spec.service_account_name.as_deref(), Some("jobgate"));
        let env = serde_json::to_string(&spec.containers[0].env).unwrap();
        assert!(
            !env.to_lowercase().contains("token"),
            "a token in the env: {env}"
        );
    }
    // /metrics on each pod's address; exactly one leads.
    let mut leaders = 0;
    for pod in &pods {
        let ip = pod.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap();
        let metrics = http_get(&ip, metrics_port, "/metrics").unwrap_or_default();
        assert!(metrics.contains("jobgate_leader"), "{ip}: {metrics}");
        if metrics.lines().any(|l| l == "jobgate_leader 1") {
            leaders += 1;
        }
    }
    assert_eq!(leaders, 1, "{}", logs(&cp));

    // A group of 2 and six Jobs of real containers, created without
    // `suspend`: the webhook, served by a controller pod, suspends them.
    cp.kubectl(&["create", "namespace", NS]);
    cp.wait_default_service_account(NS);
    apply_group_with(
        &cp,
        &GroupSpec {
            name: "etl",
            ns: NS,
            limit: 2,
            bucket: &bucket,
            endpoint: &s3.endpoint,
            key: None,
            secret: None,
        },
        json!({"leaseSeconds": 40, "maxGracePeriodSeconds": 5}),
    );
    let checker = PodLog::default();
    checker.watch(kube.clone(), "real", NS);
    for i in 0..6 {
        let out = cp.kubectl_stdin(
            &["create", "-o", "json", "-f", "-"],
            &job(&format!("etl-{i}"), 4),
        );
        assert!(out.status.success(), "{}\n{}", chart::text(&out), logs(&cp));
        let created: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            created["spec"]["suspend"], true,
            "not suspended by the webhook: {created}"
        );
    }
    eventually(Duration::from_secs(120), "two Jobs complete", || async {
        (succeeded(&kube).await >= 2).then_some(())
    })
    .await;

    // Kill the leader pod: the standby takes over and the rest complete.
    let old = leader(&cp);
    assert!(
        pods.iter().any(|p| p.name_any() == old),
        "leader {old:?} is not a pod of the release"
    );
    // Freeze it first (SIGSTOP; the container's processes are the host's):
    // from then on it can neither renew nor hand the Lease over. Then
    // force-delete the pod: the kubelet kills the frozen container and
    // does not restart it, as it could after a plain SIGKILL, when the
    // restarted container might retake its own Lease. So the standby must
    // wait the Lease out.
    let out = std::process::Command::new("pkill")
        .args(["-STOP", "-f", "--", &format!("--identity {old}")])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no process of pod {old}: {}",
        chart::text(&out)
    );
    let frozen = std::time::Instant::now();
    let out = cp.kubectl(&[
        "delete",
        "pod",
        "-n",
        SYSTEM_NS,
        &old,
        "--grace-period=0",
        "--force",
    ]);
    assert!(out.status.success(), "{}", chart::text(&out));
    let new = eventually(Duration::from_secs(90), "another replica leads", || async {
        let now = leader(&cp);
        (!now.is_empty() && now != old).then_some(now)
    })
    .await;
    let takeover = frozen.elapsed();
    println!(
        "leader {old} frozen and deleted; {new} leads {:.1}s later",
        takeover.as_secs_f64()
    );
    // The Lease lasts 15 s from the frozen leader's last renewal, which
    // may have come a renewal period before the freeze: a standby taking
    // over sooner than 10 s did not wait the Lease out.
    assert!(
        takeover >= Duration::from_secs(10),
        "{new} took the Lease {:.1}s after {old} froze, before it ran out",
        takeover.as_secs_f64()
    );
    eventually(
        Duration::from_secs(180),
        "all six Jobs complete",
        || async { (succeeded(&kube).await == 6).then_some(()) },
    )
    .await;
    assert_eq!(leader(&cp), new, "leadership moved again");
    assert!(
        checker.max() <= 2,
        "limit 2 exceeded on pods: {}",
        checker.summary(2)
    );
    assert!(checker.max() >= 1, "no pod was ever seen running");
    println!("{}", checker.summary(2));
    eventually(Duration::from_secs(60), "an empty ledger", || async {
        ledger_holders(&s3, &bucket, "jobgate/batch/etl.json")
            .await
            .filter(|h| h.is_empty())
    })
    .await;

    // helm upgrade to a changed value: the pods roll and come back ready.
    let out = chart::helm(
        &cp,
        &[
            "upgrade",
            RELEASE,
            &chart::chart_dir().display().to_string(),
            "--namespace",
            SYSTEM_NS,
            "--values",
            &values_file.display().to_string(),
            "--set",
            "pollWaiting=1s",
            "--wait",
            "--timeout",
            "4m",
        ],
    );
    assert!(
        out.status.success(),
        "helm upgrade: {}\n{}",
        chart::text(&out),
        logs(&cp)
    );
    let out = cp.kubectl(&[
        "get",
        "deployment",
        "-n",
        SYSTEM_NS,
        "jobgate",
        "-o",
        "json",
    ]);
    let deployment: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let args = deployment["spec"]["template"]["spec"]["containers"][0]["args"].to_string();
    assert!(args.contains("\"--poll-waiting\",\"1s\""), "{args}");
    eventually(
        Duration::from_secs(120),
        "two ready pods after the upgrade",
        || async {
            let pods = controller_pods(&kube).await;
            (pods.len() == 2 && pods.iter().all(ready)).then_some(())
        },
    )
    .await;
    // Still admitting after the upgrade.
    let out = cp.kubectl_stdin(&["create", "-f", "-"], &job("etl-after-upgrade", 1));
    assert!(out.status.success(), "{}", chart::text(&out));
    eventually(
        Duration::from_secs(120),
        "the Job after the upgrade completes",
        || async { (succeeded(&kube).await == 7).then_some(()) },
    )
    .await;

    // helm uninstall leaves only the CRD (which the chart keeps, so that
    // groups survive a reinstall).
    let out = chart::helm(
        &cp,
        &["uninstall", RELEASE, "--namespace", SYSTEM_NS, "--wait"],
    );
    assert!(
        out.status.success(),
        "helm uninstall: {}",
        chart::text(&out)
    );
    eventually(
        Duration::from_secs(60),
        "the controller pods gone",
        || async { controller_pods(&kube).await.is_empty().then_some(()) },
    )
    .await;
    let kinds = "deployments,replicasets,services,serviceaccounts,secrets,configmaps,roles,rolebindings,leases";
    let out = cp.kubectl(&["get", kinds, "-n", SYSTEM_NS, "-l", SELECTOR, "-o", "name"]);
    assert!(out.status.success(), "{}", chart::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "left behind"
    );
    let cluster_kinds = "clusterroles,clusterrolebindings,mutatingwebhookconfigurations";
    let out = cp.kubectl(&["get", cluster_kinds, "-l", SELECTOR, "-o", "name"]);
    assert!(out.status.success(), "{}", chart::text(&out));
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "left behind"
    );
    // Whatever their labels: the webhook's Secret, which the controllers
    // filled, and the leader Lease, which they held, went with the release.
    let out = cp.kubectl(&["get", "secrets,leases", "-n", SYSTEM_NS, "-o", "name"]);
    assert_eq!(
        String::from_utf8_lossy(&out.stdout).trim(),
        "",
        "left behind"
    );
    let out = cp.kubectl(&["get", "crd", "concurrencygroups.jobgate.dev"]);
    assert!(
        out.status.success(),
        "the CRD went too: {}",
        chart::text(&out)
    );
}
