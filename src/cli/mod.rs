//! The `jobgate` command line. Arguments live here; each subcommand has its
//! own module. Every failure prints one line and exits with `EXIT_ERROR`.

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};

use crate::error::{Error, Result};
use crate::store::{
    AzureOptions, AzureStore, DynStore, FileStore, GcsOptions, GcsStore, LedgerUrl, S3Options,
    S3Store,
};

mod controller;
mod doctor;
mod kube;
mod kube_status;
mod limit;
mod run;
mod signal_origin;
mod status;

pub use crate::exit::{
    EXIT_ERROR, EXIT_LEASE_LOST, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_WAIT_TIMEOUT,
};

/// The end of `jobgate run --help`: what the command is given and what
/// comes back (the constants above, and `run`'s environment).
const RUN_AFTER_HELP: &str = "\
The command receives, besides the environment of jobgate:
  JOBGATE_HOLDER          the holder id of its slot
  JOBGATE_FENCING_TOKEN   the slot's fencing token (only grows; pass it to what checks it)
  JOBGATE_LEDGER          the ledger's URL

Exit codes:
  the command's own   when it ran to its end (128+N when it was killed by signal N)
  123                 the lease could not be renewed in time, and the command was stopped
  124                 no slot came within --wait
  125                 jobgate failed (one line on standard error says why)
  126                 the command could not be executed
  127                 the command was not found
  128+N               jobgate itself got signal N while waiting for a slot";

pub use crate::version::VERSION;

#[derive(Debug, Parser)]
#[command(
    name = "jobgate",
    version = VERSION.as_str(),
    about = "At most N jobs at once, anywhere: a semaphore on one object in S3, GCS or Azure"
)]
pub struct Cli {
    #[command(subcommand)]
    command: Command,
    /// More logging (-v: info, plus the AWS SDK's detail of store errors; -vv: debug). RUST_LOG overrides.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    verbose: u8,
    /// Log lines as text or as JSON objects (for log collectors).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "JOBGATE_LOG_FORMAT")]
    log_format: LogFormat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Wait for a slot, run a command in it, release the slot when it exits.
    #[command(after_long_help = RUN_AFTER_HELP)]
    Run(run::RunArgs),
    /// Show the limit, the holders and the agents of a ledger; with GROUP, a
    /// ConcurrencyGroup's ledger beside this cluster's view of it.
    Status(status::StatusArgs),
    /// Release a holder's slot by hand (e.g. after a crash, before the lease ends).
    Release(status::ReleaseArgs),
    /// Change a ledger's limit now, for every agent and cluster that shares it.
    Limit(limit::LimitArgs),
    /// Check that a bucket really enforces conditional writes, atomically.
    Doctor(doctor::DoctorArgs),
    /// Print the ConcurrencyGroup CustomResourceDefinition (YAML).
    Crd,
    /// Run the Kubernetes operator: admit suspended Jobs of ConcurrencyGroups.
    Controller(Box<controller::ControllerArgs>),
    /// Print a shell completion script (e.g. `jobgate completions bash >
    /// /etc/bash_completion.d/jobgate`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// The guard that `jobgate run` puts between itself and the command.
    #[command(name = crate::process::GUARD_SUBCOMMAND, hide = true)]
    Guard(crate::process::GuardArgs),
}

/// Where the ledger is and how to reach it. Each cloud's usual environment
/// applies: AWS_REGION, AWS_ENDPOINT_URL, AWS_PROFILE, ... for S3;
/// GOOGLE_APPLICATION_CREDENTIALS and STORAGE_EMULATOR_HOST for GCS;
/// AZURE_CLIENT_ID, AZURE_TENANT_ID, AZURE_FEDERATED_TOKEN_FILE,
/// AZURE_STORAGE_ACCOUNT_KEY, ... for Azure.
#[derive(Debug, Args, Clone)]
pub struct StoreArgs {
    /// s3://BUCKET/KEY, gs://BUCKET/KEY, az://ACCOUNT/CONTAINER/KEY or file:///PATH
    #[arg(long, env = "JOBGATE_LEDGER", default_value_t = default_ledger())]
    ledger: String,
    /// The store's endpoint when it is not the cloud's own: an
    /// S3-compatible store (default: AWS, or AWS_ENDPOINT_URL), a GCS
    /// emulator, or an Azure blob service URL.
    #[arg(long = "endpoint-url", value_name = "URL")]
    endpoint: Option<String>,
    /// AWS region (default: AWS_REGION / profile, else us-east-1).
    #[arg(long)]
    region: Option<String>,
    /// Path-style S3 addressing (default: on when an endpoint is set).
    #[arg(long, value_name = "BOOL", env = "JOBGATE_S3_PATH_STYLE")]
    path_style: Option<bool>,
}

/// The embedded default: a ledger in the user's cache directory.
fn default_ledger() -> String {
    let base = std::env::var("XDG_CACHE_HOME")
        .ok()
        .filter(|s| !s.is_empty())
        .or_else(|| std::env::var("HOME").ok().map(|h| format!("{h}/.cache")))
        .unwrap_or_else(|| "/tmp".into());
    format!("file://{base}/jobgate/default.json")
}

impl StoreArgs {
    pub async fn open(&self) -> Result<(DynStore, LedgerUrl)> {
        let url = LedgerUrl::parse(&self.ledger)?;
        let store: DynStore = match &url {
            LedgerUrl::S3 { bucket, .. } => {
                crate::store::s3::ca::from_env().map_err(Error::Io)?;
                let opts = S3Options {
                    endpoint: self.endpoint.clone(),
                    region: self.region.clone(),
                    force_path_style: self.path_style,
                    ..Default::default()
                };
                Arc::new(S3Store::connect(bucket, &opts).await)
            }
            LedgerUrl::Gcs { bucket, .. } => {
                let opts = GcsOptions {
                    endpoint: self.endpoint.clone(),
                    ..Default::default()
                };
                Arc::new(GcsStore::connect(bucket, &opts)?)
            }
            LedgerUrl::Azure {
                account, container, ..
            } => {
                let opts = AzureOptions {
                    endpoint: self.endpoint.clone(),
                    ..Default::default()
                };
                Arc::new(AzureStore::connect(account, container, &opts)?)
            }
            LedgerUrl::File { dir, .. } => {
                if self.ledger == default_ledger() {
                    std::fs::create_dir_all(dir).map_err(|e| Error::InvalidUrl {
                        url: self.ledger.clone(),
                        why: format!("cannot create {}: {e}", dir.display()),
                    })?;
                }
                Arc::new(FileStore::new(dir.clone()))
            }
        };
        Ok((store, url))
    }
}

fn print_crd() -> Result<u8> {
    let yaml = crate::operator::crd::crd_yaml()
        .map_err(|e| Error::Io(format!("rendering the CRD: {e}")))?;
    print!("{yaml}");
    Ok(0)
}

pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (examples: 30s, 5m, 1h30m)"))
}

/// The log filter unless RUST_LOG is set. Without -v the AWS SDK and its
/// HTTP stack stay quiet: their warnings (e.g. that IMDS gave no region, off
/// EC2) are noise next to jobgate's own one-line error, which already names
/// the cause. -v shows them, along with the SDK's detail for each failed
/// store request (logged by `jobgate::store` at debug).
fn default_filter(verbose: u8, service: bool) -> &'static str {
    match verbose {
        // A long-running service reports what it does (and keeps the SDK's
        // errors); a command stays quiet.
        0 if service => "info,aws=error,hyper=error,h2=error,rustls=error",
        // kube's client logs a failed request itself; `jobgate status`
        // reports it in its one line.
        0 => "warn,aws=off,hyper=off,h2=off,rustls=off,kube_client=off",
        1 => "info,jobgate=info,jobgate::store=debug",
        _ => "debug,jobgate=debug,aws=info,hyper=info",
    }
}

fn init_logging(verbose: u8, format: LogFormat, service: bool) {
    let default = default_filter(verbose, service);
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false);
    match format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().init(),
    }
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let service = matches!(cli.command, Command::Controller(_));
    init_logging(cli.verbose, cli.log_format, service);
    // The guard is synchronous: no runtime, no threads.
    let command = match cli.command {
        Command::Guard(args) => return ExitCode::from(crate::process::guard_main(args)),
        command => command,
    };
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("jobgate: error: cannot start the runtime: {e}");
            return ExitCode::from(EXIT_ERROR);
        }
    };
    let result = runtime.block_on(async move {
        match command {
            Command::Run(args) => run::run(args).await,
            Command::Status(args) => status::status(args).await,
            Command::Release(args) => status::release(args).await,
            Command::Limit(args) => limit::limit(args).await,
            Command::Doctor(args) => doctor::doctor(args).await,
            Command::Crd => print_crd(),
            Command::Completions { shell } => {
                clap_complete::generate(
                    shell,
                    &mut <Cli as clap::CommandFactory>::command(),
                    "jobgate",
                    &mut std::io::stdout(),
                );
                Ok(0)
            }
            Command::Controller(args) => controller::controller(*args).await,
            // Handled above, before the runtime.
            Command::Guard(_) => Ok(EXIT_ERROR),
        }
    });
    // Do not wait for lingering background tasks (e.g. a slow S3 request).
    runtime.shutdown_timeout(Duration::from_millis(200));
    match result {
        Ok(code) => ExitCode::from(code),
        Err(e) => {
            eprintln!("jobgate: error: {e}");
            ExitCode::from(EXIT_ERROR)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_default_filter_parses() {
        for verbose in 0..3 {
            for service in [false, true] {
                let f = default_filter(verbose, service);
                assert!(tracing_subscriber::EnvFilter::try_new(f).is_ok(), "{f}");
            }
        }
    }
}
