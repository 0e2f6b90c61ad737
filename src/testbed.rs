//! Starts the real servers that tests, benchmarks and the demo run against.
//! The binaries are built by `scripts/testbed.sh` into a cache directory;
//! when one is missing this fails with the command that builds it.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::store::{DynStore, S3Options, S3Store, unique_suffix};

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
    let target = match name {
        "weed" => "seaweedfs",
        "helm" => "helm",
        _ => "k8s",
    };
    Err(format!(
        "test-bed binary {name:?} not found at {}: build it with `{BUILD_COMMAND} {target}` (or `make testbed`)",
        path.display()
    ))
}

/// A free TCP port on 127.0.0.1 (free when asked; good enough for tests).
/// Taken below the kernel's ephemeral range: a port the kernel hands out
/// (what binding port 0 returns) can be reused at once as the local port of
/// some outgoing connection, and then the server that was meant to get it
/// fails with "address already in use".
pub fn free_port() -> u16 {
    let lowest_ephemeral = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|r| r.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32768);
    let (low, high) = (10000u16, lowest_ephemeral.max(10001));
    for _ in 0..200 {
        let port = low + rand::random::<u16>() % (high - low);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .unwrap_or(0)
}

pub const ACCESS_KEY: &str = "jobgate-test";
pub const SECRET_KEY: &str = "jobgate-test-secret";

/// A single-process SeaweedFS (master, volume, filer and S3 gateway) on
/// loopback ports with a temporary data directory. Killed on drop.
pub struct SeaweedFs {
    child: Child,
    dir: PathBuf,
    pub endpoint: String,
}

impl SeaweedFs {
    pub async fn start() -> Result<Self, String> {
        let weed = binary("weed")?;
        let dir = std::env::temp_dir().join(format!("jobgate-weed-{}", unique_suffix()));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let config = dir.join("s3.json");
        let identities = serde_json::json!({
            "identities": [{
                "name": "jobgate",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]
            }]
        });
        std::fs::write(&config, identities.to_string()).map_err(|e| e.to_string())?;
        let s3_port = free_port();
        let mut cmd = Command::new(&weed);
        cmd.arg("server")
            .arg("-ip=127.0.0.1")
            .arg("-ip.bind=127.0.0.1")
            .arg(format!("-dir={}", dir.join("data").display()))
            .arg("-filer")
            .arg("-s3")
            .arg(format!("-s3.config={}", config.display()))
            .arg("-master.volumeSizeLimitMB=64")
            .arg("-volume.max=16");
        for (flag, port) in [
            ("master.port", free_port()),
            ("master.port.grpc", free_port()),
            ("volume.port", free_port()),
            ("volume.port.grpc", free_port()),
            ("filer.port", free_port()),
            ("filer.port.grpc", free_port()),
            ("s3.port", s3_port),
            ("s3.port.grpc", free_port()),
            // Fixed by default (8181, 9101): parallel servers would collide.
            ("s3.port.iceberg", 0),
            ("s3.port.lance", 0),
        ] {
            cmd.arg(format!("-{flag}={port}"));
        }
        let log = std::fs::File::create(dir.join("weed.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        cmd.stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", weed.display()))?;
        let server = SeaweedFs {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{s3_port}"),
        };
        server.wait_ready().await?;
        Ok(server)
    }

    pub fn s3_options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.endpoint.clone()),
            region: Some("us-east-1".into()),
            force_path_style: Some(true),
            access_key_id: Some(ACCESS_KEY.into()),
            secret_access_key: Some(SECRET_KEY.into()),
            ..Default::default()
        }
    }

    /// Environment for a `jobgate` process that should use this server.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ENDPOINT_URL", self.endpoint.clone()),
            ("AWS_REGION", "us-east-1".into()),
            ("AWS_ACCESS_KEY_ID", ACCESS_KEY.into()),
            ("AWS_SECRET_ACCESS_KEY", SECRET_KEY.into()),
        ]
    }

    pub async fn store(&self, bucket: &str) -> S3Store {
        S3Store::connect(bucket, &self.s3_options()).await
    }

    pub async fn dyn_store(&self, bucket: &str) -> DynStore {
        std::sync::Arc::new(self.store(bucket).await)
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let store = self.store(bucket).await;
        let mut last = String::new();
        for _ in 0..100 {
            match self.create_bucket_once(&store, bucket).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("creating bucket {bucket}: {last}"))
    }

    async fn wait_ready(&self) -> Result<(), String> {
        let bucket = "jobgate-ready";
        let store = self.store(bucket).await;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            if self.create_bucket_once(&store, bucket).await.is_ok() {
                let put = store
                    .client()
                    .put_object()
                    .bucket(bucket)
                    .key("ready")
                    .body(aws_sdk_s3::primitives::ByteStream::from_static(b"ok"))
                    .send()
                    .await;
                match put {
                    Ok(_) => return Ok(()),
                    Err(e) => last = aws_sdk_s3::error::DisplayErrorContext(&e).to_string(),
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("weed.log")).unwrap_or_default();
        let tail: String = log
            .lines()
            .rev()
            .take(20)
            .collect::<Vec<_>>()
            .into_iter()
            .rev()
            .collect::<Vec<_>>()
            .join("\n");
        Err(format!(
            "SeaweedFS did not become ready at {}: {last}\n{tail}",
            self.endpoint
        ))
    }

    async fn create_bucket_once(&self, store: &S3Store, bucket: &str) -> Result<(), String> {
        match store.client().create_bucket().bucket(bucket).send().await {
            Ok(_) => Ok(()),
            Err(e) => {
                let text = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
                if text.contains("BucketAlreadyOwnedByYou") || text.contains("BucketAlreadyExists")
                {
                    Ok(())
                } else {
                    Err(text)
                }
            }
        }
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// Makes a spawned server die with the process that started it, so a test
/// that is killed leaves nothing behind.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    // SAFETY: prctl is async-signal-safe and touches no memory of ours.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}
