//! `jobgate run`: the reference design's worker, done right.

use std::io::{ErrorKind, IsTerminal};
use std::os::unix::process::ExitStatusExt;
use std::time::Duration;

use clap::{Args, ValueEnum};
use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;
use tokio::process::{Child, Command};
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::{
    EXIT_ERROR, EXIT_LEASE_LOST, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND, EXIT_WAIT_TIMEOUT, StoreArgs,
    parse_duration,
};
use crate::agent::{hostname, new_agent_id};
use crate::doctor::ensure_conditional_writes;
use crate::error::{Error, Result};
use crate::semaphore::{Config, Permit, Semaphore};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLeaseLoss {
    /// Stop the command before the lease could run out elsewhere (keeps the limit).
    Stop,
    /// Let the command go on (the limit may be exceeded).
    Keep,
}

#[derive(Debug, Args)]
pub struct RunArgs {
    #[command(flatten)]
    store: StoreArgs,
    /// The most commands that may hold a slot at once (creates the ledger if needed).
    #[arg(long)]
    limit: Option<u64>,
    /// Give up waiting for a slot after this long (exit 124). Default: wait forever.
    #[arg(long, value_parser = parse_duration)]
    wait: Option<Duration>,
    /// Holder id; must be unique. Default: this process's agent id.
    #[arg(long)]
    holder: Option<String>,
    /// How long others keep our slot after we stop renewing it.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    lease: Duration,
    /// How often to re-read the ledger while waiting for a slot.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    poll: Duration,
    /// What to do when the lease cannot be renewed in time.
    #[arg(long, value_enum, default_value = "stop")]
    on_lease_loss: OnLeaseLoss,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// Leases shorter than this leave too little time between the safety
/// deadline (60% of the lease) and the store's request timeouts.
const MIN_LEASE: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> Result<u8> {
    if args.limit == Some(0) {
        return Err(Error::InvalidLimit(0));
    }
    let limit = match args.limit {
        Some(n) => Some(u32::try_from(n).map_err(|_| Error::InvalidLimit(n))?),
        None => None,
    };
    if args.lease < MIN_LEASE {
        return Err(Error::InvalidArgument(format!(
            "--lease {} is too short: at least {} (renewals must fit well inside it)",
            humantime::format_duration(args.lease),
            humantime::format_duration(MIN_LEASE)
        )));
    }
    if args.poll < Duration::from_millis(10) {
        return Err(Error::InvalidArgument(
            "--poll must be at least 10ms".into(),
        ));
    }
    let (store, url) = args.store.open().await?;
    ensure_conditional_writes(&store, url.key()).await?;

    let agent = new_agent_id();
    let holder = args.holder.clone().unwrap_or_else(|| agent.clone());
    let mut config = Config::new(agent);
    config.description = Some(format!(
        "jobgate run on {} (pid {})",
        hostname(),
        std::process::id()
    ));
    config.lease = args.lease;
    config.limit = limit;
    config.poll = args.poll;
    let sem = Semaphore::new(store, url.key(), config);

    let mut signals = Signals::new()?;

    info!(holder, ledger = %url, "waiting for a slot");
    let acquire = sem.acquire(&holder);
    let waited = async {
        match args.wait {
            Some(d) => tokio::time::timeout(d, acquire).await.ok(),
            None => Some(acquire.await),
        }
    };
    let permit = tokio::select! {
        r = waited => match r {
            None => {
                eprintln!("jobgate: no slot free in {} after {}", url, humantime::format_duration(args.wait.unwrap_or_default()));
                sem.shutdown().await;
                return Ok(EXIT_WAIT_TIMEOUT);
            }
            Some(Err(e)) => {
                sem.shutdown().await;
                return Err(e);
            }
            Some(Ok(p)) => p,
        },
        sig = signals.recv() => { sem.shutdown().await; return Ok(128 + sig as u8) }
    };
    info!(holder, token = permit.token, "slot granted");

    let code = supervise(&args, &url.to_string(), permit, &mut signals).await;
    let mut released = sem.release(&holder).await;
    for attempt in 1..3 {
        if released.is_ok() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500 * attempt)).await;
        released = sem.release(&holder).await;
    }
    if let Err(e) = released {
        warn!(error = %e, "could not release the slot; it will be freed when the lease runs out");
        eprintln!("jobgate: warning: could not release slot {holder}: {e}");
    }
    sem.shutdown().await;
    code
}

/// The signals `jobgate run` passes on to its command.
struct Signals {
    int: tokio::signal::unix::Signal,
    term: tokio::signal::unix::Signal,
    hup: tokio::signal::unix::Signal,
    quit: tokio::signal::unix::Signal,
}

impl Signals {
    fn new() -> Result<Self> {
        let on = |kind| signal(kind).map_err(io_error);
        Ok(Signals {
            int: on(SignalKind::interrupt())?,
            term: on(SignalKind::terminate())?,
            hup: on(SignalKind::hangup())?,
            quit: on(SignalKind::quit())?,
        })
    }

    async fn recv(&mut self) -> Signal {
        tokio::select! {
            _ = self.int.recv() => Signal::SIGINT,
            _ = self.term.recv() => Signal::SIGTERM,
            _ = self.hup.recv() => Signal::SIGHUP,
            _ = self.quit.recv() => Signal::SIGQUIT,
        }
    }
}

/// How signals reach the command. Non-interactive commands run in a process
/// group of their own so that stopping them on lease loss also stops their
/// children; interactive ones stay in the terminal's group so they can read
/// from it, and get Ctrl-C from the terminal itself.
struct Target {
    pid: i32,
    group: bool,
}

impl Target {
    fn send(&self, sig: Signal) {
        let pid = Pid::from_raw(self.pid);
        let _ = if self.group {
            killpg(pid, sig)
        } else {
            kill(pid, sig)
        };
    }

    fn forward(&self, sig: Signal) {
        // The terminal already sent Ctrl-C to an interactive command.
        if !self.group && sig == Signal::SIGINT {
            return;
        }
        self.send(sig);
    }
}

async fn supervise(
    args: &RunArgs,
    ledger: &str,
    mut permit: Permit,
    signals: &mut Signals,
) -> Result<u8> {
    let interactive = std::io::stdin().is_terminal();
    let mut cmd = Command::new(&args.command[0]);
    cmd.args(&args.command[1..])
        .env("JOBGATE_HOLDER", &permit.holder)
        .env("JOBGATE_FENCING_TOKEN", permit.token.to_string())
        .env("JOBGATE_LEDGER", ledger);
    if !interactive {
        cmd.process_group(0);
    }
    // If jobgate itself dies nobody renews the lease, so the command must
    // not outlive it.
    crate::process::die_with_parent(cmd.as_std_mut());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) if e.kind() == ErrorKind::NotFound => {
            eprintln!("jobgate: command not found: {}", args.command[0]);
            return Ok(EXIT_NOT_FOUND);
        }
        Err(e) => {
            eprintln!("jobgate: cannot run {}: {e}", args.command[0]);
            return Ok(EXIT_NOT_EXECUTABLE);
        }
    };
    let target = Target {
        pid: child.id().map(|p| p as i32).unwrap_or(0),
        group: !interactive,
    };
    let mut lease_lost = false;
    loop {
        tokio::select! {
            status = child.wait() => {
                let status = status.map_err(io_error)?;
                if lease_lost && args.on_lease_loss == OnLeaseLoss::Stop {
                    return Ok(EXIT_LEASE_LOST);
                }
                return Ok(exit_code(status));
            }
            sig = signals.recv() => target.forward(sig),
            _ = permit.lost(), if !lease_lost => {
                lease_lost = true;
                match args.on_lease_loss {
                    OnLeaseLoss::Keep => {
                        eprintln!("jobgate: warning: lease lost; the command keeps running (--on-lease-loss=keep) and the limit may be exceeded");
                    }
                    OnLeaseLoss::Stop => {
                        eprintln!("jobgate: lease could not be renewed; stopping the command so the limit holds");
                        stop(&mut child, &target, args.lease).await;
                    }
                }
            }
        }
    }
}

/// SIGTERM, then SIGKILL if the command has not exited well before the
/// lease could run out at the other agents.
async fn stop(child: &mut Child, target: &Target, lease: Duration) {
    target.send(Signal::SIGTERM);
    let grace = lease.mul_f64(0.2);
    if tokio::time::timeout(grace, child.wait()).await.is_err() {
        target.send(Signal::SIGKILL);
        let _ = child.start_kill();
    }
}

fn exit_code(status: std::process::ExitStatus) -> u8 {
    if let Some(code) = status.code() {
        return code as u8;
    }
    status
        .signal()
        .map(|s| 128u8.wrapping_add(s as u8))
        .unwrap_or(EXIT_ERROR)
}

fn io_error(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}
