//! Process handling that `jobgate run` needs for the command it wraps.
//!
//! A slot is free only when its work has stopped, so `jobgate run` owns the
//! command's whole process tree through a guard process (see `guard`): the
//! tree dies when jobgate dies, however it dies, and what the command
//! leaves running when it exits is stopped before the slot is released.

use std::collections::HashSet;
use std::process::Command;

use nix::sys::signal::{Signal, kill};
use nix::sys::wait::waitpid;
use nix::unistd::Pid;

mod guard;
mod tree;

pub(crate) use guard::{GuardArgs, Guarded, SUBCOMMAND as GUARD_SUBCOMMAND, guard_main};

/// Makes a spawned process get SIGKILL when the thread that spawned it
/// exits: if jobgate dies nobody renews the command's lease, so the command
/// must not outlive it.
pub fn die_with_parent(cmd: &mut Command) {
    use std::os::unix::process::CommandExt;
    let parent = std::process::id();
    // SAFETY: prctl and getppid are async-signal-safe, and the error is
    // built without allocating (the parent may be multi-threaded).
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(Signal::SIGKILL)?;
            // The parent may have died before the death signal was set.
            if nix::unistd::getppid().as_raw() as u32 != parent {
                return Err(nix::errno::Errno::ESRCH.into());
            }
            Ok(())
        });
    }
}

/// Makes orphans below this process come to it rather than to init, so
/// that what a killed guard leaves behind can still be found and stopped.
pub(crate) fn become_subreaper() -> nix::Result<()> {
    nix::sys::prctl::set_child_subreaper(true)
}

/// SIGKILLs every process below this one and reaps those re-parented to it;
/// returns how many were killed. For after the guard itself was killed
/// (jobgate being a subreaper, its orphans are ours). Blocking. Reaps only
/// the pids it found, never "any child": tokio reaps the children it
/// spawned, by pid.
pub(crate) fn stop_orphans() -> usize {
    let me = Pid::this();
    let mut killed = HashSet::new();
    // Each round kills what is left; the children of what died are ours
    // by the time `waitpid` returns their parent, so the next round sees
    // them. Ends when nothing is left below us that we may signal.
    while let Ok(below) = tree::descendants(me) {
        let mut signalled = false;
        for p in &below {
            if kill(p.pid, Signal::SIGKILL).is_ok() {
                signalled = true;
                killed.insert(p.pid);
            }
        }
        if !signalled {
            break;
        }
        for p in below.iter().filter(|p| p.ppid == me) {
            let _ = waitpid(p.pid, None);
        }
    }
    killed.len()
}
