//! A real Kubernetes control plane for tests: etcd and kube-apiserver from
//! the test bed on free loopback ports, with an admin token and a kubeconfig.
//! `start_full` adds kube-controller-manager, kube-scheduler and kwok with
//! fake Nodes, so ordinary Jobs get pods that are scheduled, "run" and
//! succeed. `start_real` runs real containers instead, on real nodes (see
//! [`crate::node`]). Everything is killed and removed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobgate::process::die_with_parent;

use crate::node::Node;
use crate::testbed::{binary, cache_dir, free_port};

/// kwok manages only nodes carrying this annotation (value `fake`), so a
/// test can still add nodes that nothing pretends to run.
pub const FAKE_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// The kwok Stages that make fake nodes Ready (and keep their leases fresh)
/// and take pods straight from Pending to Running and, for pods owned by a
/// Job, on to Succeeded. The "fast" set: no artificial delays.
const KWOK_STAGES: &[&str] = &[
    "node/fast/node-initialize.yaml",
    "node/heartbeat-with-lease/node-heartbeat-with-lease.yaml",
    "pod/fast/pod-ready.yaml",
    "pod/fast/pod-complete.yaml",
    "pod/fast/pod-delete.yaml",
];

/// The controllers the fake cluster needs: Jobs, deletion by owner and of
/// namespaces, and node-lifecycle, which removes the `not-ready` taint that
/// the apiserver's TaintNodesByCondition admission puts on every new node
/// (without it nothing ever schedules). The rest of the default set would
/// cost CPU on a 2-core CI runner for nothing a test here looks at.
const KCM_CONTROLLERS: &str = "job-controller,cronjob-controller,garbage-collector-controller,namespace-controller,node-lifecycle-controller";

/// The controllers a cluster with real nodes needs on top: Deployments, the
/// default ServiceAccount and its token, the `kube-root-ca.crt` ConfigMap
/// pods verify the apiserver with, and Endpoints for webhook Services.
const KCM_REAL_CONTROLLERS: &str = "deployment-controller,replicaset-controller,serviceaccount-controller,serviceaccount-token-controller,root-ca-certificate-publisher-controller,endpoints-controller,endpointslice-controller";

/// The cloud controller's taint that a kubelet with `--cloud-provider=external`
/// registers with; the test plays the cloud controller and removes it.
const UNINITIALIZED_TAINT: &str = "node.cloudprovider.kubernetes.io/uninitialized";

/// How kwok's fake pods behave in a full cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pods {
    /// Running at once, Succeeded at once, gone at once when deleted.
    Fast,
    /// Like real work with a real shutdown: a pod runs for the duration in
    /// its [`RUN_FOR_ANNOTATION`] (for good without it), whoever made it
    /// (a Job, another kind's controller, or a user), and a
    /// pod being deleted stays Terminating until its deletion timestamp, so
    /// it uses its whole `terminationGracePeriodSeconds`.
    Held,
}

/// With [`Pods::Held`]: how long a Job's pod runs (a Go duration, `90s`).
pub const RUN_FOR_ANNOTATION: &str = "jobgate.test/run-for";

/// The [`Pods::Held`] stages that differ from the fast ones. kwok's
/// `durationFrom` takes a duration string, or a time from which it subtracts
/// now: the deletion timestamp is the end of the grace period.
const HELD_POD_COMPLETE: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-complete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'DoesNotExist'
    - key: '.status.phase'
      operator: 'In'
      values: ['Running']
    - key: '.metadata.annotations["jobgate.test/run-for"]'
      operator: 'Exists'
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.annotations["jobgate.test/run-for"]'
  next:
    statusTemplate: |
      {{ $now := Now }}
      containerStatuses:
      {{ range $index, $item := .spec.containers }}
      - image: {{ $item.image | Quote }}
        name: {{ $item.name | Quote }}
        ready: false
        restartCount: 0
        started: false
        state:
          terminated:
            exitCode: 0
            finishedAt: {{ $now | Quote }}
            reason: Completed
            startedAt: {{ $now | Quote }}
      {{ end }}
      phase: Succeeded
"#;

const HELD_POD_DELETE: &str = r#"apiVersion: kwok.x-k8s.io/v1alpha1
kind: Stage
metadata:
  name: pod-delete
spec:
  resourceRef:
    apiGroup: v1
    kind: Pod
  selector:
    matchExpressions:
    - key: '.metadata.deletionTimestamp'
      operator: 'Exists'
  delay:
    durationMilliseconds: 0
    durationFrom:
      expressionFrom: '.metadata.deletionTimestamp'
  next:
    delete: true
"#;

struct Component {
    name: &'static str,
    child: Child,
}

pub struct ControlPlane {
    // A Mutex rather than a plain Vec so waits through `&self` can notice a
    // component that died and report it at once instead of timing out.
    components: Mutex<Vec<Component>>,
    /// Real nodes of [`start_real`](Self::start_real); dropped before the
    /// components.
    nodes: Mutex<Vec<Node>>,
    secure_port: u16,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

/// The user of [`ControlPlane::counted_kubeconfig`].
const COUNTED_USER: &str = "counted";

/// Distinct requests in an audit log (JSON lines of `audit.k8s.io/v1`
/// events).
fn count_audit_ids(log: &str) -> usize {
    log.lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .filter_map(|e| e.get("auditID")?.as_str().map(str::to_string))
        .collect::<std::collections::HashSet<_>>()
        .len()
}

fn tail(text: &str, lines: usize) -> String {
    let mut last: Vec<&str> = text.lines().rev().take(lines).collect();
    last.reverse();
    last.join("\n")
}

impl ControlPlane {
    /// etcd and kube-apiserver only: enough for CRDs and API objects, but
    /// nothing reconciles them.
    pub fn start() -> ControlPlane {
        Self::start_apiserver(false)
    }

    /// `real`: for real nodes, with ServiceAccount admission (pods get a
    /// token volume), webhooks called at their endpoints (there is no
    /// kube-proxy for ClusterIPs) and kubelets reached at their InternalIP
    /// (node host names resolve to nothing).
    fn start_apiserver(real: bool) -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path().to_path_buf();
        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let cp = ControlPlane {
            components: Mutex::new(Vec::new()),
            nodes: Mutex::new(Vec::new()),
            secure_port: secure,
            kubeconfig: d.join("kubeconfig"),
            dir,
        };
        cp.spawn(
            "etcd",
            &[
                "--name=default".into(),
                format!("--data-dir={}", d.join("etcd").display()),
                format!("--listen-client-urls=http://127.0.0.1:{client}"),
                format!("--advertise-client-urls=http://127.0.0.1:{client}"),
                format!("--listen-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-advertise-peer-urls=http://127.0.0.1:{peer}"),
                format!("--initial-cluster=default=http://127.0.0.1:{peer}"),
                "--unsafe-no-fsync".into(),
            ],
        );
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(d.join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(d.join("sa.pub"), key.public_key_pem()).unwrap();
        let token = format!("admin-{:016x}", rand::random::<u64>());
        // A second administrator, `counted`, whose requests (and only
        // whose) the audit log records: a program run with
        // [`counted_kubeconfig`](Self::counted_kubeconfig) has its API
        // requests counted by the API server, whatever client it uses.
        let counted = format!("counted-{:016x}", rand::random::<u64>());
        std::fs::write(
            d.join("tokens.csv"),
            format!(
                "{token},admin,admin,\"system:masters\"\n{counted},{COUNTED_USER},{COUNTED_USER},\"system:masters\"\n"
            ),
        )
        .unwrap();
        std::fs::write(
            d.join("audit-policy.yaml"),
            format!(
                "apiVersion: audit.k8s.io/v1\nkind: Policy\nomitStages: [RequestReceived]\nrules:\n- level: Metadata\n  users: [{COUNTED_USER}]\n- level: None\n"
            ),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("certs")).unwrap();
        let mode_args: Vec<String> = if real {
            vec![
                "--enable-aggregator-routing=true".into(),
                "--kubelet-preferred-address-types=InternalIP".into(),
            ]
        } else {
            vec!["--disable-admission-plugins=ServiceAccount".into()]
        };
        cp.spawn(
            "kube-apiserver",
            &[
                format!("--etcd-servers=http://127.0.0.1:{client}"),
                "--bind-address=127.0.0.1".into(),
                "--advertise-address=127.0.0.1".into(),
                format!("--secure-port={secure}"),
                format!("--cert-dir={}", d.join("certs").display()),
                "--service-cluster-ip-range=10.0.0.0/24".into(),
                "--authorization-mode=RBAC".into(),
                format!("--token-auth-file={}", d.join("tokens.csv").display()),
                format!(
                    "--audit-policy-file={}",
                    d.join("audit-policy.yaml").display()
                ),
                format!("--audit-log-path={}", d.join("audit.log").display()),
                format!("--service-account-issuer=https://127.0.0.1:{secure}"),
                format!("--service-account-key-file={}", d.join("sa.pub").display()),
                format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ),
            ]
            .into_iter()
            .chain(mode_args)
            .collect::<Vec<_>>(),
        );
        let kubeconfig = |token: &str| {
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{secure}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: default\ncurrent-context: test\n"
            )
        };
        std::fs::write(&cp.kubeconfig, kubeconfig(&token)).unwrap();
        std::fs::write(cp.counted_kubeconfig(), kubeconfig(&counted)).unwrap();
        cp.wait_for("kube-apiserver /readyz", Duration::from_secs(120), |cp| {
            cp.kubectl(&["get", "--raw", "/readyz"]).status.success()
        });
        cp
    }

    /// A cluster that runs Jobs: the apiserver of [`start`](Self::start)
    /// plus kube-controller-manager, kube-scheduler and kwok, with one fake
    /// node `kwok-node-0` that is Ready and schedulable on return.
    pub fn start_full() -> ControlPlane {
        Self::start_full_with_nodes(1)
    }

    /// [`start_full`](Self::start_full) with `nodes` fake nodes
    /// `kwok-node-0`, `kwok-node-1`, ...
    pub fn start_full_with_nodes(nodes: usize) -> ControlPlane {
        Self::start_full_with(nodes, Pods::Fast)
    }

    /// A full cluster whose pods behave as [`Pods`] says.
    pub fn start_full_with(nodes: usize, pods: Pods) -> ControlPlane {
        assert!(nodes >= 1, "a full cluster needs a node to run pods on");
        // Fail before starting anything when a piece of the test bed is
        // missing, so the message is about the build, not a timeout.
        for name in ["kube-controller-manager", "kube-scheduler", "kwok"] {
            binary(name).unwrap_or_else(|e| panic!("{e}"));
        }
        let cp = Self::start();
        let stages = match pods {
            Pods::Fast => kwok_stages(),
            Pods::Held => held_stages(cp.dir.path()),
        };
        let kubeconfig = format!("--kubeconfig={}", cp.kubeconfig.display());
        // Secure ports are 0 (no serving at all): nothing binds a port that
        // a parallel test could want, and without serving neither component
        // waits for the apiserver's authentication config on startup.
        cp.spawn(
            "kube-controller-manager",
            &[
                kubeconfig.clone(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!("--controllers={KCM_CONTROLLERS}"),
                // The not-ready taint goes a tick after the node turns Ready.
                "--node-monitor-period=1s".into(),
            ],
        );
        cp.spawn(
            "kube-scheduler",
            &[
                kubeconfig.clone(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
        );
        // No --server-address: kwok's kubelet-like server only serves logs
        // and exec for fake pods, and without it kwok binds no port.
        let mut kwok = vec![
            kubeconfig,
            "--manage-all-nodes=false".into(),
            // Without it kwok keeps no node leases, and node-lifecycle would
            // in time mark the nodes unreachable and taint them.
            "--node-lease-duration-seconds=40".into(),
            format!("--manage-nodes-with-annotation-selector={FAKE_NODE_ANNOTATION}=fake"),
        ];
        kwok.extend(stages.iter().map(|s| format!("--config={}", s.display())));
        cp.spawn("kwok", &kwok);

        let names: Vec<String> = (0..nodes).map(|i| format!("kwok-node-{i}")).collect();
        for name in &names {
            cp.add_fake_node(name);
        }
        for name in &names {
            cp.wait_node_ready(name);
        }
        cp
    }

    /// A cluster with real nodes `names`: kube-controller-manager (with
    /// ServiceAccount tokens and the root CA published), kube-scheduler, and
    /// per node a containerd and a kubelet (see [`crate::node`]). Node `i`
    /// has the address `127.0.0.{i+2}`. On return every node is Ready and
    /// schedulable and has the [`PAUSE_IMAGE`](crate::node::PAUSE_IMAGE) and
    /// [`BUSYBOX_IMAGE`](crate::node::BUSYBOX_IMAGE) images.
    pub fn start_real(names: &[&str]) -> ControlPlane {
        Self::start_real_at(names, 2)
    }

    /// [`start_real`](Self::start_real) with node `i` at
    /// `127.0.0.{first_host + i}`, so that several real clusters on one
    /// machine can run `hostNetwork` pods on the same ports.
    pub fn start_real_at(names: &[&str], first_host: u8) -> ControlPlane {
        assert!(
            !names.is_empty() && first_host >= 2 && usize::from(first_host) + names.len() <= 255,
            "1 or more nodes at 127.0.0.2 to 127.0.0.254"
        );
        for name in ["kube-controller-manager", "kube-scheduler"] {
            binary(name).unwrap_or_else(|e| panic!("{e}"));
        }
        crate::node::kubelet_binary();
        let cp = Self::start_apiserver(true);
        let d = cp.dir.path().to_path_buf();
        let kubeconfig = format!("--kubeconfig={}", cp.kubeconfig.display());
        cp.spawn(
            "kube-controller-manager",
            &[
                kubeconfig.clone(),
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
                format!("--controllers={KCM_CONTROLLERS},{KCM_REAL_CONTROLLERS}"),
                "--node-monitor-period=1s".into(),
                // The apiserver's self-signed serving certificate comes with
                // the CA that signed it: what pods must trust.
                format!("--root-ca-file={}", d.join("certs/apiserver.crt").display()),
                format!(
                    "--service-account-private-key-file={}",
                    d.join("sa.key").display()
                ),
            ],
        );
        cp.spawn(
            "kube-scheduler",
            &[
                kubeconfig,
                "--leader-elect=false".into(),
                "--secure-port=0".into(),
            ],
        );
        let images = crate::node::build_base_images(&d.join("images"));
        for (i, name) in names.iter().enumerate() {
            let ip = format!("127.0.0.{}", usize::from(first_host) + i);
            let node = Node::start(name, &ip, &d.join("nodes").join(name), &cp.kubeconfig);
            for image in &images {
                node.import_image(image);
            }
            cp.nodes
                .lock()
                .unwrap_or_else(|e| e.into_inner())
                .push(node);
        }
        for (i, name) in names.iter().enumerate() {
            cp.initialize_node(name, &format!("127.0.0.{}", usize::from(first_host) + i));
        }
        for name in names {
            cp.wait_node_ready(name);
        }
        cp
    }

    /// What a cloud controller does for a kubelet with
    /// `--cloud-provider=external`, which the real nodes need because the
    /// kubelet refuses a loopback `--node-ip`: sets the node's addresses
    /// (the kubelet keeps addresses it finds) and removes the
    /// uninitialized taint.
    fn initialize_node(&self, name: &str, ip: &str) {
        self.wait_for(
            &format!("node {name} registered"),
            Duration::from_secs(60),
            |cp| cp.kubectl(&["get", "node", name]).status.success(),
        );
        let patch = format!(
            r#"{{"status":{{"addresses":[{{"type":"InternalIP","address":"{ip}"}},{{"type":"Hostname","address":"{name}"}}]}}}}"#
        );
        self.wait_for(
            &format!("node {name} addressed"),
            Duration::from_secs(30),
            |cp| {
                cp.kubectl(&[
                    "patch",
                    "node",
                    name,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    &patch,
                ])
                .status
                .success()
            },
        );
        self.wait_for(
            &format!("node {name} without the uninitialized taint"),
            Duration::from_secs(30),
            |cp| {
                let Some(node) = cp.node_json(name) else {
                    return false;
                };
                let tainted = node["spec"]["taints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["key"] == UNINITIALIZED_TAINT);
                if !tainted {
                    return true;
                }
                let taint = format!("{UNINITIALIZED_TAINT}-");
                cp.kubectl(&["taint", "node", name, &taint]);
                false
            },
        );
    }

    /// A kubeconfig like [`kubeconfig`](Self::kubeconfig) whose requests
    /// the API server counts: see [`counted_requests`](Self::counted_requests).
    pub fn counted_kubeconfig(&self) -> PathBuf {
        self.dir.path().join("counted.kubeconfig")
    }

    /// How many API requests programs using
    /// [`counted_kubeconfig`](Self::counted_kubeconfig) have made so far,
    /// from the API server's audit log: one per audit ID (a watch has two
    /// events, when its response starts and when it ends). A request still
    /// being handled may not be in it yet.
    pub fn counted_requests(&self) -> usize {
        let text = std::fs::read_to_string(self.dir.path().join("audit.log")).unwrap_or_default();
        count_audit_ids(&text)
    }

    /// A kubeconfig like [`kubeconfig`](Self::kubeconfig) that reaches the
    /// API server at `port` on 127.0.0.1 (a proxy in front of it), written
    /// as `name` in the control plane's directory.
    pub fn kubeconfig_via(&self, port: u16, name: &str) -> PathBuf {
        let text = std::fs::read_to_string(&self.kubeconfig).unwrap();
        let server = format!("server: https://127.0.0.1:{}", self.secure_port);
        assert!(text.contains(&server), "{text}");
        let path = self.dir.path().join(name);
        std::fs::write(
            &path,
            text.replace(&server, &format!("server: https://127.0.0.1:{port}")),
        )
        .unwrap();
        path
    }

    /// The apiserver's port on 127.0.0.1. Pods on real nodes reach it there
    /// (they share the host's loopback) with `KUBERNETES_SERVICE_HOST` set to
    /// `127.0.0.1` and `KUBERNETES_SERVICE_PORT` to this: the `kubernetes`
    /// Service's ClusterIP leads nowhere without kube-proxy.
    pub fn apiserver_port(&self) -> u16 {
        self.secure_port
    }

    /// The address of real node `name` (its InternalIP).
    pub fn node_ip(&self, name: &str) -> String {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        nodes
            .iter()
            .find(|n| n.name == name)
            .unwrap_or_else(|| panic!("no real node {name}"))
            .ip
            .clone()
    }

    /// Imports an image archive (from `scripts/image.sh`) into every real
    /// node.
    pub fn import_image(&self, archive: &std::path::Path) {
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        assert!(!nodes.is_empty(), "no real nodes to import images into");
        for node in nodes.iter() {
            node.import_image(archive);
        }
    }

    /// Builds an image of the jobgate binary `bin` named `reference` and
    /// imports it into every real node.
    pub fn import_jobgate_image(&self, bin: &std::path::Path, reference: &str) {
        let archive =
            crate::node::build_jobgate_image(&self.dir.path().join("images"), bin, reference);
        self.import_image(&archive);
    }

    /// Waits for the ServiceAccount `default` of `namespace`: with
    /// ServiceAccount admission (real nodes) pods are refused until it
    /// exists.
    pub fn wait_default_service_account(&self, namespace: &str) {
        self.wait_for(
            &format!("ServiceAccount default in {namespace}"),
            Duration::from_secs(30),
            |cp| {
                cp.kubectl(&["get", "serviceaccount", "default", "-n", namespace])
                    .status
                    .success()
            },
        );
    }

    /// Creates a Node that kwok manages: 32 CPUs, 256Gi and 110 pods, so
    /// resource requests in tests never decide where (or whether) a pod
    /// goes. Needs the full mode to become Ready.
    pub fn add_fake_node(&self, name: &str) {
        let node = format!(
            "apiVersion: v1
kind: Node
metadata:
  name: {name}
  annotations:
    {FAKE_NODE_ANNOTATION}: fake
    node.alpha.kubernetes.io/ttl: \"0\"
  labels:
    kubernetes.io/hostname: {name}
    kubernetes.io/os: linux
    kubernetes.io/arch: amd64
    type: kwok
status:
  allocatable: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}
  capacity: {{cpu: \"32\", memory: 256Gi, pods: \"110\"}}
"
        );
        let out = self.kubectl_stdin(&["apply", "-f", "-"], &node);
        assert!(
            out.status.success(),
            "creating node {name}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Node `name` as JSON, if it can be read.
    fn node_json(&self, name: &str) -> Option<serde_json::Value> {
        let out = self.kubectl(&["get", "node", name, "-o", "json"]);
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Waits until node `name` is Ready, not cordoned and has no taint that
    /// keeps ordinary pods off it.
    pub fn wait_node_ready(&self, name: &str) {
        self.wait_for(
            &format!("node {name} Ready and schedulable"),
            Duration::from_secs(60),
            |cp| {
                let Some(node) = cp.node_json(name) else {
                    return false;
                };
                let ready = node["status"]["conditions"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|c| c["type"] == "Ready" && c["status"] == "True");
                let tainted = node["spec"]["taints"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .any(|t| t["effect"] == "NoSchedule" || t["effect"] == "NoExecute");
                ready && !tainted && node["spec"]["unschedulable"] != true
            },
        );
    }

    /// Polls `check` every 200 ms until it holds. Panics at once if a
    /// component has exited, and after `timeout` with the cluster's nodes,
    /// jobs and pods and the tails of the component logs.
    pub fn wait_for(&self, what: &str, timeout: Duration, mut check: impl FnMut(&Self) -> bool) {
        let deadline = Instant::now() + timeout;
        loop {
            if check(self) {
                return;
            }
            self.assert_alive();
            if Instant::now() > deadline {
                panic!(
                    "timed out after {timeout:?} waiting for {what}\n{}",
                    self.diagnostics()
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    /// Panics with its log if a component has exited.
    pub fn assert_alive(&self) {
        let mut dead = None;
        {
            let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
            for c in components.iter_mut() {
                if let Ok(Some(status)) = c.child.try_wait() {
                    dead = Some((c.name, status));
                    break;
                }
            }
        }
        // Outside the lock: a panic while holding it would poison it for
        // Drop.
        if let Some((name, status)) = dead {
            panic!("{name} exited ({status}):\n{}", self.log_tail(name, 40));
        }
        let mut nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        let dead_node = nodes.iter_mut().find_map(|n| n.check_alive().err());
        drop(nodes);
        if let Some(e) = dead_node {
            panic!("{e}");
        }
    }

    /// The last `lines` lines of a component's log (`"kwok"`,
    /// `"kube-scheduler"`, ...).
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let path = self.dir.path().join(format!("{component}.log"));
        tail(&std::fs::read_to_string(path).unwrap_or_default(), lines)
    }

    fn diagnostics(&self) -> String {
        let mut report = String::new();
        let state = self.kubectl(&["get", "nodes,jobs,pods", "-A", "-o", "wide"]);
        if state.status.success() {
            report += &format!("{}\n", String::from_utf8_lossy(&state.stdout));
        }
        let names: Vec<&'static str> = {
            let components = self.components.lock().unwrap_or_else(|e| e.into_inner());
            components.iter().map(|c| c.name).collect()
        };
        for name in names.into_iter().filter(|n| *n != "etcd") {
            report += &format!("--- {name} log ---\n{}\n", self.log_tail(name, 20));
        }
        let nodes = self.nodes.lock().unwrap_or_else(|e| e.into_inner());
        for node in nodes.iter() {
            for component in ["kubelet", "containerd"] {
                report += &format!(
                    "--- {component} of {} log ---\n{}\n",
                    node.name,
                    node.log_tail(component, 20)
                );
            }
        }
        report
    }

    fn spawn(&self, name: &'static str, args: &[String]) {
        let bin = binary(name).unwrap_or_else(|e| panic!("{e}"));
        let log = self.dir.path().join(format!("{name}.log"));
        let out = std::fs::File::create(log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(bin);
        cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name}: {e}"));
        self.components
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .push(Component { name, child });
    }

    /// Freezes (SIGSTOP) or thaws (SIGCONT) a component, e.g. the
    /// kube-apiserver: while frozen its clients' requests hang, as in an
    /// outage or a network partition, and nothing is lost.
    pub fn freeze(&self, name: &str, frozen: bool) {
        use nix::sys::signal::{Signal, kill};
        let components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        let c = components
            .iter()
            .find(|c| c.name == name)
            .unwrap_or_else(|| panic!("no component {name}"));
        let pid = nix::unistd::Pid::from_raw(c.child.id() as i32);
        let signal = if frozen {
            Signal::SIGSTOP
        } else {
            Signal::SIGCONT
        };
        kill(pid, signal).unwrap_or_else(|e| panic!("{signal} to {name}: {e}"));
    }

    pub fn kubectl(&self, args: &[&str]) -> Output {
        let bin = binary("kubectl").unwrap_or_else(|e| panic!("{e}"));
        Command::new(bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    /// The Events of namespace `ns` that the field selector `selector`
    /// picks, a line each: reason and message (under a header line).
    pub fn events(&self, ns: &str, selector: &str) -> String {
        let out = self.kubectl(&[
            "get",
            "events",
            "-n",
            ns,
            "--field-selector",
            selector,
            "-o",
            "custom-columns=REASON:.reason,MESSAGE:.message",
        ]);
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl that must succeed: its standard output, or a panic with its
    /// standard error.
    pub fn kubectl_ok(&self, args: &[&str]) -> String {
        let out = self.kubectl(args);
        assert!(
            out.status.success(),
            "kubectl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// kubectl with YAML on standard input.
    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> Output {
        use std::io::Write;
        let bin = binary("kubectl").unwrap_or_else(|e| panic!("{e}"));
        let mut child = Command::new(bin)
            .arg(format!("--kubeconfig={}", self.kubeconfig.display()))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        child
            .stdin
            .take()
            .unwrap()
            .write_all(input.as_bytes())
            .unwrap();
        child.wait_with_output().unwrap()
    }
}

/// The kwok Stage files copied into the test-bed cache by
/// `scripts/testbed.sh kwok`.
/// The fast node and pod-ready stages from the test bed, with the held
/// pod-complete and pod-delete stages written into `dir`.
fn held_stages(dir: &std::path::Path) -> Vec<PathBuf> {
    let mut stages: Vec<PathBuf> = kwok_stages()
        .into_iter()
        .filter(|p| !p.ends_with("pod-complete.yaml") && !p.ends_with("pod-delete.yaml"))
        .collect();
    for (name, text) in [
        ("held-pod-complete.yaml", HELD_POD_COMPLETE),
        ("held-pod-delete.yaml", HELD_POD_DELETE),
    ] {
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        stages.push(path);
    }
    stages
}

fn kwok_stages() -> Vec<PathBuf> {
    let root = cache_dir().join("kwok-stages");
    KWOK_STAGES
        .iter()
        .map(|stage| {
            let path = root.join(stage);
            assert!(
                path.is_file(),
                "kwok stage {} not found: build the test bed with `scripts/testbed.sh kwok` (or `make testbed`)",
                path.display()
            );
            path
        })
        .collect()
}

impl ControlPlane {
    /// Stops every component and node. What `drop` does, through `&self`,
    /// for a control plane shared until the process exits (see
    /// `crate::shared`); the directory goes when it is dropped, or with
    /// `remove_dir`.
    pub fn stop(&self) {
        // Nodes first: their kubelets talk to the apiserver, and their
        // containers must go while containerd can still stop them.
        self.nodes.lock().unwrap_or_else(|e| e.into_inner()).clear();
        let mut components = self.components.lock().unwrap_or_else(|e| e.into_inner());
        // Newest first: controllers go before the apiserver they talk to,
        // the apiserver before etcd.
        for c in components.iter_mut().rev() {
            let _ = c.child.kill();
            let _ = c.child.wait();
        }
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::count_audit_ids;

    #[test]
    fn a_watch_logged_when_it_starts_and_ends_counts_once() {
        let log = r#"{"kind":"Event","auditID":"a","stage":"ResponseStarted","verb":"watch"}
{"kind":"Event","auditID":"b","stage":"ResponseComplete","verb":"list"}
{"kind":"Event","auditID":"a","stage":"ResponseComplete","verb":"watch"}
{"kind":"Event","auditID":"c","stage":"ResponseComplete","verb":"patch"}
not json
"#;
        assert_eq!(count_audit_ids(log), 3);
        assert_eq!(count_audit_ids(""), 0);
    }
}
