//! A real Kubernetes control plane for tests: etcd and kube-apiserver from
//! the test bed on free loopback ports, with an admin token and a kubeconfig.
//! Everything is killed and removed on drop.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use jobgate::testbed::{binary, die_with_parent, free_port};

pub struct ControlPlane {
    children: Vec<Child>,
    pub dir: tempfile::TempDir,
    pub kubeconfig: PathBuf,
}

fn spawn(name: &str, args: &[String], log: &Path) -> Child {
    let bin = binary(name).unwrap_or_else(|e| panic!("{e}"));
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"))
}

impl ControlPlane {
    pub fn start() -> ControlPlane {
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        let (client, peer, secure) = (free_port(), free_port(), free_port());
        let etcd = spawn(
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
            &d.join("etcd.log"),
        );
        let key = rcgen::KeyPair::generate().unwrap();
        std::fs::write(d.join("sa.key"), key.serialize_pem()).unwrap();
        std::fs::write(d.join("sa.pub"), key.public_key_pem()).unwrap();
        let token = format!("admin-{:016x}", rand::random::<u64>());
        std::fs::write(
            d.join("tokens.csv"),
            format!("{token},admin,admin,\"system:masters\"\n"),
        )
        .unwrap();
        std::fs::create_dir_all(d.join("certs")).unwrap();
        let apiserver = spawn(
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
                format!("--service-account-issuer=https://127.0.0.1:{secure}"),
                format!("--service-account-key-file={}", d.join("sa.pub").display()),
                format!(
                    "--service-account-signing-key-file={}",
                    d.join("sa.key").display()
                ),
                "--disable-admission-plugins=ServiceAccount".into(),
            ],
            &d.join("kube-apiserver.log"),
        );
        let kubeconfig = d.join("kubeconfig");
        std::fs::write(
            &kubeconfig,
            format!(
                "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{secure}\n    insecure-skip-tls-verify: true\nusers:\n- name: admin\n  user:\n    token: {token}\ncontexts:\n- name: test\n  context:\n    cluster: test\n    user: admin\n    namespace: default\ncurrent-context: test\n"
            ),
        )
        .unwrap();
        let cp = ControlPlane {
            children: vec![etcd, apiserver],
            dir,
            kubeconfig,
        };
        cp.wait_ready();
        cp
    }

    fn wait_ready(&self) {
        let deadline = Instant::now() + Duration::from_secs(120);
        loop {
            let out = self.kubectl(&["get", "--raw", "/readyz"]);
            if out.status.success() {
                return;
            }
            if Instant::now() > deadline {
                let log = std::fs::read_to_string(self.dir.path().join("kube-apiserver.log"))
                    .unwrap_or_default();
                let tail: Vec<&str> = log.lines().rev().take(30).collect();
                panic!(
                    "kube-apiserver not ready after 120s:\n{}",
                    tail.into_iter().rev().collect::<Vec<_>>().join("\n")
                );
            }
            std::thread::sleep(Duration::from_millis(300));
        }
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

impl Drop for ControlPlane {
    fn drop(&mut self) {
        for c in self.children.iter_mut().rev() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}
