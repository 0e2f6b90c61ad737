//! The `jobgate controller` process as tests run it: its flags, its
//! environment and its log, started, killed, restarted and asked for its
//! metrics.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};

use jobgate::process::die_with_parent;

use crate::SeaweedFs;
use crate::k8s::ControlPlane;
use crate::testbed::free_port;

/// A `jobgate controller` process; killed on drop.
pub struct ControllerProcess {
    child: Option<Child>,
    args: Vec<String>,
    env: Vec<(String, String)>,
    pub log: PathBuf,
    pub metrics_port: u16,
    starts: u32,
}

impl ControllerProcess {
    /// `s3_env`: put the S3 credentials in the environment (else the group
    /// must name a Secret).
    pub fn start(cp: &ControlPlane, s3: &SeaweedFs, cluster: &str, ns: &str, s3_env: bool) -> Self {
        Self::start_with(cp, s3, cluster, ns, s3_env, &["--leader-elect=false"], "")
    }

    /// With extra flags; `replica` tells the log files of replicas apart.
    pub fn start_with(
        cp: &ControlPlane,
        s3: &SeaweedFs,
        cluster: &str,
        ns: &str,
        s3_env: bool,
        extra: &[&str],
        replica: &str,
    ) -> Self {
        let mut flags = vec![
            format!("--cluster-name={cluster}"),
            format!("--namespace={ns}"),
        ];
        flags.extend(extra.iter().map(|a| a.to_string()));
        Self::launch(
            cp,
            s3,
            &cp.kubeconfig,
            s3_env,
            flags,
            &format!("{cluster}{replica}"),
        )
    }

    /// [`Self::start_with`] through `kubeconfig` (for example one that
    /// reaches the API server through a proxy), with `env` set over the
    /// process's environment (for example `AWS_ENDPOINT_URL`, to reach S3
    /// through a proxy of its own when the group's spec names no endpoint).
    pub fn start_via(
        cp: &ControlPlane,
        s3: &SeaweedFs,
        kubeconfig: &Path,
        (cluster, ns): (&str, &str),
        extra: &[&str],
        replica: &str,
        env: &[(&str, &str)],
    ) -> Self {
        let mut flags = vec![
            format!("--cluster-name={cluster}"),
            format!("--namespace={ns}"),
        ];
        flags.extend(extra.iter().map(|a| a.to_string()));
        let mut me = Self::configure(
            cp,
            s3,
            kubeconfig,
            true,
            flags,
            &format!("{cluster}{replica}"),
        );
        for (key, value) in env {
            me.env.retain(|(k, _)| k != key);
            me.env.push((key.to_string(), value.to_string()));
        }
        me.spawn();
        me
    }

    /// As another identity: with `kubeconfig` instead of the admin one, and
    /// with only `flags` besides `--kubeconfig`, `--listen` and the poll
    /// periods (no `--cluster-name` or `--namespace`), so that a test can run
    /// it the way the chart does. `name` names its log file.
    pub fn start_as(
        cp: &ControlPlane,
        s3: &SeaweedFs,
        kubeconfig: &Path,
        s3_env: bool,
        flags: &[&str],
        name: &str,
    ) -> Self {
        let flags = flags.iter().map(|a| a.to_string()).collect();
        Self::launch(cp, s3, kubeconfig, s3_env, flags, name)
    }

    /// As a user would run it, for benchmarks: the default poll periods,
    /// `flags` besides `--kubeconfig` and `--listen`, and warnings only in
    /// the log, so that logging does not weigh on what is measured. It
    /// uses [`ControlPlane::counted_kubeconfig`], so the API server counts
    /// its requests.
    pub fn start_plain(cp: &ControlPlane, s3: &SeaweedFs, flags: &[&str], name: &str) -> Self {
        // Counted by the API server, as Kueue is in the benchmark.
        let mut me = Self::configure(
            cp,
            s3,
            &cp.counted_kubeconfig(),
            true,
            flags.iter().map(|a| a.to_string()).collect(),
            name,
        );
        me.args
            .retain(|a| !a.starts_with("--poll-waiting=") && !a.starts_with("--poll-idle="));
        for (k, v) in &mut me.env {
            if k == "RUST_LOG" {
                *v = "warn".into();
            }
        }
        me.spawn();
        me
    }

    /// The process id while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn launch(
        cp: &ControlPlane,
        s3: &SeaweedFs,
        kubeconfig: &Path,
        s3_env: bool,
        flags: Vec<String>,
        name: &str,
    ) -> Self {
        let mut me = Self::configure(cp, s3, kubeconfig, s3_env, flags, name);
        me.spawn();
        me
    }

    /// The process's arguments and environment, not started yet.
    fn configure(
        cp: &ControlPlane,
        s3: &SeaweedFs,
        kubeconfig: &Path,
        s3_env: bool,
        flags: Vec<String>,
        name: &str,
    ) -> Self {
        let metrics_port = free_port();
        let mut args = vec![
            "controller".to_string(),
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--listen=127.0.0.1:{metrics_port}"),
        ];
        // Short polls make tests quick; a test that passes its own keeps it
        // (clap refuses a flag given twice).
        for default in ["--poll-waiting=300ms", "--poll-idle=5s"] {
            let flag = default.split('=').next().unwrap_or(default);
            if !flags.iter().any(|f| f.starts_with(flag)) {
                args.push(default.into());
            }
        }
        args.extend(flags);
        let mut env: Vec<(String, String)> = vec![
            ("RUST_LOG".into(), "info,jobgate=debug".into()),
            ("AWS_REGION".into(), "us-east-1".into()),
            // Never look for credentials on a cloud metadata endpoint.
            ("AWS_EC2_METADATA_DISABLED".into(), "true".into()),
        ];
        if s3_env {
            env.extend(s3.env().into_iter().map(|(k, v)| (k.to_string(), v)));
        }
        let log = cp.dir.path().join(format!("controller-{name}.log"));
        ControllerProcess {
            child: None,
            args,
            env,
            log,
            metrics_port,
            starts: 0,
        }
    }

    fn spawn(&mut self) {
        self.starts += 1;
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let err = out.try_clone().unwrap();
        let mut cmd = Command::new(crate::jobgate_bin());
        cmd.args(&self.args)
            .envs(self.env.iter().map(|(k, v)| (k.as_str(), v.as_str())))
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(err);
        die_with_parent(&mut cmd);
        self.child = Some(cmd.spawn().unwrap());
    }

    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    /// SIGTERM and wait for the exit code.
    pub fn terminate(&mut self) -> Option<i32> {
        let mut c = self.child.take()?;
        let pid = nix::unistd::Pid::from_raw(c.id() as i32);
        let _ = nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGTERM);
        c.wait().ok().and_then(|s| s.code())
    }

    /// The exit status if the process has exited (not killed by the test).
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut()?.try_wait().ok().flatten()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    pub fn metrics(&self) -> String {
        use std::io::{Read, Write};
        let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", self.metrics_port)) else {
            return String::new();
        };
        let _ = s.write_all(b"GET /metrics HTTP/1.0\r\nHost: x\r\n\r\n");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out);
        out
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
