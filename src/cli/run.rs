//! `jobgate run`: the reference design's worker, done right.

use std::io::IsTerminal;
use std::os::unix::process::ExitStatusExt;
use std::sync::Arc;
use std::time::Duration;

use clap::{Args, ValueEnum};
use nix::sys::signal::Signal;
use tokio::signal::unix::{SignalKind, signal};
use tracing::{info, warn};

use super::limit::parse_limit;
use super::signal_origin;
use super::{EXIT_ERROR, EXIT_LEASE_LOST, EXIT_WAIT_TIMEOUT, StoreArgs, parse_duration};
use crate::agent::{hostname, new_agent_id};
use crate::clock::SystemClocks;
use crate::doctor::ensure_conditional_writes;
use crate::error::{Error, Result};
use crate::process::Guarded;
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
    #[arg(long, allow_negative_numbers = true)]
    limit: Option<i64>,
    /// How many units of the limit this command takes (for commands that
    /// cost more than others). It waits until that many are free. Other
    /// commands do not wait behind it: a stream of lighter ones can delay it.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..))]
    slots: u32,
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
    /// Test builds only (feature `test-flags`): a file holding milliseconds
    /// added to the boot-time clock, so that a test can make this process
    /// see a suspend it never had.
    #[cfg(feature = "test-flags")]
    #[arg(long, hide = true, value_name = "FILE")]
    unsafe_test_extra_boot_time_file: Option<std::path::PathBuf>,
    /// The command and its arguments.
    #[arg(required = true, last = true)]
    command: Vec<String>,
}

/// Leases shorter than this leave too little time between the safety
/// deadline (60% of the lease) and the store's request timeouts.
const MIN_LEASE: Duration = Duration::from_secs(5);

pub async fn run(args: RunArgs) -> Result<u8> {
    let limit = args.limit.map(parse_limit).transpose()?;
    if let Some(limit) = limit.filter(|l| args.slots > *l) {
        return Err(Error::InvalidArgument(format!(
            "--slots {} is more than --limit {limit}: it could never run; lower --slots or raise --limit",
            args.slots
        )));
    }
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
    // Waits cost writes, so they are not recorded at first; one that lasts a
    // whole lease is, so that agents that swap slots in one write (the
    // operator) leave this one a free slot instead of starving it.
    config.record_wait_after = Some(args.lease);
    #[cfg(feature = "test-flags")]
    let extra_boot_time_file = args.unsafe_test_extra_boot_time_file.clone();
    #[cfg(not(feature = "test-flags"))]
    let extra_boot_time_file = None;
    config.clocks = Arc::new(SystemClocks {
        extra_boot_time_file,
    });
    let sem = Semaphore::new(store, url.key(), config);

    let mut signals = Signals::new()?;

    info!(holder, ledger = %url, "waiting for a slot");
    let acquire = sem.acquire_slots(&holder, args.slots);
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
        sig = signals.recv() => {
            // At once, even if the store does not answer: a grant that may
            // have landed meanwhile runs out with the lease, as if killed.
            let _ = tokio::time::timeout(Duration::from_secs(1), sem.shutdown()).await;
            return Ok(128 + sig as u8);
        }
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
        super::signal_origin::watch().map_err(io_error)?;
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

async fn supervise(
    args: &RunArgs,
    ledger: &str,
    mut permit: Permit,
    signals: &mut Signals,
) -> Result<u8> {
    let interactive = std::io::stdin().is_terminal();
    // Should the guard itself be killed, what it leaves comes to us.
    if let Err(e) = crate::process::become_subreaper() {
        warn!(error = %e, "cannot become a subreaper; if the guard is killed, what the command started may outlive it");
    }
    let env = [
        ("JOBGATE_HOLDER", permit.holder.clone()),
        ("JOBGATE_FENCING_TOKEN", permit.token.to_string()),
        ("JOBGATE_LEDGER", ledger.to_string()),
    ];
    let mut guard = Guarded::spawn(&args.command, &env, interactive, grace(args.lease))
        .map_err(|e| Error::Io(format!("cannot start the guard process: {e}")))?;
    // As late as possible, with the guard already up: a permit can be lost
    // before it is used (its grant answered after the lease ran out, or
    // renewals failing since), and a lost slot may already be someone
    // else's. The client marks a late grant lost at its next step, right
    // after handing it out.
    if permit.is_lost() {
        guard.kill_all();
        let _ = guard.wait().await;
        eprintln!(
            "jobgate: the slot was lost before the command started (the lease could not be vouched for); not running it"
        );
        return Ok(EXIT_LEASE_LOST);
    }
    if let Err(e) = guard.start() {
        guard.kill_all();
        let _ = guard.wait().await;
        return Err(Error::Io(format!("cannot start the guard process: {e}")));
    }
    let mut lease_lost = false;
    loop {
        tokio::select! {
            status = guard.wait() => {
                let status = status.map_err(io_error)?;
                if let Some(sig) = status.signal() {
                    // Only a signal to the guard itself ends it like this;
                    // what it left is ours, jobgate being a subreaper.
                    let stopped = tokio::task::spawn_blocking(crate::process::stop_orphans)
                        .await
                        .unwrap_or(0);
                    let name = Signal::try_from(sig).map_or_else(|_| sig.to_string(), |s| s.to_string());
                    return Err(Error::Io(format!(
                        "the guard process was killed by {name}; stopped {stopped} process(es) of the command it left"
                    )));
                }
                if lease_lost && args.on_lease_loss == OnLeaseLoss::Stop {
                    return Ok(EXIT_LEASE_LOST);
                }
                return Ok(exit_code(status));
            }
            sig = signals.recv() => {
                // A terminal's signal has reached an interactive command
                // already; one sent to jobgate alone has not.
                if signal_origin::forward(interactive, signal_origin::sent_by_a_process(sig)) {
                    guard.signal(sig);
                }
            }
            _ = permit.lost(), if !lease_lost => {
                lease_lost = true;
                match args.on_lease_loss {
                    OnLeaseLoss::Keep => {
                        eprintln!("jobgate: warning: lease lost; the command keeps running (--on-lease-loss=keep) and the limit may be exceeded");
                    }
                    OnLeaseLoss::Stop => {
                        eprintln!("jobgate: lease could not be renewed; stopping the command so the limit holds");
                        stop(&mut guard, args.lease).await;
                    }
                }
            }
        }
    }
}

/// Between SIGTERM and SIGKILL: short enough that a command stopped on
/// lease loss is gone before the lease could run out at the other agents
/// (the loss is declared at 60% of the lease).
fn grace(lease: Duration) -> Duration {
    lease.mul_f64(0.2)
}

/// SIGTERM to every process of the command, then SIGKILL to all of them if
/// the command has not exited within the grace.
async fn stop(guard: &mut Guarded, lease: Duration) {
    guard.signal(Signal::SIGTERM);
    if tokio::time::timeout(grace(lease), guard.wait())
        .await
        .is_err()
    {
        guard.kill_all();
    }
}

/// The guard exits with the command's code, or 128+N if the command died
/// of signal N.
fn exit_code(status: std::process::ExitStatus) -> u8 {
    status.code().map_or(EXIT_ERROR, |code| code as u8)
}

fn io_error(e: std::io::Error) -> Error {
    Error::Io(e.to_string())
}
