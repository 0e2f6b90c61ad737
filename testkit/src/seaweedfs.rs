//! A real S3 server for tests and benchmarks: single-process SeaweedFS on
//! loopback ports with a temporary data directory.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::config::timeout::TimeoutConfig;
use aws_sdk_s3::config::{Credentials, Region, RequestChecksumCalculation};
use jobgate::process::die_with_parent;
use jobgate::store::{DynStore, S3Options, S3Store, unique_suffix};

use crate::testbed::{binary, free_port};

pub const ACCESS_KEY: &str = "jobgate-test";
pub const SECRET_KEY: &str = "jobgate-test-secret";
/// A second identity whose keys appear nowhere else, so that a test can
/// search logs and API objects for them and be sure a hit is a leak.
pub const TENANT_ACCESS_KEY: &str = "JGTENANTQ7X3ZKEYID";
pub const TENANT_SECRET_KEY: &str = "jg-tenant-Vq8rN2sW5yT1secret";

/// A single-process SeaweedFS (master, volume, filer and S3 gateway) on
/// loopback ports with a temporary data directory. Killed on drop.
pub struct SeaweedFs {
    // Behind a lock so that a shared server can be stopped through `&self`
    // at the process's exit (see `crate::shared`).
    child: std::sync::Mutex<Child>,
    dir: PathBuf,
    pub endpoint: String,
    /// With [`SeaweedFs::start_tls`]: the PEM of the CA that signed the S3
    /// gateway's certificate (written to [`SeaweedFs::ca_file`]).
    ca_pem: Option<String>,
}

impl SeaweedFs {
    pub async fn start() -> Result<Self, String> {
        Self::launch(false).await
    }

    /// The S3 gateway over HTTPS, with a certificate for 127.0.0.1 signed
    /// by a CA of this server's own, which nothing trusts unless told
    /// (`ca_file`, `AWS_CA_BUNDLE`).
    pub async fn start_tls() -> Result<Self, String> {
        Self::launch(true).await
    }

    /// The CA certificate of a [`SeaweedFs::start_tls`] server.
    pub fn ca_file(&self) -> PathBuf {
        self.dir.join("ca.pem")
    }

    async fn launch(tls: bool) -> Result<Self, String> {
        let weed = binary("weed")?;
        let dir = std::env::temp_dir().join(format!("jobgate-weed-{}", unique_suffix()));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let ca_pem = if tls {
            Some(write_tls_files(&dir).map_err(|e| format!("making the test CA: {e}"))?)
        } else {
            None
        };
        let config = dir.join("s3.json");
        let identities = serde_json::json!({
            "identities": [{
                "name": "jobgate",
                "credentials": [{"accessKey": ACCESS_KEY, "secretKey": SECRET_KEY}],
                "actions": ["Admin", "Read", "Write", "List", "Tagging"]
            }, {
                "name": "tenant",
                "credentials": [{"accessKey": TENANT_ACCESS_KEY, "secretKey": TENANT_SECRET_KEY}],
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
            // Each bucket is a collection that takes volumes of its own,
            // seven at its first write: a process that makes many buckets
            // (a benchmark, one per scenario; a test binary, one per test,
            // about 30 on one shared server) would otherwise run out and get
            // HTTP 500s. Volumes grow as written, so a high bound costs no
            // disk: 1,000 is room for about 140 buckets.
            .arg("-volume.max=1000")
            // By default a volume turns read-only below 1% free disk (2.5 GB
            // of a 250 GB disk), and every write then fails after minutes of
            // retries: a test's ledger needs kilobytes, so only a disk that
            // is really full should stop the tests.
            .arg("-volume.minFreeSpace=256MiB");
        if tls {
            cmd.arg(format!("-s3.cert.file={}", dir.join("s3.crt").display()))
                .arg(format!("-s3.key.file={}", dir.join("s3.key").display()));
        }
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
            child: std::sync::Mutex::new(child),
            dir,
            endpoint: format!(
                "{}://127.0.0.1:{s3_port}",
                if tls { "https" } else { "http" }
            ),
            ca_pem,
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

    /// A plain SDK client for administration the ledger never does
    /// (creating buckets) and for the naive baseline's unconditional writes.
    /// Like jobgate's own client: no SDK retries, `attempt_timeout` a request.
    pub fn sdk_client(&self, attempt_timeout: Duration) -> aws_sdk_s3::Client {
        let mut config = aws_sdk_s3::Config::builder();
        if let Some(pem) = &self.ca_pem {
            let client = jobgate::store::s3::ca::https_client(pem.clone().into_bytes())
                .unwrap_or_else(|e| panic!("{e}"));
            config = config.http_client(client);
        }
        let config = config
            .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(Duration::from_secs(3))
                    .operation_attempt_timeout(attempt_timeout)
                    .build(),
            )
            .endpoint_url(&self.endpoint)
            .region(Region::new("us-east-1"))
            .force_path_style(true)
            .credentials_provider(Credentials::new(
                ACCESS_KEY, SECRET_KEY, None, None, "testkit",
            ))
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .build();
        aws_sdk_s3::Client::from_conf(config)
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let client = self.sdk_client(Duration::from_secs(10));
        let mut last = String::new();
        for _ in 0..100 {
            match create_bucket_once(&client, bucket).await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        Err(format!("creating bucket {bucket}: {last}"))
    }

    /// Ready once a bucket can be created and an object written in it.
    async fn wait_ready(&self) -> Result<(), String> {
        let bucket = "jobgate-ready";
        let client = self.sdk_client(Duration::from_secs(10));
        let deadline = tokio::time::Instant::now() + Duration::from_secs(90);
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            if create_bucket_once(&client, bucket).await.is_ok() {
                let put = client
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
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Err(format!(
            "SeaweedFS did not become ready at {}: {last}\n{tail}",
            self.endpoint
        ))
    }
}

/// A CA and, signed by it, a certificate for 127.0.0.1 and localhost:
/// `ca.pem`, `s3.crt` and `s3.key` in `dir`. Returns the CA's PEM.
fn write_tls_files(dir: &std::path::Path) -> Result<String, String> {
    let err = |e: rcgen::Error| e.to_string();
    let ca_key = rcgen::KeyPair::generate().map_err(err)?;
    let mut ca = rcgen::CertificateParams::new(Vec::<String>::new()).map_err(err)?;
    ca.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(rcgen::DnType::CommonName, "jobgate test CA");
    let ca_cert = ca.self_signed(&ca_key).map_err(err)?;
    let issuer = rcgen::Issuer::new(ca, ca_key);
    let key = rcgen::KeyPair::generate().map_err(err)?;
    let leaf = rcgen::CertificateParams::new(vec!["127.0.0.1".into(), "localhost".into()])
        .map_err(err)?
        .signed_by(&key, &issuer)
        .map_err(err)?;
    let write = |name: &str, text: String| {
        std::fs::write(dir.join(name), text).map_err(|e| format!("{name}: {e}"))
    };
    write("ca.pem", ca_cert.pem())?;
    write("s3.crt", leaf.pem())?;
    write("s3.key", key.serialize_pem())?;
    Ok(ca_cert.pem())
}

async fn create_bucket_once(client: &aws_sdk_s3::Client, bucket: &str) -> Result<(), String> {
    match client.create_bucket().bucket(bucket).send().await {
        Ok(_) => Ok(()),
        Err(e) => {
            let text = aws_sdk_s3::error::DisplayErrorContext(&e).to_string();
            if text.contains("BucketAlreadyOwnedByYou") || text.contains("BucketAlreadyExists") {
                Ok(())
            } else {
                Err(text)
            }
        }
    }
}

impl SeaweedFs {
    /// Kills the server and removes its data. What `drop` does, through
    /// `&self`, for a server shared until the process exits.
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for SeaweedFs {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Starts SeaweedFS; fails (never skips) when the binary is missing.
pub async fn seaweed() -> SeaweedFs {
    // A port picked as free can still be taken by someone else before the
    // server binds it; a second try gets other ports.
    let mut last = String::new();
    for _ in 0..3 {
        match SeaweedFs::start().await {
            Ok(s) => return s,
            Err(e) if e.contains("not found") => panic!("{e}"),
            Err(e) => last = e,
        }
    }
    panic!("{last}")
}

/// A fresh bucket on `server`.
pub async fn bucket(server: &SeaweedFs) -> String {
    let name = format!("jg-{:08x}", rand::random::<u32>());
    server
        .create_bucket(&name)
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    name
}
