//! Workload controllers other than Kubernetes' own Job controller, each run
//! outside the cluster as a process beside a [`ControlPlane`] (as
//! [`crate::kueue`] runs Kueue): JobSet, Argo Workflows' workflow-controller
//! and KubeRay's ray-operator. `scripts/testbed.sh workloads` builds them
//! (pinned from the Go module proxy) and copies their CRDs into the
//! test-bed cache; a missing one fails with the command that builds it.
//!
//! Each `start` applies the controller's CRDs server-side, waits until
//! they are Established, starts the controller with the control plane's
//! admin kubeconfig and waits until it is ready, and then until
//! kube-controller-manager's garbage collector follows the new kinds (up
//! to 30 s; see `wait_garbage_collector_follows`), so that deleting an
//! object deletes what it owns, as in a cluster where the CRDs were
//! installed long before. The returned [`Handle`] kills the process when
//! dropped. What each controller needs outside a pod is written where it
//! is set; what all of them share:
//!
//! * leader election is off: one process, no Lease to wait for;
//! * every port a controller can be told about is a free one on 127.0.0.1
//!   ([`free_port`]), so tests can run side by side; where a controller
//!   binds a port it cannot be told about, that is said at its `start`;
//! * no webhook is registered with the API server. A controller whose
//!   manager insists on serving its webhooks gets a self-signed certificate
//!   and serves them on loopback, unused; objects must then be created in
//!   the form its defaulting webhook would have left them (see
//!   [`jobset`]).
//!
//! Under kwok nothing runs in a pod: kwok's stages take pods to Running,
//! and only pods that a Job owns on to Succeeded (see
//! [`crate::k8s::Pods`]). Pods of other owners (an Argo Workflow, a
//! RayCluster) stay Running until they are deleted, or until a test plays
//! the node for them ([`argo::finish_pod`]). Nothing answers `pods/exec`
//! or a pod's IP either.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use jobgate::process::die_with_parent;

use crate::k8s::ControlPlane;
use crate::kueue::{http_get, write_certificate};
use crate::testbed::{self, free_port};

/// A workload controller's process; killed on drop.
pub struct Handle {
    name: &'static str,
    child: Mutex<Child>,
    /// Its standard output and error.
    pub log: PathBuf,
}

impl Handle {
    pub fn pid(&self) -> u32 {
        self.child.lock().unwrap_or_else(|e| e.into_inner()).id()
    }

    /// What it has logged so far.
    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// The last `lines` lines of its log.
    pub fn log_tail(&self, lines: usize) -> String {
        let text = self.log_text();
        let mut last: Vec<&str> = text.lines().rev().take(lines).collect();
        last.reverse();
        last.join("\n")
    }

    /// Panics with its log if the process has exited.
    pub fn assert_alive(&self) {
        let status = self
            .child
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .try_wait();
        if let Ok(Some(status)) = status {
            panic!("{} exited ({status}):\n{}", self.name, self.log_tail(60));
        }
    }

    /// Polls `ready` every 200 ms for up to `timeout`; panics with the log
    /// if the process exits first or time runs out.
    fn wait_ready(&self, timeout: Duration, mut ready: impl FnMut(&Self) -> bool) {
        let start = Instant::now();
        loop {
            if ready(self) {
                return;
            }
            self.assert_alive();
            if start.elapsed() > timeout {
                panic!(
                    "{} not ready after {timeout:?}:\n{}",
                    self.name,
                    self.log_tail(60)
                );
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

impl Drop for Handle {
    fn drop(&mut self) {
        let child = self.child.get_mut().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
    }
}

/// The directory `$CACHE/<name>-crds` that `scripts/testbed.sh <target>`
/// fills, or a panic naming that command.
fn crd_dir(name: &str, target: &str) -> PathBuf {
    let dir = testbed::cache_dir().join(format!("{name}-crds"));
    let has_yaml = std::fs::read_dir(&dir)
        .map(|entries| {
            entries
                .flatten()
                .any(|e| e.path().extension().is_some_and(|x| x == "yaml"))
        })
        .unwrap_or(false);
    assert!(
        has_yaml,
        "test-bed CRDs not found in {}: build them with `{} {target}` (or `make testbed`)",
        dir.display(),
        testbed::BUILD_COMMAND
    );
    dir
}

/// Applies every CRD in `dir` server-side (Argo's full CRDs are far over
/// the size of the annotation a client-side apply writes) and waits until
/// each is Established.
pub(crate) fn apply_crds(cp: &ControlPlane, dir: &Path) {
    let out = cp.kubectl_ok(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-o",
        "name",
        "-f",
        &dir.display().to_string(),
    ]);
    let names: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    assert!(!names.is_empty(), "no CRDs in {}", dir.display());
    for name in names {
        // A CRD just created has no conditions yet, which kubectl wait
        // reports as an error rather than waiting for.
        let start = Instant::now();
        while !cp
            .kubectl(&["wait", "--for=condition=Established", "--timeout=10s", name])
            .status
            .success()
        {
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "{name} not established after 60 s"
            );
            std::thread::sleep(Duration::from_millis(500));
        }
    }
}

/// Waits until kube-controller-manager's garbage collector follows objects
/// of `kind` (in `api_version`, namespaced), as it would in a cluster where
/// the CRD was installed long before. The garbage collector learns new
/// kinds from API discovery only every 30 s; until then it cannot delete
/// the dependents of such an object when the object goes (a RayCluster's
/// pods, say, once a suspended RayJob deletes the RayCluster), and its
/// retries back off so far that they can come a minute later still.
///
/// The probe: a ConfigMap owned by a `kind` that does not exist, which the
/// garbage collector deletes as soon as it can look the owner up. A new
/// probe every 2 s, so the one that shows it is not held back by earlier
/// failures. Takes up to 30 s after the CRD is established.
fn wait_garbage_collector_follows(cp: &ControlPlane, api_version: &str, kind: &str) {
    let label = format!("jobgate.test/gc-probe={}", kind.to_lowercase());
    let start = Instant::now();
    for n in 0.. {
        let name = format!("gc-probe-{}-{n}", kind.to_lowercase());
        let uid = format!(
            "{:08x}-{:04x}-4{:03x}-8{:03x}-{:012x}",
            rand::random::<u32>(),
            rand::random::<u16>(),
            rand::random::<u16>() & 0xfff,
            rand::random::<u16>() & 0xfff,
            rand::random::<u64>() & 0xffff_ffff_ffff
        );
        let probe = format!(
            r#"apiVersion: v1
kind: ConfigMap
metadata:
  name: {name}
  namespace: default
  labels: {{jobgate.test/gc-probe: {lower}}}
  ownerReferences:
  - {{apiVersion: {api_version}, kind: {kind}, name: gc-probe-owner, uid: {uid}}}
"#,
            lower = kind.to_lowercase()
        );
        let created = cp.kubectl_stdin(&["create", "-f", "-"], &probe);
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let round = Instant::now();
        while round.elapsed() < Duration::from_secs(2) {
            let out = cp.kubectl(&["get", "configmap", &name, "-n", "default", "-o", "name"]);
            if !out.status.success() && String::from_utf8_lossy(&out.stderr).contains("NotFound") {
                cp.kubectl_ok(&[
                    "delete",
                    "configmap",
                    "-n",
                    "default",
                    "-l",
                    &label,
                    "--ignore-not-found",
                    "--wait=false",
                ]);
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        assert!(
            start.elapsed() < Duration::from_secs(90),
            "kube-controller-manager's garbage collector does not follow {kind}.{api_version} after 90 s:\n{}",
            cp.log_tail("kube-controller-manager", 20)
        );
    }
}

/// Starts test-bed binary `bin` with `args` and `env`, its output in
/// `<control plane dir>/<name>/<name>.log`. Panics with the build command
/// when the binary is missing.
fn spawn(
    cp: &ControlPlane,
    name: &'static str,
    bin: &str,
    args: &[String],
    env: &[(&str, String)],
) -> Handle {
    let bin = testbed::binary(bin).unwrap_or_else(|e| panic!("{e}"));
    let dir = work_dir(cp, name);
    let log = dir.join(format!("{name}.log"));
    let out = std::fs::File::create(&log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(args)
        .env_remove("KUBECONFIG")
        .envs(env.iter().map(|(k, v)| (k, v)))
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(out)
        .stderr(err);
    die_with_parent(&mut cmd);
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Handle {
        name,
        child: Mutex::new(child),
        log,
    }
}

/// `<control plane dir>/<name>`, created.
fn work_dir(cp: &ControlPlane, name: &str) -> PathBuf {
    let dir = cp.dir.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// Whether a controller-runtime health endpoint answers 200.
fn healthy(port: u16, path: &str) -> bool {
    http_get(port, path)
        .is_some_and(|r| r.starts_with("HTTP/1.0 200") || r.starts_with("HTTP/1.1 200"))
}

/// JobSet (`sigs.k8s.io/jobset`): a JobSet runs replicated Jobs, which
/// Kubernetes' Job controller runs as pods.
pub mod jobset {
    use super::*;

    /// What `scripts/testbed.sh jobset` builds (`JOBSET_VERSION`).
    pub const VERSION: &str = "v0.11.1";

    /// The label every pod of a JobSet carries with the JobSet's name
    /// (JobSet puts it on each child Job's pod template).
    pub const NAME_LABEL: &str = "jobset.sigs.k8s.io/jobset-name";

    /// The label every pod of a JobSet carries with the JobSet's UID.
    pub const UID_LABEL: &str = "jobset.sigs.k8s.io/jobset-uid";

    /// Starts JobSet's controller against `cp`, with its CRD.
    ///
    /// Its configuration file turns off leader election and its internal
    /// certificate management, which would otherwise write the webhook
    /// certificate into a Secret in its own namespace (read from the
    /// service-account files of a pod) and patch the webhook
    /// configurations that a kustomize install creates; there are none
    /// here. Its manager still registers its webhooks, and its readiness
    /// check waits for the webhook server, so the server gets a
    /// self-signed certificate and a free loopback port, and nothing calls
    /// it. The metrics server (HTTPS, checked against the API server's
    /// TokenReview) gets the same certificate rather than the default
    /// directory `/tmp/k8s-metrics-server/serving-certs`, which would be
    /// shared by every test.
    ///
    /// Without the defaulting webhook, a JobSet must be created as the
    /// webhook would leave it, or the controller dereferences what it
    /// expects to be set: `spec.successPolicy` (the webhook sets
    /// `{operator: All}`), `spec.startupPolicy`
    /// (`{startupPolicyOrder: AnyOrder}`), `spec.network`
    /// (`{enableDNSHostnames: true, publishNotReadyAddresses: true}`), and
    /// in each replicated Job `completionMode: Indexed` and the pod
    /// template's `restartPolicy` (`OnFailure`).
    pub fn start(cp: &ControlPlane) -> Handle {
        let crds = crd_dir("jobset", "jobset");
        // Before anything else, so a missing binary names its build.
        testbed::binary("jobset").unwrap_or_else(|e| panic!("{e}"));
        apply_crds(cp, &crds);
        let dir = work_dir(cp, "jobset");
        let certs = dir.join("certs");
        write_certificate(&certs);
        let (webhook, health, metrics) = (free_port(), free_port(), free_port());
        let config = format!(
            r#"apiVersion: config.jobset.x-k8s.io/v1alpha1
kind: Configuration
leaderElection:
  leaderElect: false
internalCertManagement:
  enable: false
webhook:
  host: 127.0.0.1
  port: {webhook}
  certDir: {certs}
metrics:
  bindAddress: 127.0.0.1:{metrics}
  certDir: {certs}
health:
  healthProbeBindAddress: 127.0.0.1:{health}
"#,
            certs = certs.display()
        );
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let handle = spawn(
            cp,
            "jobset",
            "jobset",
            &[
                format!("--config={}", config_path.display()),
                format!("--kubeconfig={}", cp.kubeconfig.display()),
            ],
            &[],
        );
        // readyz: the controllers are set up and the webhook server is
        // listening (its certificate loaded).
        handle.wait_ready(Duration::from_secs(60), |_| healthy(health, "/readyz"));
        // Its Jobs and Service are owned by their JobSet.
        wait_garbage_collector_follows(cp, "jobset.x-k8s.io/v1alpha2", "JobSet");
        handle
    }
}

/// Argo Workflows' workflow-controller: a Workflow runs its steps as pods
/// it creates itself (no Job in between). v4.0.5 has open security
/// advisories: it is only ever run against a loopback control plane.
pub mod argo {
    use super::*;

    /// What `scripts/testbed.sh argo` builds (`ARGO_VERSION`).
    pub const VERSION: &str = "v4.0.5";

    /// The namespace the controller is "installed" in: where it reads its
    /// ConfigMap [`CONFIG_MAP`].
    pub const NAMESPACE: &str = "argo";

    /// The controller's configuration, which it must find at start.
    pub const CONFIG_MAP: &str = "workflow-controller-configmap";

    /// The label every pod of a Workflow carries with the Workflow's name.
    pub const WORKFLOW_LABEL: &str = "workflows.argoproj.io/workflow";

    /// The annotation with which each pod names its node of the Workflow
    /// (the node's ID, which is also its WorkflowTaskResult's name).
    pub const NODE_ID_ANNOTATION: &str = "workflows.argoproj.io/node-id";

    /// Starts the workflow-controller against `cp`, with its full CRDs
    /// (all eight, with schemas, as a real installation has them).
    ///
    /// Settings, and why:
    /// * `LEADER_ELECTION_DISABLE=true`: its only switch for leader
    ///   election (else it requires `LEADER_ELECTION_IDENTITY` and takes a
    ///   Lease).
    /// * `--namespace argo`: where its ConfigMap is; in a pod it is the
    ///   pod's namespace. The ConfigMap must exist before it starts (it
    ///   exits without it) and is created here. It watches Workflows in
    ///   all namespaces.
    /// * `metricsConfig.enabled: false`: its metrics server binds
    ///   `:<port>` on every interface (no host can be configured) and
    ///   panics if the port is taken (9090 by default); a loopback test bed
    ///   has no business opening it.
    /// * It always serves `/healthz` on `:6060`, on every interface; the
    ///   port is hard-coded. A second controller on the machine cannot bind
    ///   it and only logs that, so readiness is taken from the log (the
    ///   first Workflow reconciliation loop starts after its informers
    ///   sync), not from that port.
    /// * `--executor-image`: never pulled under kwok; named so the pods
    ///   carry the release's executor and not an unpinned `latest`.
    /// * `DEFAULT_REQUEUE_TIME=1s`, as upstream's own end-to-end tests run
    ///   it: a Workflow is looked at again at most this often after a
    ///   change (a step's pod ending, a resume), 10 s by default. A test
    ///   that times Argo should know that production steps in 10 s.
    ///
    /// A container template must give `command`: without it the controller
    /// looks up the image's entrypoint in its registry, and a loopback test
    /// bed reaches no registry.
    pub fn start(cp: &ControlPlane) -> Handle {
        let crds = crd_dir("argo", "argo");
        testbed::binary("workflow-controller").unwrap_or_else(|e| panic!("{e}"));
        apply_crds(cp, &crds);
        let config = format!(
            r#"apiVersion: v1
kind: Namespace
metadata: {{name: {NAMESPACE}}}
---
apiVersion: v1
kind: ConfigMap
metadata:
  name: {CONFIG_MAP}
  namespace: {NAMESPACE}
data:
  config: |
    metricsConfig:
      enabled: false
"#
        );
        let applied = cp.kubectl_stdin(&["apply", "-f", "-"], &config);
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
        let handle = spawn(
            cp,
            "workflow-controller",
            "workflow-controller",
            &[
                format!("--kubeconfig={}", cp.kubeconfig.display()),
                format!("--namespace={NAMESPACE}"),
                format!("--configmap={CONFIG_MAP}"),
                format!("--executor-image=quay.io/argoproj/argoexec:{VERSION}"),
            ],
            &[
                ("LEADER_ELECTION_DISABLE", "true".into()),
                ("DEFAULT_REQUEUE_TIME", "1s".into()),
            ],
        );
        handle.wait_ready(Duration::from_secs(60), |h| {
            h.log_text().contains("Starting workflow garbage collector")
        });
        // Its pods are owned by their Workflow.
        wait_garbage_collector_follows(cp, "argoproj.io/v1alpha1", "Workflow");
        handle
    }

    /// Plays what a real node does for an Argo pod whose containers exit 0,
    /// which kwok does not (it completes only pods a Job owns): the pod's
    /// `wait` container (argoexec) reports the step's outputs as a
    /// WorkflowTaskResult named by the node's ID and labelled complete,
    /// and the kubelet then reports every container terminated with exit
    /// code 0 and the pod Succeeded. Without the task result the
    /// controller never counts the step as done (v3.5 and later wait for
    /// it), so the Workflow stays Running.
    pub fn finish_pod(cp: &ControlPlane, ns: &str, pod: &str) {
        let json = cp.kubectl_ok(&["get", "pod", pod, "-n", ns, "-o", "json"]);
        let pod_json: serde_json::Value = serde_json::from_str(&json).unwrap();
        let workflow = pod_json["metadata"]["labels"][WORKFLOW_LABEL]
            .as_str()
            .unwrap_or_else(|| panic!("pod {pod} has no {WORKFLOW_LABEL} label"));
        let node_id = pod_json["metadata"]["annotations"][NODE_ID_ANNOTATION]
            .as_str()
            .unwrap_or_else(|| panic!("pod {pod} has no {NODE_ID_ANNOTATION} annotation"));
        let owner = pod_json["metadata"]["ownerReferences"]
            .as_array()
            .into_iter()
            .flatten()
            .find(|o| o["kind"] == "Workflow")
            .unwrap_or_else(|| panic!("pod {pod} has no Workflow owner"));
        let uid = owner["uid"].as_str().unwrap();
        let result = format!(
            r#"apiVersion: argoproj.io/v1alpha1
kind: WorkflowTaskResult
metadata:
  name: {node_id}
  namespace: {ns}
  labels:
    {WORKFLOW_LABEL}: {workflow}
    workflows.argoproj.io/report-outputs-completed: "true"
  ownerReferences:
  - apiVersion: argoproj.io/v1alpha1
    kind: Workflow
    name: {workflow}
    uid: {uid}
"#
        );
        let created = cp.kubectl_stdin(&["apply", "-f", "-"], &result);
        assert!(
            created.status.success(),
            "{}",
            String::from_utf8_lossy(&created.stderr)
        );
        let now = humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string();
        let terminated = |c: &serde_json::Value| {
            serde_json::json!({
                "name": c["name"],
                "image": c["image"],
                "ready": false,
                "restartCount": 0,
                "started": false,
                "state": {"terminated": {
                    "exitCode": 0, "reason": "Completed",
                    "startedAt": now, "finishedAt": now,
                }},
            })
        };
        let containers: Vec<_> = pod_json["spec"]["containers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(terminated)
            .collect();
        let init: Vec<_> = pod_json["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .map(terminated)
            .collect();
        let patch = serde_json::json!({"status": {
            "phase": "Succeeded",
            "containerStatuses": containers,
            "initContainerStatuses": init,
            "conditions": [
                {"type": "Ready", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "ContainersReady", "status": "False", "reason": "PodCompleted", "lastTransitionTime": now},
                {"type": "Initialized", "status": "True", "reason": "PodCompleted", "lastTransitionTime": now},
            ],
        }});
        cp.kubectl_ok(&[
            "patch",
            "pod",
            pod,
            "-n",
            ns,
            "--subresource=status",
            "--type=merge",
            "-p",
            &patch.to_string(),
        ]);
    }
}

/// KubeRay's ray-operator: RayCluster (head and worker pods it creates
/// itself), RayJob (a RayCluster plus, in `K8sJobMode`, a submitter Job
/// that runs `ray job submit` against the cluster's dashboard) and
/// RayService.
pub mod kuberay {
    use super::*;

    /// What `scripts/testbed.sh kuberay` builds (`KUBERAY_VERSION`).
    pub const VERSION: &str = "v1.6.0";

    /// The label with which the RayCluster, the submitter Job and the head
    /// Service that KubeRay creates for a RayJob name the RayJob. No pod
    /// carries it (v1.6.0): a RayJob's head and worker pods carry
    /// [`CLUSTER_LABEL`], and its submitter pod only the Job controller's
    /// `batch.kubernetes.io/job-name`, whose value is the RayJob's name.
    pub const ORIGIN_NAME_LABEL: &str = "ray.io/originated-from-cr-name";

    /// Its companion: the kind of that object (`RayJob`, `RayService`).
    pub const ORIGIN_KIND_LABEL: &str = "ray.io/originated-from-crd";

    /// The label every head and worker pod carries with its RayCluster's
    /// name. A RayJob's RayCluster is named after the RayJob with a random
    /// suffix, and a new one (a new name) is made after each suspension.
    pub const CLUSTER_LABEL: &str = "ray.io/cluster";

    /// Starts the ray-operator against `cp`, with its CRDs.
    ///
    /// Settings, and why:
    /// * `--enable-leader-election=false`.
    /// * `--metrics-addr` and `--health-probe-bind-address` on free
    ///   loopback ports (the defaults are `:8080` and `:8082` on every
    ///   interface).
    /// * `--use-kubernetes-proxy`: the operator talks to each cluster's Ray
    ///   dashboard (to follow a RayJob's Ray job). By default it dials
    ///   `<head service>.<namespace>.svc.cluster.local:8265`, which only
    ///   resolves in a cluster, and would ask the machine's resolver for
    ///   it; through the API server's service proxy the request stays on
    ///   loopback. There is no dashboard under kwok either way (the API
    ///   server answers that the service has no endpoints), which is why a
    ///   RayJob cannot finish here: see the smoke test.
    /// * Webhooks stay off (`ENABLE_WEBHOOKS` unset, the default); the
    ///   operator needs no namespace of its own and no certificate.
    pub fn start(cp: &ControlPlane) -> Handle {
        let crds = crd_dir("kuberay", "kuberay");
        testbed::binary("ray-operator").unwrap_or_else(|e| panic!("{e}"));
        apply_crds(cp, &crds);
        let (health, metrics) = (free_port(), free_port());
        let handle = spawn(
            cp,
            "ray-operator",
            "ray-operator",
            &[
                format!("--kubeconfig={}", cp.kubeconfig.display()),
                "--enable-leader-election=false".into(),
                format!("--metrics-addr=127.0.0.1:{metrics}"),
                format!("--health-probe-bind-address=127.0.0.1:{health}"),
                "--use-kubernetes-proxy".into(),
                // Text logs, easier to read in a test's output than JSON.
                "--log-stdout-encoder=console".into(),
            ],
            &[],
        );
        handle.wait_ready(Duration::from_secs(60), |_| healthy(health, "/readyz"));
        // Head and worker pods are owned by their RayCluster, which a
        // suspended or finished RayJob deletes, and leaves the pods to the
        // garbage collector.
        wait_garbage_collector_follows(cp, "ray.io/v1", "RayCluster");
        handle
    }
}

/// The workload controllers of a test binary, each started once, on the
/// binary's shared held cluster ([`crate::shared::held_cluster`]), and
/// kept for the process: tests use namespaces of their own beside them.
/// One control plane for all of them, not one each: a suite that starts
/// four control planes at once on two cores slows every test in it.
pub mod shared {
    use std::sync::OnceLock;

    use super::Handle;

    /// Started on a thread that lives as long as the process (see
    /// `crate::shared::keep`): a child dies with the thread that started
    /// it (`die_with_parent`), and a test's thread ends with the test.
    fn kept(what: &'static str, start: fn() -> Handle) -> &'static Handle {
        crate::shared::keep(what, start, |h| {
            let pid = nix::unistd::Pid::from_raw(h.pid() as i32);
            let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGKILL);
        })
    }

    pub fn jobset() -> &'static Handle {
        static H: OnceLock<&'static Handle> = OnceLock::new();
        H.get_or_init(|| {
            kept("JobSet controller", || {
                super::jobset::start(crate::shared::held_cluster())
            })
        })
    }

    pub fn argo() -> &'static Handle {
        static H: OnceLock<&'static Handle> = OnceLock::new();
        H.get_or_init(|| {
            kept("Argo workflow-controller", || {
                super::argo::start(crate::shared::held_cluster())
            })
        })
    }

    pub fn kuberay() -> &'static Handle {
        static H: OnceLock<&'static Handle> = OnceLock::new();
        H.get_or_init(|| {
            kept("KubeRay operator", || {
                super::kuberay::start(crate::shared::held_cluster())
            })
        })
    }
}
