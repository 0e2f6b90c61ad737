//! Real Kubernetes nodes for tests: per node a containerd (runc, cgroupfs)
//! and a kubelet from the test bed, so pods run real containers from images
//! built by `scripts/image.sh` and imported from tarballs (there is no
//! registry). Each node has its own loopback address (`127.0.0.2`, ...) so
//! `hostNetwork` pods on different nodes can bind the same port.
//!
//! The kubelet refuses a loopback `--node-ip`, so it runs with
//! `--cloud-provider=external` and [`ControlPlane`](crate::k8s::ControlPlane)
//! plays the cloud controller: it sets the node's InternalIP and removes the
//! `uninitialized` taint.
//!
//! Needs root (containerd, runc, mounts and cgroups), cgroup v1: the
//! controllers mounted under `/sys/fs/cgroup`, and the packages
//! `scripts/testbed.sh node` installs. Everything (containers, mounts,
//! cgroups, processes) is removed on drop.
//!
//! The kubelet changes the host too: when it starts, it sets the kernel
//! settings it cannot run without, `vm.overcommit_memory=1`,
//! `kernel.panic=10` and `kernel.panic_on_oops=1`, on the host (there is
//! one kernel for every node and for the machine). They stay so after the
//! node is dropped.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use jobgate::process::die_with_parent;

use crate::testbed::{BUILD_COMMAND, binary, cache_dir, free_port};

/// The pod sandbox image every node's containerd is configured with.
pub const PAUSE_IMAGE: &str = "jobgate.local/pause:3";
/// Static busybox with its applets on PATH (`sh`, `sleep`, `cat`, ...).
pub const BUSYBOX_IMAGE: &str = "jobgate.local/busybox:1";
/// The default name `scripts/image.sh jobgate` gives the jobgate image.
pub const JOBGATE_IMAGE: &str = "jobgate.local/jobgate:test";

/// The containerd namespace the CRI plugin (and so the kubelet) uses.
const CRI_NAMESPACE: &str = "k8s.io";

/// cgroup v1 controllers the kubelet's cgroup root must exist in.
const CGROUP_CONTROLLERS: &[&str] = &[
    "blkio", "cpu", "cpuacct", "cpuset", "devices", "freezer", "memory", "pids", "systemd",
];

/// A program the node needs from the host's packages, or a panic naming the
/// command that installs it.
fn host_program(name: &str) -> PathBuf {
    for dir in ["/usr/bin", "/usr/sbin", "/bin", "/sbin", "/usr/local/bin"] {
        let path = Path::new(dir).join(name);
        if path.is_file() {
            return path;
        }
    }
    panic!(
        "{name} not found: install the node packages with `{BUILD_COMMAND} node` (apt-get install containerd runc containernetworking-plugins busybox-static)"
    );
}

/// The kubelet from the test bed. Not in its `k8s` set (the fake-node
/// tests need none), so a missing one names the `node` target.
pub fn kubelet_binary() -> PathBuf {
    binary("kubelet").unwrap_or_else(|_| {
        panic!(
            "test-bed binary \"kubelet\" not found in {}: build it with `{BUILD_COMMAND} node` (or `{BUILD_COMMAND} kubelet`)",
            cache_dir().join("bin").display()
        )
    })
}

/// The directory of the CNI plugins (only `loopback` is used).
fn cni_bin_dir() -> PathBuf {
    let dir = PathBuf::from("/usr/lib/cni");
    assert!(
        dir.join("loopback").is_file(),
        "CNI loopback plugin not found in {}: install it with `{BUILD_COMMAND} node` (apt-get install containernetworking-plugins)",
        dir.display()
    );
    dir
}

/// Builds the pause and busybox images into `dir` with `scripts/image.sh`
/// and returns the archives.
pub fn build_base_images(dir: &Path) -> Vec<PathBuf> {
    run_image_script(&["base", &dir.display().to_string()])
}

/// Builds an image of the jobgate binary `bin` named `reference` into
/// `dir` and returns the archive.
pub fn build_jobgate_image(dir: &Path, bin: &Path, reference: &str) -> PathBuf {
    let mut out = run_image_script(&[
        "jobgate",
        &dir.display().to_string(),
        &bin.display().to_string(),
        reference,
    ]);
    out.pop().unwrap()
}

fn run_image_script(args: &[&str]) -> Vec<PathBuf> {
    let script = crate::repo_dir().join("scripts/image.sh");
    let out = Command::new(&script)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", script.display()));
    assert!(
        out.status.success(),
        "scripts/image.sh {} failed:\n{}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(PathBuf::from)
        .collect()
}

pub struct Node {
    pub name: String,
    /// The node's own loopback address: its InternalIP, the address of its
    /// `hostNetwork` pods and where its kubelet listens.
    pub ip: String,
    dir: PathBuf,
    socket: PathBuf,
    /// Relative to each controller's hierarchy, e.g. `/jobgate-node-a-1f2e`.
    cgroup_root: String,
    containerd: Option<Child>,
    kubelet: Option<Child>,
}

impl Node {
    /// Starts containerd and the kubelet for node `name` at `ip`, with
    /// everything under `dir`, registering with the apiserver through
    /// `kubeconfig`. The node registers itself; it is not Ready until the
    /// caller sets its address (see the module docs).
    pub fn start(name: &str, ip: &str, dir: &Path, kubeconfig: &Path) -> Node {
        let kubelet_bin = kubelet_binary();
        let containerd_bin = host_program("containerd");
        host_program("runc");
        host_program("ctr");
        let cni_bin = cni_bin_dir();
        std::fs::create_dir_all(dir).unwrap();
        let cgroup_root = format!("/jobgate-{name}-{:08x}", rand::random::<u32>());
        let mut node = Node {
            name: name.into(),
            ip: ip.into(),
            dir: dir.into(),
            socket: dir.join("containerd.sock"),
            cgroup_root,
            containerd: None,
            kubelet: None,
        };
        node.make_cgroup_root();

        let d = dir.display();
        let cni_conf = dir.join("cni");
        std::fs::create_dir_all(&cni_conf).unwrap();
        // With no CNI network configured containerd reports the network not
        // ready, and the kubelet keeps the node NotReady. A loopback-only
        // network satisfies it; pods use the host network anyway.
        std::fs::write(
            cni_conf.join("10-loopback.conflist"),
            r#"{"cniVersion":"0.4.0","name":"loopback","plugins":[{"type":"loopback"}]}"#,
        )
        .unwrap();
        // overlayfs needs no copy of the image per container; the test
        // images are small, so native is a fine fallback where it fails.
        let snapshotter = std::env::var("JOBGATE_NODE_SNAPSHOTTER").unwrap_or("overlayfs".into());
        let config = format!(
            r#"version = 2
root = "{d}/containerd/root"
state = "{d}/containerd/state"
[grpc]
  address = "{sock}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{d}/containerd/opt"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "{PAUSE_IMAGE}"
  stream_server_address = "127.0.0.1"
  stream_server_port = "0"
  netns_mounts_under_state_dir = true
  # Test machines may deny lowering OOM scores (the kubelet asks -998 for
  # sandboxes); keep containers at containerd's own score or above.
  restrict_oom_score_adj = true
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "{snapshotter}"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{d}/runc"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "{cni}"
    conf_dir = "{conf}"
"#,
            sock = node.socket.display(),
            cni = cni_bin.display(),
            conf = cni_conf.display(),
        );
        std::fs::write(dir.join("containerd.toml"), config).unwrap();
        node.containerd = Some(spawn(
            &containerd_bin,
            &[format!("--config={d}/containerd.toml")],
            &dir.join("containerd.log"),
        ));
        node.wait_containerd();

        let (port, healthz) = (free_port(), free_port());
        let kubelet_config = format!(
            r#"apiVersion: kubelet.config.k8s.io/v1beta1
kind: KubeletConfiguration
failCgroupV1: false
cgroupDriver: cgroupfs
cgroupRoot: {cgroup_root}
containerRuntimeEndpoint: unix://{sock}
address: {ip}
port: {port}
healthzBindAddress: {ip}
healthzPort: {healthz}
readOnlyPort: 0
failSwapOn: false
podLogsDir: {d}/pod-logs
volumePluginDir: {d}/volume-plugins
authentication:
  anonymous:
    enabled: true
  webhook:
    enabled: false
authorization:
  mode: AlwaysAllow
# The test machines' disks may be fairly full; only a truly full one should
# evict pods or mark the node under pressure.
evictionHard:
  memory.available: 1Mi
  nodefs.available: 1%
  nodefs.inodesFree: 1%
  imagefs.available: 1%
imageGCHighThresholdPercent: 100
imageGCLowThresholdPercent: 99
# Host iptables are not the test's to change.
makeIPTablesUtilChains: false
nodeStatusUpdateFrequency: 2s
nodeStatusReportFrequency: 10s
syncFrequency: 5s
fileCheckFrequency: 5s
resolvConf: /etc/resolv.conf
"#,
            cgroup_root = node.cgroup_root,
            sock = node.socket.display(),
        );
        std::fs::write(dir.join("kubelet.yaml"), kubelet_config).unwrap();
        node.kubelet = Some(spawn(
            &kubelet_bin,
            &[
                format!("--config={d}/kubelet.yaml"),
                format!("--kubeconfig={}", kubeconfig.display()),
                format!("--root-dir={d}/kubelet"),
                format!("--cert-dir={d}/kubelet-certs"),
                format!("--hostname-override={name}"),
                "--cloud-provider=external".into(),
            ],
            &dir.join("kubelet.log"),
        ));
        node
    }

    /// Imports an image archive into the node's containerd, where the
    /// kubelet finds it (pods must use `imagePullPolicy: Never` or
    /// `IfNotPresent`).
    pub fn import_image(&self, archive: &Path) {
        let out = self.ctr(&["images", "import", &archive.display().to_string()]);
        assert!(
            out.status.success(),
            "importing {} into node {}: {}",
            archive.display(),
            self.name,
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// An error with its log if containerd or the kubelet has exited.
    pub fn check_alive(&mut self) -> Result<(), String> {
        let mut dead = None;
        for (what, child) in [
            ("containerd", &mut self.containerd),
            ("kubelet", &mut self.kubelet),
        ] {
            if let Some(c) = child
                && let Ok(Some(status)) = c.try_wait()
            {
                dead = Some((what, status));
                break;
            }
        }
        match dead {
            None => Ok(()),
            Some((what, status)) => Err(format!(
                "{what} of node {} exited ({status}):\n{}",
                self.name,
                self.log_tail(what, 40)
            )),
        }
    }

    /// The last `lines` lines of `"kubelet"`'s or `"containerd"`'s log.
    pub fn log_tail(&self, component: &str, lines: usize) -> String {
        let text =
            std::fs::read_to_string(self.dir.join(format!("{component}.log"))).unwrap_or_default();
        let mut last: Vec<&str> = text.lines().rev().take(lines).collect();
        last.reverse();
        last.join("\n")
    }

    fn ctr(&self, args: &[&str]) -> std::process::Output {
        Command::new(host_program("ctr"))
            .arg(format!("--address={}", self.socket.display()))
            .arg(format!("--namespace={CRI_NAMESPACE}"))
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap()
    }

    fn wait_containerd(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if self.ctr(&["version"]).status.success() {
                return;
            }
            if let Err(e) = self.check_alive() {
                panic!("{e}");
            }
            assert!(
                Instant::now() < deadline,
                "containerd of node {} not up after 30s:\n{}",
                self.name,
                self.log_tail("containerd", 30)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The kubelet insists that its cgroup root exists. In cgroup v1 a new
    /// cpuset cgroup starts with no CPUs or memory nodes, so it gets its
    /// parent's.
    fn make_cgroup_root(&self) {
        for controller in CGROUP_CONTROLLERS {
            let base = Path::new("/sys/fs/cgroup").join(controller);
            if !base.is_dir() {
                continue;
            }
            let path = base.join(self.cgroup_root.trim_start_matches('/'));
            std::fs::create_dir_all(&path)
                .unwrap_or_else(|e| panic!("creating cgroup {}: {e}", path.display()));
            if *controller == "cpuset" {
                for file in ["cpuset.cpus", "cpuset.mems"] {
                    let value = std::fs::read_to_string(base.join(file)).unwrap();
                    std::fs::write(path.join(file), value.trim()).unwrap();
                }
            }
        }
    }

    /// Kills whatever is left in the node's cgroups and removes them,
    /// deepest first.
    fn remove_cgroups(&self) {
        for controller in CGROUP_CONTROLLERS {
            let path = Path::new("/sys/fs/cgroup")
                .join(controller)
                .join(self.cgroup_root.trim_start_matches('/'));
            if path.is_dir() {
                remove_cgroup_tree(&path);
            }
        }
    }
}

fn remove_cgroup_tree(path: &Path) {
    if let Ok(entries) = std::fs::read_dir(path) {
        for entry in entries.flatten() {
            if entry.file_type().map(|t| t.is_dir()).unwrap_or(false) {
                remove_cgroup_tree(&entry.path());
            }
        }
    }
    for _ in 0..50 {
        let procs = std::fs::read_to_string(path.join("cgroup.procs")).unwrap_or_default();
        for pid in procs.lines().filter_map(|l| l.trim().parse::<i32>().ok()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        if std::fs::remove_dir(path).is_ok() || !path.exists() {
            return;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn spawn(bin: &Path, args: &[String], log: &Path) -> Child {
    let out = std::fs::File::create(log).unwrap();
    let err = out.try_clone().unwrap();
    let mut cmd = Command::new(bin);
    cmd.args(args).stdin(Stdio::null()).stdout(out).stderr(err);
    die_with_parent(&mut cmd);
    cmd.spawn()
        .unwrap_or_else(|e| panic!("starting {}: {e}", bin.display()))
}

/// Processes whose command line mentions `needle`: the containerd shims of
/// a node (their `-address` is the node's socket), which outlive containerd
/// by design.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            std::fs::read(format!("/proc/{pid}/cmdline"))
                .map(|c| String::from_utf8_lossy(&c).contains(needle))
                .unwrap_or(false)
        })
        .collect()
}

/// Unmounts everything mounted below `dir` (overlay rootfs, the tmpfs of
/// projected volumes, sandbox /dev/shm), deepest first.
fn unmount_below(dir: &Path) {
    let prefix = format!("{}/", dir.display());
    let info = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = info
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|p| p.starts_with(&prefix))
        .map(String::from)
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        let _ = nix::mount::umount2(p.as_str(), nix::mount::MntFlags::MNT_DETACH);
    }
}

impl Drop for Node {
    fn drop(&mut self) {
        // The kubelet first, so it restarts nothing while containers go.
        if let Some(mut k) = self.kubelet.take() {
            let _ = k.kill();
            let _ = k.wait();
        }
        if self.containerd.is_some() {
            let out = self.ctr(&["tasks", "list", "--quiet"]);
            let tasks = String::from_utf8_lossy(&out.stdout).to_string();
            for id in tasks.split_whitespace() {
                let _ = self.ctr(&["tasks", "kill", "--all", "--signal=SIGKILL", id]);
                let _ = self.ctr(&["tasks", "delete", "--force", id]);
            }
            let out = self.ctr(&["containers", "list", "--quiet"]);
            let containers = String::from_utf8_lossy(&out.stdout).to_string();
            for id in containers.split_whitespace() {
                let _ = self.ctr(&["containers", "delete", id]);
            }
        }
        if let Some(mut c) = self.containerd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Whatever survived: containers in the node's cgroups, then shims.
        self.remove_cgroups();
        for pid in processes_mentioning(&self.socket.display().to_string()) {
            let _ = nix::sys::signal::kill(
                nix::unistd::Pid::from_raw(pid),
                nix::sys::signal::Signal::SIGKILL,
            );
        }
        unmount_below(&self.dir);
    }
}
