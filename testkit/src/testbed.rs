//! Where the test-bed binaries live. They are built by `scripts/testbed.sh`
//! into a cache directory; when one is missing this fails with the command
//! that builds it (tests fail, never skip).

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::path::PathBuf;
use std::sync::Mutex;

pub const BUILD_COMMAND: &str = "scripts/testbed.sh";

/// `$JOBGATE_TESTBED_DIR`, default `~/.cache/jobgate/testbed`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os("JOBGATE_TESTBED_DIR") {
        return PathBuf::from(dir);
    }
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| "/tmp".into());
    home.join(".cache/jobgate/testbed")
}

/// The path of a test-bed binary, or an error naming the build command.
pub fn binary(name: &str) -> Result<PathBuf, String> {
    let path = cache_dir().join("bin").join(name);
    if path.is_file() {
        return Ok(path);
    }
    let target = build_target(name);
    Err(format!(
        "test-bed binary {name:?} not found at {}: build it with `{BUILD_COMMAND} {target}` (or `make testbed`)",
        path.display()
    ))
}

/// The `scripts/testbed.sh` target that builds test-bed binary `name`.
fn build_target(name: &str) -> &'static str {
    match name {
        "weed" => "seaweedfs",
        "fake-gcs-server" => "fake-gcs",
        "azurite-blob" => "azurite",
        "moto_server" => "moto",
        "helm" => "helm",
        "promtool" => "promtool",
        "kubelet" => "kubelet",
        "kueue" => "kueue",
        "jobset" => "jobset",
        "workflow-controller" => "argo",
        "ray-operator" => "kuberay",
        _ => "k8s",
    }
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
/// Taken below the kernel's ephemeral range: a port the kernel hands out
/// (what binding port 0 returns) can be reused at once as the local port of
/// some outgoing connection, and then the server that was meant to get it
/// fails with "address already in use". Never the same port twice in one
/// process: the tests of a binary start servers side by side, and a port
/// handed out is free until its server binds it, so two of them could be
/// given one port.
pub fn free_port() -> u16 {
    static GIVEN: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10000u16, lowest_ephemeral.max(10001));
    let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
    for _ in 0..200 {
        let port = low + rand::random::<u16>() % (high - low);
        if !given.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
            given.insert(port);
            return port;
        }
    }
    let port = TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0);
    given.insert(port);
    port
}

#[cfg(test)]
mod tests {
    use super::build_target;

    #[test]
    fn a_missing_binary_names_the_target_that_builds_it() {
        for (name, target) in [
            ("kube-apiserver", "k8s"),
            ("kwok", "k8s"),
            ("weed", "seaweedfs"),
            ("promtool", "promtool"),
            ("jobset", "jobset"),
            ("workflow-controller", "argo"),
            ("ray-operator", "kuberay"),
        ] {
            assert_eq!(build_target(name), target, "{name}");
        }
    }
}
