//! The guard: a small process between jobgate and the command that owns the
//! command's whole process tree.
//!
//! jobgate starts itself again as `jobgate __guard` (synchronous code, no
//! runtime). The guard is the child subreaper of the command, so whatever
//! the command starts stays below it, even after leaving the command's
//! process group or session, or double-forking. It
//!
//! - runs the command once jobgate says so over a pipe, and passes on the
//!   signals jobgate forwards to every process of the command;
//! - learns that jobgate is gone from that pipe: only jobgate holds its
//!   write end, so end of file means jobgate exited or was killed, even by
//!   SIGKILL (a death signal would fire when the *thread* that spawned us
//!   exits, and tokio's threads come and go). It then SIGKILLs every
//!   process of the command, reaps them and exits;
//! - once the command exits, stops what it left running (SIGTERM, then
//!   SIGKILL after a grace), and exits with the command's status (its exit
//!   code, or 128+N for signal N) so that jobgate's exit codes stay as
//!   documented.
//!
//! The guard runs in a process group of its own, so that a signal to
//! jobgate's group does not reach it, and is named `jg-guard` (its process
//! name and the first word of its command line) so that `pkill jobgate` and
//! `pkill -f jobgate` do not either: it must outlive jobgate to clean up.

use std::ffi::OsString;
use std::io::{ErrorKind, PipeReader, PipeWriter, Read, Write};
use std::os::fd::{AsFd, AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::process::ExitStatus;
use std::time::{Duration, Instant};

use clap::Args;
use nix::errno::Errno;
use nix::fcntl::{FcntlArg, FdFlag, fcntl};
use nix::poll::{PollFd, PollFlags, PollTimeout, poll};
use nix::sys::prctl;
use nix::sys::signal::{SigSet, SigmaskHow, Signal, kill, sigprocmask};
use nix::sys::signalfd::{SfdFlags, SignalFd};
use nix::sys::wait::{WaitPidFlag, WaitStatus, waitpid};
use nix::unistd::{Pid, getpgrp};
use tracing::warn;

use super::tree;
use crate::exit::{EXIT_ERROR, EXIT_NOT_EXECUTABLE, EXIT_NOT_FOUND};

/// The hidden subcommand that runs the guard.
pub(crate) const SUBCOMMAND: &str = "__guard";
/// What jobgate writes to start the command.
const GO: u8 = b'g';
/// The signals the guard passes on to the command.
const FORWARDED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Arguments of `jobgate __guard`, which only jobgate itself passes.
#[derive(Debug, Args)]
pub(crate) struct GuardArgs {
    /// Read end of the pipe whose write end only jobgate holds.
    #[arg(long)]
    fd: RawFd,
    /// Between SIGTERM and SIGKILL for what the command leaves running.
    #[arg(long)]
    grace_ms: u64,
    /// Run the command in this process group (the terminal's foreground
    /// group) instead of a new one.
    #[arg(long)]
    join_group: Option<i32>,
    #[arg(required = true, last = true)]
    command: Vec<OsString>,
}

/// Why the guard could not do its job.
#[derive(Debug, thiserror::Error)]
enum GuardError {
    #[error("fd {0} is not the pipe from jobgate: {1}")]
    Pipe(RawFd, Errno),
    #[error("cannot become the subreaper of the command's processes: {0}")]
    Subreaper(Errno),
    #[error("cannot watch signals: {0}")]
    Signals(Errno),
    #[error("cannot list processes in /proc, which is needed to find the command's processes: {0}")]
    Proc(#[from] procfs::ProcError),
    #[error("waiting for the command's processes: {0}")]
    Wait(Errno),
    #[error("waiting for jobgate: {0}")]
    Poll(Errno),
}

/// Runs the guard; returns the exit code.
pub(crate) fn guard_main(args: GuardArgs) -> u8 {
    let mut guard = match Guard::new(&args) {
        Ok(g) => g,
        Err(e) => {
            eprintln!("jobgate: error: {e}");
            return EXIT_ERROR;
        }
    };
    match guard.run(&args.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("jobgate: error: {e}");
            // Whatever went wrong, nothing of the command may outlive us.
            let _ = guard.kill_all();
            EXIT_ERROR
        }
    }
}

struct Guard {
    me: Pid,
    /// From jobgate: `GO`, then end of file when jobgate is gone.
    line: PipeReader,
    signals: SignalFd,
    grace: Duration,
    join_group: Option<Pid>,
    /// The signal mask jobgate was started with, which the command gets.
    inherited: SigSet,
    /// The command's process group when it has one of its own.
    group: Option<Pid>,
    command: Option<Pid>,
    /// The command's exit code once it has been reaped.
    status: Option<u8>,
}

enum Event {
    /// jobgate is gone, or wants everything stopped.
    LineClosed,
    Signals,
    Timeout,
    Nothing,
}

impl Guard {
    fn new(args: &GuardArgs) -> Result<Self, GuardError> {
        // SAFETY: jobgate passes the read end it left open for us and
        // nothing else in this process uses that descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(args.fd) };
        // The command has no business with it.
        fcntl(&fd, FcntlArg::F_SETFD(FdFlag::FD_CLOEXEC))
            .map_err(|e| GuardError::Pipe(args.fd, e))?;
        prctl::set_child_subreaper(true).map_err(GuardError::Subreaper)?;
        let mut watched = SigSet::empty();
        for sig in FORWARDED {
            watched.add(sig);
        }
        watched.add(Signal::SIGCHLD);
        // Blocked terminal-stop signals let the guard, in a background
        // group, write an error line instead of stopping.
        let mut blocked = watched;
        blocked.add(Signal::SIGTTOU);
        blocked.add(Signal::SIGTTIN);
        let mut inherited = SigSet::empty();
        sigprocmask(SigmaskHow::SIG_BLOCK, Some(&blocked), Some(&mut inherited))
            .map_err(GuardError::Signals)?;
        let signals =
            SignalFd::with_flags(&watched, SfdFlags::SFD_NONBLOCK | SfdFlags::SFD_CLOEXEC)
                .map_err(GuardError::Signals)?;
        // Fail now rather than when the command's processes must be found.
        tree::descendants(Pid::this())?;
        // Best effort: only the name changes.
        let _ = prctl::set_name(c"jg-guard");
        Ok(Guard {
            me: Pid::this(),
            line: PipeReader::from(fd),
            signals,
            grace: Duration::from_millis(args.grace_ms),
            join_group: args.join_group.map(Pid::from_raw),
            inherited,
            group: None,
            command: None,
            status: None,
        })
    }

    fn run(&mut self, command: &[OsString]) -> Result<u8, GuardError> {
        if !self.wait_for_go() {
            // jobgate gave up before the start (e.g. the slot was lost).
            return Ok(EXIT_ERROR);
        }
        let pid = match self.spawn(command) {
            Ok(pid) => pid,
            Err(code) => return Ok(code),
        };
        self.command = Some(pid);
        if self.join_group.is_none() {
            self.group = Some(pid);
        }
        while self.status.is_none() {
            match self.next_event(None)? {
                Event::LineClosed => {
                    self.kill_all()?;
                    return Ok(self.code());
                }
                Event::Signals => self.on_signals()?,
                Event::Timeout | Event::Nothing => {}
            }
        }
        self.finish()
    }

    /// Blocks until jobgate says go (true) or is gone (false). Signals wait
    /// in the signalfd meanwhile.
    fn wait_for_go(&mut self) -> bool {
        let mut byte = [0u8; 1];
        loop {
            match self.line.read(&mut byte) {
                Ok(0) => return false,
                Ok(_) => return byte[0] == GO,
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return false,
            }
        }
    }

    fn spawn(&self, command: &[OsString]) -> Result<Pid, u8> {
        let name = command[0].to_string_lossy();
        let mut cmd = std::process::Command::new(&command[0]);
        cmd.args(&command[1..]);
        {
            use std::os::unix::process::CommandExt;
            cmd.process_group(self.join_group.map_or(0, Pid::as_raw));
            // std does not reset the mask before exec, and the guard's
            // blocked signals would reach the command as blocked: a
            // `kill -TERM $$` would do nothing.
            let inherited = self.inherited;
            // SAFETY: sigprocmask is async-signal-safe.
            unsafe {
                cmd.pre_exec(move || {
                    sigprocmask(SigmaskHow::SIG_SETMASK, Some(&inherited), None)?;
                    Ok(())
                });
            }
        }
        // Should the guard die (only SIGKILL can make it), the command's
        // first process goes with it; jobgate, a subreaper too, stops the
        // rest.
        super::die_with_parent(&mut cmd);
        match cmd.spawn() {
            // The child is reaped by `waitpid` below, not through `Child`.
            Ok(child) => Ok(Pid::from_raw(child.id() as i32)),
            Err(e) if e.kind() == ErrorKind::NotFound => {
                eprintln!("jobgate: command not found: {name}");
                Err(EXIT_NOT_FOUND)
            }
            Err(e) => {
                eprintln!("jobgate: cannot run {name}: {e}");
                Err(EXIT_NOT_EXECUTABLE)
            }
        }
    }

    /// Waits for jobgate's pipe or a signal, until `deadline` if any.
    fn next_event(&mut self, deadline: Option<Instant>) -> Result<Event, GuardError> {
        let timeout = match deadline {
            None => PollTimeout::NONE,
            Some(d) => {
                let left = d.saturating_duration_since(Instant::now());
                // Round up so that a wait never ends just short of `d`.
                PollTimeout::try_from(left + Duration::from_millis(1)).unwrap_or(PollTimeout::MAX)
            }
        };
        let (line, signals) = {
            let mut fds = [
                PollFd::new(self.line.as_fd(), PollFlags::POLLIN),
                PollFd::new(self.signals.as_fd(), PollFlags::POLLIN),
            ];
            match poll(&mut fds, timeout) {
                Ok(0) => return Ok(Event::Timeout),
                Ok(_) => {}
                Err(Errno::EINTR) => return Ok(Event::Nothing),
                Err(e) => return Err(GuardError::Poll(e)),
            }
            let ready = |fd: &PollFd| fd.revents().is_some_and(|r| !r.is_empty());
            (ready(&fds[0]), ready(&fds[1]))
        };
        if line {
            let mut buf = [0u8; 64];
            match self.line.read(&mut buf) {
                Ok(0) => return Ok(Event::LineClosed),
                Ok(_) => {}
                Err(e) if e.kind() == ErrorKind::Interrupted => {}
                Err(_) => return Ok(Event::LineClosed),
            }
        }
        Ok(if signals {
            Event::Signals
        } else {
            Event::Nothing
        })
    }

    fn on_signals(&mut self) -> Result<(), GuardError> {
        let mut child_exited = false;
        while let Some(info) = self.signals.read_signal().map_err(GuardError::Signals)? {
            match Signal::try_from(info.ssi_signo as i32) {
                Ok(Signal::SIGCHLD) => child_exited = true,
                Ok(sig) => self.forward(sig),
                Err(_) => {}
            }
        }
        if child_exited {
            self.reap()?;
        }
        Ok(())
    }

    /// Passes a signal on to every process of the command.
    fn forward(&self, sig: Signal) {
        if let Err(e) = tree::signal_all(self.me, self.group, sig) {
            warn!(error = %e, signal = %sig, "could not pass the signal on to every process of the command");
        }
    }

    /// Reaps every child that has exited, noting the command's status;
    /// returns whether any child is left.
    fn reap(&mut self) -> Result<bool, GuardError> {
        loop {
            match waitpid(None, Some(WaitPidFlag::WNOHANG)) {
                Ok(WaitStatus::StillAlive) => return Ok(true),
                Ok(status) => self.note(status),
                Err(Errno::ECHILD) => return Ok(false),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(GuardError::Wait(e)),
            }
        }
    }

    fn note(&mut self, status: WaitStatus) {
        if status.pid().is_none() || status.pid() != self.command {
            return;
        }
        self.status = match status {
            WaitStatus::Exited(_, code) => Some(code as u8),
            WaitStatus::Signaled(_, sig, _) => Some(128u8.wrapping_add(sig as u8)),
            _ => self.status,
        };
    }

    fn code(&self) -> u8 {
        // Not reaped means it was killed by us.
        self.status
            .unwrap_or(128u8.wrapping_add(Signal::SIGKILL as u8))
    }

    /// The command has exited: what it left running still belongs to its
    /// slot, so it is stopped before the guard exits and jobgate releases
    /// the slot.
    fn finish(&mut self) -> Result<u8, GuardError> {
        if !self.reap()? {
            return Ok(self.code());
        }
        self.forward(Signal::SIGTERM);
        // A stopped process would only see SIGTERM once continued.
        self.forward(Signal::SIGCONT);
        let deadline = Instant::now() + self.grace;
        loop {
            if !self.reap()? {
                return Ok(self.code());
            }
            match self.next_event(Some(deadline))? {
                Event::LineClosed | Event::Timeout => break,
                Event::Signals => self.on_signals()?,
                Event::Nothing => {}
            }
        }
        self.kill_all()?;
        Ok(self.code())
    }

    /// SIGKILLs every process of the command and reaps them all. Returns
    /// once the guard has no child left, which means nothing is left below
    /// it: a live process below the guard always has an ancestor that is
    /// the guard's child.
    fn kill_all(&mut self) -> Result<(), GuardError> {
        loop {
            if let Some(group) = self.group {
                let _ = nix::sys::signal::killpg(group, Signal::SIGKILL);
            }
            // Should /proc fail now, the group kill and the death signal
            // of the command's first process are what is left.
            for p in tree::descendants(self.me).unwrap_or_default() {
                let _ = kill(p.pid, Signal::SIGKILL);
            }
            // By the time a child is returned, its own children are ours
            // and the next round finds them.
            match waitpid(None, None) {
                Ok(status) => {
                    self.note(status);
                    if !self.reap()? {
                        return Ok(());
                    }
                }
                Err(Errno::ECHILD) => return Ok(()),
                Err(Errno::EINTR) => {}
                Err(e) => return Err(GuardError::Wait(e)),
            }
        }
    }
}

/// jobgate's side: the guard process and the pipe to it.
pub(crate) struct Guarded {
    child: tokio::process::Child,
    /// Dropping it (or jobgate dying) tells the guard to stop everything.
    line: Option<PipeWriter>,
}

impl Guarded {
    /// Starts the guard for `command`; it waits for `start` before running
    /// the command. `interactive` keeps the command in the terminal's
    /// foreground process group (jobgate's), so it can read the terminal
    /// and gets Ctrl-C from it.
    pub(crate) fn spawn(
        command: &[String],
        env: &[(&str, String)],
        interactive: bool,
        grace: Duration,
    ) -> std::io::Result<Self> {
        let (reader, writer) = std::io::pipe()?;
        let fd = reader.as_raw_fd();
        // The running binary itself, even if its file was replaced or
        // removed since jobgate started.
        // Named `jg-guard` on its command line too (its process name is set
        // when it starts), so that `pkill -f jobgate`, which kills jobgate,
        // misses the guard that must outlive it to stop the command's tree.
        let mut cmd = tokio::process::Command::new("/proc/self/exe");
        cmd.arg0("jg-guard")
            .arg(SUBCOMMAND)
            .arg("--fd")
            .arg(fd.to_string())
            .arg("--grace-ms")
            .arg(grace.as_millis().to_string());
        if interactive {
            cmd.arg("--join-group").arg(getpgrp().as_raw().to_string());
        }
        cmd.arg("--")
            .args(command)
            .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
            .process_group(0);
        // Both ends are close-on-exec; only the guard gets the read end.
        // SAFETY: fcntl is async-signal-safe, and `fd` stays open in the
        // parent until the child has been spawned.
        unsafe {
            cmd.pre_exec(move || {
                let fd = BorrowedFd::borrow_raw(fd);
                fcntl(fd, FcntlArg::F_SETFD(FdFlag::empty()))?;
                Ok(())
            });
        }
        let child = cmd.spawn()?;
        drop(reader);
        Ok(Guarded {
            child,
            line: Some(writer),
        })
    }

    /// Lets the guard run the command.
    pub(crate) fn start(&mut self) -> std::io::Result<()> {
        match &mut self.line {
            Some(line) => line.write_all(&[GO]),
            None => Err(std::io::Error::new(
                ErrorKind::BrokenPipe,
                "the guard was already told to stop",
            )),
        }
    }

    /// Passes a signal on to every process of the command, through the
    /// guard.
    pub(crate) fn signal(&self, sig: Signal) {
        // No id once reaped: the pid may belong to someone else by now.
        if let Some(pid) = self.child.id() {
            let _ = kill(Pid::from_raw(pid as i32), sig);
        }
    }

    /// Makes the guard SIGKILL every process of the command and exit, as
    /// when jobgate dies. Also cancels a command not yet started.
    pub(crate) fn kill_all(&mut self) {
        self.line = None;
    }

    pub(crate) async fn wait(&mut self) -> std::io::Result<ExitStatus> {
        self.child.wait().await
    }
}
