//! Kueue's manager, run outside the cluster as a process beside a local
//! control plane, for the side-by-side benchmark (`benches/operator.rs`).
//! Built into the test-bed cache by `scripts/testbed.sh kueue`.
//!
//! Outside a pod Kueue needs four settings its defaults get wrong (leader
//! election, internal certificate management, the on-demand visibility
//! server, its namespace), a certificate for its webhook server, which
//! cannot be turned off, and one at the fixed path
//! `/etc/kueue/metrics/certs` for its metrics server. No webhook is
//! registered with the API server: Jobs are created suspended and
//! labelled, which is all Kueue's Job webhook would do, and Kueue's own
//! Job integration tests run the same way.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobgate::process::die_with_parent;

use crate::k8s::ControlPlane;
use crate::testbed::{self, free_port};

/// Where Kueue reads its metrics certificate, whatever its configuration.
const METRICS_CERTS: &str = "/etc/kueue/metrics/certs";

/// The Kueue release `scripts/testbed.sh kueue` builds (`KUEUE_VERSION`),
/// for labels.
pub const VERSION: &str = "v0.17";

/// Kueue's client rate limit and controller concurrency: the settings that
/// decide how fast it can talk to the API server, and so what the
/// benchmark varies between its Kueue scenarios. The binary stays v0.17
/// in all of them; only its configuration changes.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub struct KueueTuning {
    /// `clientConnection.qps`: requests per second the client allows.
    pub qps: u32,
    /// `clientConnection.burst`: requests it allows at once above that.
    pub burst: u32,
    /// `groupKindConcurrency` of `Job.batch`.
    pub job_concurrency: u32,
    /// `groupKindConcurrency` of `Workload.kueue.x-k8s.io`.
    pub workload_concurrency: u32,
    /// `groupKindConcurrency` of `LocalQueue` and `ClusterQueue`: one
    /// field, because every configuration Kueue ships sets the two alike.
    pub queue_concurrency: u32,
}

impl KueueTuning {
    /// v0.17's shipped configuration
    /// (`config/components/manager/controller_manager_config.yaml` at
    /// v0.17.0): QPS 50, burst 100, Jobs and Workloads 5 at a time, each
    /// kind of queue one at a time. Its built-in defaults (20/30) would
    /// throttle it below what it can do, and the shipped file is what an
    /// installation runs.
    pub fn shipped_v017() -> KueueTuning {
        KueueTuning {
            qps: 50,
            burst: 100,
            job_concurrency: 5,
            workload_concurrency: 5,
            queue_concurrency: 1,
        }
    }

    /// v0.19's defaults, given to v0.17: CHANGELOG/CHANGELOG-0.19.md, v0.19.0,
    /// "Increase OOTB QPS and concurrency for Kueue: QPS: 300, Burst=500,
    /// Workload concurrency: 10, LQ and CQ: 5. (#12440)". Its shipped
    /// configuration at v0.19.0 says the same and keeps Job.batch at 5
    /// (and Cohort and ResourceFlavor at 1). What the newer release's
    /// settings alone would change, without its other changes.
    pub fn defaults_v019() -> KueueTuning {
        KueueTuning {
            qps: 300,
            burst: 500,
            job_concurrency: 5,
            workload_concurrency: 10,
            queue_concurrency: 5,
        }
    }

    /// v0.19's concurrency with a client limit so high it never throttles:
    /// whether the client limit is what holds Kueue back. v0.17.0 does not
    /// validate `clientConnection` (`pkg/config/validation.go` does not
    /// look at it; its binary loads this configuration) and builds its
    /// token bucket from any qps >= 0 (`cmd/kueue/main.go`). A negative
    /// qps would drop that limiter, but then what limits the client is
    /// left to client-go's and controller-runtime's defaults, which are
    /// not checked here; a finite, huge limit says what it means.
    pub fn unthrottled() -> KueueTuning {
        KueueTuning {
            qps: 100_000,
            burst: 100_000,
            ..KueueTuning::defaults_v019()
        }
    }
}

/// For the benchmark's system column: the client limit and the Workload
/// concurrency, the two settings the scenarios differ in most.
impl std::fmt::Display for KueueTuning {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "QPS {}/{}, Workload concurrency {}",
            self.qps, self.burst, self.workload_concurrency
        )
    }
}

pub struct Kueue {
    child: Child,
    pub log: PathBuf,
}

impl Kueue {
    /// Installs Kueue's CRDs, starts its manager and creates one
    /// ResourceFlavor, a ClusterQueue whose `pods` quota is `limit` and a
    /// LocalQueue `lq` in `ns`; its client and controllers as `tuning`
    /// says. Panics with the build command when the binary is missing.
    pub fn start(cp: &ControlPlane, ns: &str, limit: u32, tuning: KueueTuning) -> Kueue {
        let bin = testbed::binary("kueue").unwrap_or_else(|e| panic!("{e}"));
        let crds = testbed::cache_dir().join("kueue-crds");
        // Server-side: the Workload CRD is too big for a client-side apply.
        crate::workloads::apply_crds(cp, &crds);
        let dir = cp.dir.path().join("kueue");
        let certs = dir.join("certs");
        write_certificate(&certs);
        if !Path::new(METRICS_CERTS).join("tls.crt").is_file() {
            write_certificate(Path::new(METRICS_CERTS));
        }
        let (webhook, health, metrics) = (free_port(), free_port(), free_port());
        // Client QPS and burst and the controllers' concurrency from
        // `tuning` (see KueueTuning); Cohort and ResourceFlavor one at a
        // time, as every shipped configuration has them.
        let KueueTuning {
            qps,
            burst,
            job_concurrency,
            workload_concurrency,
            queue_concurrency,
        } = tuning;
        let config = format!(
            r#"apiVersion: config.kueue.x-k8s.io/v1beta2
kind: Configuration
namespace: kueue-system
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
health:
  healthProbeBindAddress: 127.0.0.1:{health}
clientConnection:
  qps: {qps}
  burst: {burst}
controller:
  groupKindConcurrency:
    Job.batch: {job_concurrency}
    Workload.kueue.x-k8s.io: {workload_concurrency}
    LocalQueue.kueue.x-k8s.io: {queue_concurrency}
    ClusterQueue.kueue.x-k8s.io: {queue_concurrency}
    ResourceFlavor.kueue.x-k8s.io: 1
    Cohort.kueue.x-k8s.io: 1
integrations:
  frameworks: ["batch/job"]
featureGates:
  VisibilityOnDemand: false
"#,
            certs = certs.display()
        );
        let config_path = dir.join("config.yaml");
        std::fs::write(&config_path, config).unwrap();
        let log = dir.join("kueue.log");
        let out = std::fs::File::create(&log).unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(bin);
        cmd.arg(format!("--config={}", config_path.display()))
            // Counted by the API server: Kueue exports no request counter.
            .arg(format!(
                "--kubeconfig={}",
                cp.counted_kubeconfig().display()
            ))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().unwrap();
        let me = Kueue { child, log };
        me.wait_ready(health);
        let queues = format!(
            r#"apiVersion: kueue.x-k8s.io/v1beta2
kind: ResourceFlavor
metadata: {{name: default}}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: ClusterQueue
metadata: {{name: cq}}
spec:
  namespaceSelector: {{}}
  resourceGroups:
  - coveredResources: ["pods"]
    flavors:
    - name: default
      resources:
      - name: pods
        nominalQuota: {limit}
---
apiVersion: kueue.x-k8s.io/v1beta2
kind: LocalQueue
metadata: {{name: lq, namespace: {ns}}}
spec:
  clusterQueue: cq
"#
        );
        let applied = cp.kubectl_stdin(&["apply", "-f", "-"], &queues);
        assert!(
            applied.status.success(),
            "{}",
            String::from_utf8_lossy(&applied.stderr)
        );
        me
    }

    fn wait_ready(&self, health: u16) {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(60) {
            if http_get(health, "/readyz").is_some_and(|body| body.contains("ok")) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!(
            "Kueue not ready after 60 s:\n{}",
            std::fs::read_to_string(&self.log).unwrap_or_default()
        );
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Kueue {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A self-signed certificate for 127.0.0.1 as `dir/tls.crt` and `tls.key`
/// (also for the workload controllers' servers, `workloads`).
pub(crate) fn write_certificate(dir: &Path) {
    std::fs::create_dir_all(dir).unwrap();
    let key = rcgen::KeyPair::generate().unwrap();
    let params =
        rcgen::CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".to_string()])
            .unwrap();
    let cert = params.self_signed(&key).unwrap();
    std::fs::write(dir.join("tls.crt"), cert.pem()).unwrap();
    std::fs::write(dir.join("tls.key"), key.serialize_pem()).unwrap();
}

/// A plain HTTP GET on loopback: the status line and body, or `None` if
/// nothing answers.
pub(crate) fn http_get(port: u16, path: &str) -> Option<String> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    Some(out)
}
