//! The real-node test cluster runs real containers: a Job's pod runs
//! `sleep` in busybox on a kubelet and succeeds, and a pod gets a
//! ServiceAccount token with which it can reach and authenticate to the
//! apiserver. The operator's real-container tests build on exactly this, so
//! it is checked on its own first.

use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::node::BUSYBOX_IMAGE;
use serde_json::Value;
use std::time::Duration;

const NODES: [&str; 2] = ["node-a", "node-b"];

fn text(out: &std::process::Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn apply(cp: &ControlPlane, yaml: &str) {
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], yaml);
    assert!(out.status.success(), "apply: {}", text(&out));
}

fn get(cp: &ControlPlane, what: &[&str]) -> Value {
    let mut args = vec!["get"];
    args.extend_from_slice(what);
    args.extend_from_slice(&["-o", "json"]);
    let out = cp.kubectl(&args);
    serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
}

fn sleep_job(name: &str, node: &str) -> String {
    format!(
        "apiVersion: batch/v1
kind: Job
metadata:
  name: {name}
spec:
  backoffLimit: 0
  template:
    spec:
      restartPolicy: Never
      hostNetwork: true
      nodeSelector:
        kubernetes.io/hostname: {node}
      terminationGracePeriodSeconds: 1
      containers:
      - name: sleep
        image: {BUSYBOX_IMAGE}
        imagePullPolicy: Never
        command: [sleep, '2']
"
    )
}

/// Prints what a pod needs for in-cluster access: the mounted token, CA and
/// namespace. (busybox's wget cannot do the apiserver's TLS, so the test
/// makes the pod's call itself, from the same loopback.)
fn token_pod(port: u16) -> String {
    let dir = "/var/run/secrets/kubernetes.io/serviceaccount";
    format!(
        "apiVersion: v1
kind: Pod
metadata:
  name: token-reader
spec:
  restartPolicy: Never
  hostNetwork: true
  nodeName: node-b
  terminationGracePeriodSeconds: 1
  containers:
  - name: reader
    image: {BUSYBOX_IMAGE}
    imagePullPolicy: Never
    env:
    - {{name: KUBERNETES_SERVICE_HOST, value: '127.0.0.1'}}
    - {{name: KUBERNETES_SERVICE_PORT, value: '{port}'}}
    - name: POD_IP
      valueFrom: {{fieldRef: {{fieldPath: status.podIP}}}}
    command:
    - sh
    - -c
    - |
      echo \"pod-ip=$POD_IP\"
      echo \"namespace=$(cat {dir}/namespace)\"
      echo token=$(cat {dir}/token)
      echo '--- ca.crt'
      cat {dir}/ca.crt
"
    )
}

fn field<'a>(logs: &'a str, key: &str) -> Option<&'a str> {
    logs.lines()
        .find_map(|l| l.strip_prefix(&format!("{key}=")))
}

#[test]
fn real_nodes_run_jobs_and_pods_get_service_account_tokens() {
    let started = std::time::Instant::now();
    let cp = ControlPlane::start_real(&NODES);
    eprintln!(
        "cluster with {} real nodes up in {:?}",
        NODES.len(),
        started.elapsed()
    );
    for node in NODES {
        let n = get(&cp, &["node", node]);
        let addresses = n["status"]["addresses"].to_string();
        assert!(addresses.contains(&cp.node_ip(node)), "{node}: {addresses}");
    }
    cp.wait_default_service_account("default");

    // A Job per node: each node really runs containers.
    for node in NODES {
        apply(&cp, &sleep_job(&format!("sleep-{node}"), node));
    }
    for node in NODES {
        let name = format!("sleep-{node}");
        cp.wait_for(
            &format!("job {name} complete"),
            Duration::from_secs(60),
            |cp| get(cp, &["job", &name])["status"]["succeeded"] == 1,
        );
        let pods = get(&cp, &["pods", "-l", &format!("job-name={name}")]);
        let pod = &pods["items"][0];
        assert_eq!(pod["status"]["phase"], "Succeeded", "{pod}");
        assert_eq!(pod["spec"]["nodeName"], node);
        let state = &pod["status"]["containerStatuses"][0]["state"]["terminated"];
        assert_eq!(state["exitCode"], 0, "{pod}");
        assert_eq!(state["reason"], "Completed", "{pod}");
        // A real run: the container's own start and end, two seconds apart.
        let (start, end) = (
            state["startedAt"].as_str().unwrap(),
            state["finishedAt"].as_str().unwrap(),
        );
        assert!(start < end, "sleep 2 took no time: {start} .. {end}");
    }

    // The pod's token, CA and namespace, read inside the container.
    apply(&cp, &token_pod(cp.apiserver_port()));
    cp.wait_for(
        "pod token-reader Succeeded",
        Duration::from_secs(60),
        |cp| get(cp, &["pod", "token-reader"])["status"]["phase"] == "Succeeded",
    );
    let out = cp.kubectl(&["logs", "token-reader"]);
    assert!(out.status.success(), "kubectl logs: {}", text(&out));
    let logs = String::from_utf8_lossy(&out.stdout).to_string();
    assert_eq!(
        field(&logs, "pod-ip"),
        Some(cp.node_ip("node-b").as_str()),
        "{logs}"
    );
    assert_eq!(field(&logs, "namespace"), Some("default"), "{logs}");
    let token = field(&logs, "token")
        .filter(|t| !t.is_empty())
        .unwrap_or_else(|| panic!("no token in the pod's logs:\n{logs}"));
    let ca = logs
        .split_once("--- ca.crt\n")
        .map(|(_, ca)| ca.to_string())
        .unwrap_or_default();
    assert!(
        ca.contains("BEGIN CERTIFICATE"),
        "no ca.crt in the pod's logs:\n{logs}"
    );

    // What an in-cluster client in a hostNetwork pod does with them: verify
    // the apiserver at 127.0.0.1 with ca.crt and authenticate with the token.
    let ca_file = cp.dir.path().join("pod-ca.crt");
    std::fs::write(&ca_file, &ca).unwrap();
    let username = tokio::runtime::Runtime::new().unwrap().block_on(whoami(
        cp.apiserver_port(),
        &ca_file,
        token,
    ));
    assert_eq!(username, "system:serviceaccount:default:default");
    eprintln!("test done in {:?}", started.elapsed());
}

/// The user the apiserver sees behind `token`, over TLS verified with `ca`.
async fn whoami(port: u16, ca: &std::path::Path, token: &str) -> String {
    use k8s_openapi::api::authentication::v1::SelfSubjectReview;
    let kubeconfig = format!(
        "apiVersion: v1
kind: Config
clusters:
- name: pod
  cluster:
    server: https://127.0.0.1:{port}
    certificate-authority: {}
users:
- name: pod
  user:
    token: {token}
contexts:
- name: pod
  context: {{cluster: pod, user: pod}}
current-context: pod
",
        ca.display()
    );
    let kubeconfig = kube::config::Kubeconfig::from_yaml(&kubeconfig).unwrap();
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .unwrap();
    let client = kube::Client::try_from(config).unwrap();
    let review: SelfSubjectReview = kube::Api::all(client)
        .create(&Default::default(), &SelfSubjectReview::default())
        .await
        .unwrap_or_else(|e| panic!("SelfSubjectReview with the pod's token and CA: {e}"));
    review
        .status
        .and_then(|s| s.user_info)
        .and_then(|u| u.username)
        .unwrap_or_default()
}
