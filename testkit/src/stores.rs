//! The other stores' emulators, built by `scripts/testbed.sh stores`:
//! fake-gcs-server for GCS, Azurite for Azure Blob Storage, and moto's
//! server mode for an S3 that answers as AWS does. Each runs on a loopback
//! port with a temporary directory, and is killed on drop.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use jobgate::process::die_with_parent;
use jobgate::store::{
    AzureOptions, AzureStore, DynStore, GcsOptions, GcsStore, S3Options, S3Store, unique_suffix,
};

use crate::testbed::{binary, free_port};

/// Azurite's one account and its published key (the same in every copy).
pub const AZURITE_ACCOUNT: &str = "devstoreaccount1";
pub const AZURITE_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";

/// One emulator process.
pub struct Emulator {
    child: Mutex<Child>,
    dir: PathBuf,
    /// The base URL its clients are given.
    pub endpoint: String,
    name: &'static str,
}

impl Emulator {
    fn spawn(
        name: &'static str,
        program: &str,
        args: impl FnOnce(&std::path::Path, u16) -> Vec<String>,
        endpoint: impl FnOnce(u16) -> String,
    ) -> Result<Emulator, String> {
        let bin = binary(program)?;
        let dir = std::env::temp_dir().join(format!("jobgate-{program}-{}", unique_suffix()));
        std::fs::create_dir_all(dir.join("data")).map_err(|e| e.to_string())?;
        let port = free_port();
        let log = std::fs::File::create(dir.join("server.log")).map_err(|e| e.to_string())?;
        let log2 = log.try_clone().map_err(|e| e.to_string())?;
        let mut cmd = Command::new(&bin);
        cmd.args(args(&dir.join("data"), port))
            .stdout(Stdio::from(log))
            .stderr(Stdio::from(log2))
            .stdin(Stdio::null());
        die_with_parent(&mut cmd);
        let child = cmd
            .spawn()
            .map_err(|e| format!("starting {}: {e}", bin.display()))?;
        Ok(Emulator {
            child: Mutex::new(child),
            dir,
            endpoint: endpoint(port),
            name,
        })
    }

    /// Waits until `ready` succeeds, or fails with the server's log.
    async fn wait<F, Fut>(&self, mut ready: F) -> Result<(), String>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<(), String>>,
    {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
        let mut last = String::from("no answer");
        while tokio::time::Instant::now() < deadline {
            match ready().await {
                Ok(()) => return Ok(()),
                Err(e) => last = e,
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().collect();
        let tail = lines[lines.len().saturating_sub(20)..].join("\n");
        Err(format!(
            "{} did not become ready at {}: {last}\n{tail}",
            self.name, self.endpoint
        ))
    }

    /// Kills the server and removes its data (what drop does, through
    /// `&self`, for a server shared until the process exits).
    pub fn stop(&self) {
        let mut child = self.child.lock().unwrap_or_else(|e| e.into_inner());
        let _ = child.kill();
        let _ = child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for Emulator {
    fn drop(&mut self) {
        self.stop();
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap_or_else(|e| panic!("an HTTP client: {e}"))
}

async fn expect_success(
    resp: reqwest::Result<reqwest::Response>,
    what: &str,
) -> Result<(), String> {
    let resp = resp.map_err(|e| format!("{what}: {e}"))?;
    let status = resp.status();
    if status.is_success() {
        return Ok(());
    }
    let body = resp.text().await.unwrap_or_default();
    Err(format!("{what}: {status} {body}"))
}

/// fake-gcs-server, on its filesystem backend.
pub struct FakeGcs(pub Emulator);

impl FakeGcs {
    pub async fn start() -> Result<FakeGcs, String> {
        let emu = Emulator::spawn(
            "fake-gcs-server",
            "fake-gcs-server",
            |data, port| {
                [
                    "-scheme",
                    "http",
                    "-host",
                    "127.0.0.1",
                    "-port",
                    &port.to_string(),
                    "-backend",
                    "filesystem",
                    "-filesystem-root",
                    &data.display().to_string(),
                    "-public-host",
                    &format!("127.0.0.1:{port}"),
                    "-log-level",
                    "warn",
                ]
                .map(String::from)
                .to_vec()
            },
            |port| format!("http://127.0.0.1:{port}"),
        )?;
        let server = FakeGcs(emu);
        let url = format!("{}/storage/v1/b", server.0.endpoint);
        server.0.wait(|| expect_success_get(url.clone())).await?;
        Ok(server)
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let resp = http()
            .post(format!("{}/storage/v1/b", self.0.endpoint))
            .header("content-type", "application/json")
            .body(serde_json::json!({ "name": bucket }).to_string())
            .send()
            .await;
        expect_success(resp, &format!("creating GCS bucket {bucket}")).await
    }

    pub fn options(&self) -> GcsOptions {
        GcsOptions {
            endpoint: Some(self.0.endpoint.clone()),
            ..Default::default()
        }
    }

    pub fn dyn_store(&self, bucket: &str) -> DynStore {
        std::sync::Arc::new(
            GcsStore::connect(bucket, &self.options()).unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// What a `jobgate` process needs to reach this emulator.
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("STORAGE_EMULATOR_HOST", self.0.endpoint.clone())]
    }
}

async fn expect_success_get(url: String) -> Result<(), String> {
    expect_success(http().get(&url).send().await, &url).await
}

/// Azurite's blob service.
pub struct Azurite(pub Emulator);

impl Azurite {
    pub async fn start() -> Result<Azurite, String> {
        let emu = Emulator::spawn(
            "Azurite",
            "azurite-blob",
            |data, port| {
                [
                    "--blobHost",
                    "127.0.0.1",
                    "--blobPort",
                    &port.to_string(),
                    "--location",
                    &data.display().to_string(),
                    "--skipApiVersionCheck",
                    "--silent",
                ]
                .map(String::from)
                .to_vec()
            },
            |port| format!("http://127.0.0.1:{port}/{AZURITE_ACCOUNT}"),
        )?;
        let server = Azurite(emu);
        server
            .0
            .wait(|| server.create_container("jobgate-ready"))
            .await?;
        Ok(server)
    }

    /// Creates a container (if it is not there), signed with the account
    /// key as Azure's SharedKey scheme says: no crate in the tree creates
    /// containers, and this is the one request the tests need.
    pub async fn create_container(&self, container: &str) -> Result<(), String> {
        use base64::Engine;
        use hmac::Mac;
        let date = httpdate::fmt_http_date(std::time::SystemTime::now());
        let version = "2021-08-06";
        let to_sign = format!(
            "PUT\n\n\n\n\n\n\n\n\n\n\n\nx-ms-date:{date}\nx-ms-version:{version}\n/{AZURITE_ACCOUNT}/{AZURITE_ACCOUNT}/{container}\nrestype:container"
        );
        let key = base64::engine::general_purpose::STANDARD
            .decode(AZURITE_KEY)
            .map_err(|e| e.to_string())?;
        let mut mac =
            hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).map_err(|e| e.to_string())?;
        mac.update(to_sign.as_bytes());
        let signature =
            base64::engine::general_purpose::STANDARD.encode(mac.finalize().into_bytes());
        let resp = http()
            .put(format!("{}/{container}?restype=container", self.0.endpoint))
            .header("x-ms-date", date)
            .header("x-ms-version", version)
            .header("content-length", "0")
            .header(
                "authorization",
                format!("SharedKey {AZURITE_ACCOUNT}:{signature}"),
            )
            .send()
            .await
            .map_err(|e| format!("creating container {container}: {e}"))?;
        if resp.status().is_success() || resp.status() == reqwest::StatusCode::CONFLICT {
            return Ok(());
        }
        let status = resp.status();
        Err(format!(
            "creating container {container}: {status} {}",
            resp.text().await.unwrap_or_default()
        ))
    }

    pub fn options(&self) -> AzureOptions {
        AzureOptions {
            endpoint: Some(self.0.endpoint.clone()),
            access_key: Some(AZURITE_KEY.into()),
            ..Default::default()
        }
    }

    pub fn dyn_store(&self, container: &str) -> DynStore {
        std::sync::Arc::new(
            AzureStore::connect(AZURITE_ACCOUNT, container, &self.options())
                .unwrap_or_else(|e| panic!("{e}")),
        )
    }

    /// What a `jobgate` process needs to reach this emulator, besides
    /// `--endpoint-url` (the account key; the identity otherwise).
    pub fn env(&self) -> Vec<(&'static str, String)> {
        vec![("AZURE_STORAGE_ACCOUNT_KEY", AZURITE_KEY.into())]
    }
}

/// moto's server mode: S3 as AWS answers it, with any credentials.
pub struct Moto(pub Emulator);

impl Moto {
    pub async fn start() -> Result<Moto, String> {
        let emu = Emulator::spawn(
            "moto",
            "moto_server",
            |_, port| {
                ["-H", "127.0.0.1", "-p", &port.to_string()]
                    .map(String::from)
                    .to_vec()
            },
            |port| format!("http://127.0.0.1:{port}"),
        )?;
        let server = Moto(emu);
        let url = format!("{}/moto-api/", server.0.endpoint);
        server.0.wait(|| expect_success_get(url.clone())).await?;
        Ok(server)
    }

    pub fn options(&self) -> S3Options {
        S3Options {
            endpoint: Some(self.0.endpoint.clone()),
            region: Some("us-east-1".into()),
            access_key_id: Some("moto".into()),
            secret_access_key: Some("moto".into()),
            ..Default::default()
        }
    }

    pub async fn create_bucket(&self, bucket: &str) -> Result<(), String> {
        let resp = http()
            .put(format!("{}/{bucket}", self.0.endpoint))
            .send()
            .await;
        expect_success(resp, &format!("creating S3 bucket {bucket} on moto")).await
    }

    pub async fn dyn_store(&self, bucket: &str) -> DynStore {
        std::sync::Arc::new(S3Store::connect(bucket, &self.options()).await)
    }
}

/// Starts one, failing (never skipping) when its build is missing.
pub async fn start<T, Fut>(start: impl Fn() -> Fut) -> T
where
    Fut: std::future::Future<Output = Result<T, String>>,
{
    let mut last = String::new();
    for _ in 0..3 {
        match start().await {
            Ok(s) => return s,
            Err(e) if e.contains("not found") => panic!("{e}"),
            Err(e) => last = e,
        }
    }
    panic!("{last}")
}

/// A fresh bucket (or container) name.
pub fn name() -> String {
    format!("jg-{:08x}", rand::random::<u32>())
}
