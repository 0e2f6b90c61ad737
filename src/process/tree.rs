//! The processes below a given one, as /proc shows them.
//!
//! A process group is not enough to find a command's processes: `setsid`,
//! `setpgid` and double-forking daemons all leave it. Parentage is what
//! they cannot leave while the guard is their subreaper: every process the
//! command started is either below a live process of the command or was
//! re-parented to the guard.

use std::collections::HashMap;

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

/// A live process below the root.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Proc {
    pub(crate) pid: Pid,
    pub(crate) ppid: Pid,
    pub(crate) pgrp: Pid,
}

/// Every live process below `root`, each parent before its children.
/// Zombies are left out: they have stopped, and their children were
/// re-parented when they exited.
pub(crate) fn descendants(root: Pid) -> Result<Vec<Proc>, procfs::ProcError> {
    let mut children: HashMap<i32, Vec<Proc>> = HashMap::new();
    for process in procfs::process::all_processes()? {
        // A process that exits while /proc is being read is not listed.
        let Ok(process) = process else { continue };
        let Ok(stat) = process.stat() else { continue };
        if matches!(stat.state, 'Z' | 'X' | 'x') {
            continue;
        }
        children.entry(stat.ppid).or_default().push(Proc {
            pid: Pid::from_raw(stat.pid),
            ppid: Pid::from_raw(stat.ppid),
            pgrp: Pid::from_raw(stat.pgrp),
        });
    }
    let mut below = Vec::new();
    let mut parents = vec![root.as_raw()];
    while let Some(parent) = parents.pop() {
        for child in children.remove(&parent).unwrap_or_default() {
            parents.push(child.pid.as_raw());
            below.push(child);
        }
    }
    Ok(below)
}

/// Sends `sig` once to every process below `root`: to `group` as a whole
/// first (one delivery that a fork cannot slip past), then to each process
/// outside it. Processes that are gone, or that belong to another user and
/// so cannot be signalled, are skipped.
///
/// A process below a live parent could in theory exit, be reaped and have
/// its pid reused between the scan and the signal; pids are handed out
/// cyclically, so that needs the whole pid range to wrap around in
/// between. Children of `root` cannot be reused at all: `root` has not
/// reaped them.
pub(crate) fn signal_all(
    root: Pid,
    group: Option<Pid>,
    sig: Signal,
) -> Result<(), procfs::ProcError> {
    if let Some(group) = group {
        let _ = killpg(group, sig);
    }
    for p in descendants(root)? {
        if Some(p.pgrp) != group {
            let _ = kill(p.pid, sig);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::process::{Command, Stdio};
    use std::time::{Duration, Instant};

    use super::*;

    /// A grandchild in a session of its own is still found below us.
    #[test]
    fn finds_a_grandchild_that_left_the_session() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("pid");
        let mut child = Command::new("sh")
            .arg("-c")
            .arg(r#"setsid sh -c 'echo $$ > "$0"; exec sleep 1234.25' "$PIDFILE" & wait"#)
            .env("PIDFILE", &pidfile)
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let deadline = Instant::now() + Duration::from_secs(10);
        let grandchild = loop {
            if let Some(pid) = std::fs::read_to_string(&pidfile)
                .ok()
                .and_then(|s| s.trim().parse::<i32>().ok())
            {
                break Pid::from_raw(pid);
            }
            assert!(Instant::now() < deadline, "the grandchild never started");
            std::thread::sleep(Duration::from_millis(10));
        };
        let me = Pid::this();
        let below = descendants(me).unwrap();
        let found = below.iter().find(|p| p.pid == grandchild);
        let shell = Pid::from_raw(child.id() as i32);
        let _ = kill(grandchild, Signal::SIGKILL);
        let _ = child.wait();
        let found = found.expect("the grandchild is below us");
        assert_eq!(found.ppid, shell);
        assert_eq!(found.pgrp, grandchild, "setsid made it a group leader");
        let shell_pos = below.iter().position(|p| p.pid == shell).unwrap();
        let grandchild_pos = below.iter().position(|p| p.pid == grandchild).unwrap();
        assert!(shell_pos < grandchild_pos, "parents come first");
    }
}
