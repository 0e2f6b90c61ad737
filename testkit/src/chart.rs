//! The Helm chart (`charts/jobgate`) installed for real, into a cluster
//! with real nodes: the locally built image, host networking (the test bed
//! has no pod network), the API server and S3 on loopback.

use std::path::PathBuf;
use std::process::{Command, Output};

use crate::SeaweedFs;
use crate::k8s::ControlPlane;
use crate::testbed::{binary, free_port};

/// The chart in this repository.
pub fn chart_dir() -> PathBuf {
    crate::repo_dir().join("charts/jobgate")
}

/// Runs the test bed's helm against `cp`, with its config, cache and data
/// in the cluster's temporary directory, so nothing of the machine's own
/// helm setup leaks in.
pub fn helm(cp: &ControlPlane, args: &[&str]) -> Output {
    let bin = binary("helm").unwrap_or_else(|e| panic!("{e}"));
    let home = cp.dir.path().join("helm");
    Command::new(&bin)
        .args(args)
        .arg(format!("--kubeconfig={}", cp.kubeconfig.display()))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_DATA_HOME", home.join("data"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// What differs between installs.
pub struct Install<'a> {
    pub release: &'a str,
    pub namespace: &'a str,
    pub cluster_name: &'a str,
    pub replicas: u32,
    /// The image reference imported into the nodes (repository:tag).
    pub image: &'a str,
    pub s3: &'a SeaweedFs,
    /// The real node whose replica the API server calls for the webhook:
    /// Kubernetes refuses loopback addresses as a Service's endpoints, so
    /// the chart's `webhook.url` points at that node's address instead.
    pub webhook_node: &'a str,
}

/// The values file for `install`, and the ports chosen: (metrics, webhook).
/// Ports are free ones because every pod shares the host's network.
pub fn values(cp: &ControlPlane, install: &Install) -> (String, u16, u16) {
    let (repository, tag) = install
        .image
        .rsplit_once(':')
        .unwrap_or_else(|| panic!("image {} has no tag", install.image));
    let (metrics, webhook) = (free_port(), free_port());
    let webhook_ip = cp.node_ip(install.webhook_node);
    let mut env = vec![
        // In-cluster configuration: the `kubernetes` Service's ClusterIP
        // leads nowhere without kube-proxy.
        ("KUBERNETES_SERVICE_HOST", "127.0.0.1".to_string()),
        ("KUBERNETES_SERVICE_PORT", cp.apiserver_port().to_string()),
        ("AWS_EC2_METADATA_DISABLED", "true".into()),
    ];
    env.extend(install.s3.env());
    let env: String = env
        .iter()
        .map(|(k, v)| format!("  - name: {k}\n    value: {v:?}\n"))
        .collect();
    let yaml = format!(
        "image:\n  repository: {repository}\n  tag: {tag:?}\n  pullPolicy: Never\n\
         replicaCount: {replicas}\nclusterName: {cluster:?}\nhostNetwork: true\n\
         logLevel: \"info,jobgate=debug\"\nlogFormat: text\n\
         metrics:\n  port: {metrics}\nwebhook:\n  port: {webhook}\n\
         \x20 url: \"https://{webhook_ip}:{webhook}/mutate-jobs\"\n\
         # The test bed's etcd and API server share two cores with everything else.\n\
         resources:\n  requests:\n    cpu: 10m\n    memory: 32Mi\n\
         env:\n{env}",
        replicas = install.replicas,
        cluster = install.cluster_name,
    );
    (yaml, metrics, webhook)
}

/// `helm install --wait` of the chart with [`values`]; returns helm's
/// output and the values file used.
pub fn install(cp: &ControlPlane, install: &Install) -> (Output, PathBuf, u16) {
    let (yaml, metrics, _) = values(cp, install);
    let file = cp
        .dir
        .path()
        .join(format!("values-{}.yaml", install.release));
    std::fs::write(&file, yaml).unwrap();
    let out = helm(
        cp,
        &[
            "install",
            install.release,
            &chart_dir().display().to_string(),
            "--namespace",
            install.namespace,
            "--create-namespace",
            "--values",
            &file.display().to_string(),
            "--wait",
            "--timeout",
            "4m",
        ],
    );
    (out, file, metrics)
}

/// helm's output as one string, for assertion messages.
pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}
