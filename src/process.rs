//! Process handling that `jobgate run` needs for the command it wraps.

use std::process::Command;

/// Makes a spawned process get SIGKILL when the thread that spawned it
/// exits: if jobgate dies nobody renews the command's lease, so the command
/// must not outlive it.
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
