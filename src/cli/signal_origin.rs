//! Where a signal to `jobgate run` came from, so that each one reaches the
//! command exactly once.
//!
//! An interactive command shares jobgate's process group, the terminal's
//! foreground group: Ctrl-C, Ctrl-\ and a hangup reach it from the terminal
//! as they reach jobgate, and jobgate must not pass them on again. A signal
//! sent to jobgate alone (`kill -INT <pid>`) reaches only jobgate, which
//! must pass it on. The kernel tells the two apart in `si_code`: SI_KERNEL
//! for the terminal's, SI_USER (or SI_QUEUE, SI_TKILL) for a process's.
//! tokio's signal streams do not carry it, so a second action on the same
//! signals (signal-hook-registry, which tokio's own handler goes through)
//! counts the ones a process sent.

use std::sync::atomic::{AtomicU32, Ordering};

use nix::sys::signal::Signal;

/// `si_code` of a signal the kernel raised itself (the terminal's).
const SI_KERNEL: i32 = 0x80;

/// The signals `jobgate run` passes on.
const WATCHED: [Signal; 4] = [
    Signal::SIGINT,
    Signal::SIGTERM,
    Signal::SIGHUP,
    Signal::SIGQUIT,
];

/// Per signal of `WATCHED`: how many a process sent since last asked.
static SENT_BY_A_PROCESS: [AtomicU32; 4] = [const { AtomicU32::new(0) }; 4];

fn slot(sig: Signal) -> Option<&'static AtomicU32> {
    WATCHED
        .iter()
        .position(|s| *s == sig)
        .map(|i| &SENT_BY_A_PROCESS[i])
}

/// Starts counting, before the signals can arrive; once per process (a
/// second action would count each signal twice).
pub fn watch() -> std::io::Result<()> {
    static WATCHING: std::sync::OnceLock<()> = std::sync::OnceLock::new();
    if WATCHING.set(()).is_err() {
        return Ok(());
    }
    for sig in WATCHED {
        let Some(count) = slot(sig) else { continue };
        // SAFETY: the action only does an atomic add, which is
        // async-signal-safe, and never panics.
        unsafe {
            signal_hook_registry::register_sigaction(
                sig as i32,
                move |info: &nix::libc::siginfo_t| {
                    if info.si_code != SI_KERNEL {
                        count.fetch_add(1, Ordering::Relaxed);
                    }
                },
            )?;
        }
    }
    Ok(())
}

/// Whether a process sent `sig` since the last call (and forgets it).
pub fn sent_by_a_process(sig: Signal) -> bool {
    slot(sig).is_some_and(|c| c.swap(0, Ordering::Relaxed) > 0)
}

/// Whether to pass a signal on to the command: always, unless the command
/// shares the terminal's foreground group with jobgate (`interactive`) and
/// the signal came from the terminal, which sent it to the command too.
pub fn forward(interactive: bool, sent_by_a_process: bool) -> bool {
    !interactive || sent_by_a_process
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_terminals_signal_is_not_sent_twice_and_a_kill_is_passed_on() {
        // Ctrl-C, Ctrl-\ or a hangup at an interactive command: it has it.
        assert!(!forward(true, false));
        // kill <jobgate's pid>: only jobgate has it.
        assert!(forward(true, true));
        // A command in a group of its own gets nothing from the terminal.
        assert!(forward(false, false));
        assert!(forward(false, true));
    }

    #[test]
    fn only_the_signals_passed_on_are_counted() {
        for sig in WATCHED {
            assert!(slot(sig).is_some(), "{sig}");
        }
        assert!(slot(Signal::SIGUSR1).is_none());
        assert!(!sent_by_a_process(Signal::SIGUSR1));
    }
}
