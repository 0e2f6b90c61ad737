//! What the monotonic clock misses. Leases and fences are measured on the
//! monotonic clock (`Instant`), which Linux stops while the machine is
//! suspended to RAM, and which under kvmclock stops while a hypervisor
//! pauses the VM. A holder woken after longer than its lease would find its
//! fence deadline still ahead and go on working while another agent holds
//! its slot. So the semaphore client also reads `CLOCK_BOOTTIME`, which
//! counts suspend, and the wall clock, which NTP sets right after a VM
//! pause, and takes whichever moved furthest as the time that passed.
//!
//! A pause that none of them shows (a VM whose wall clock is not corrected
//! before the next renewal) stays unseen, for up to one renewal interval.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

/// The three clocks, read at one moment.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Reading {
    pub mono: std::time::Instant,
    /// `CLOCK_BOOTTIME` since boot; `None` where there is none.
    pub boot: Option<Duration>,
    pub wall: SystemTime,
}

/// Where the client reads the time; injected so that tests can make it
/// miss time.
pub trait Clocks: Send + Sync + fmt::Debug {
    fn read(&self) -> Reading;
}

/// How much longer than the monotonic clock says the time between two
/// readings was: the most that boot time or wall time moved, less what the
/// monotonic clock moved. A wall clock set back counts as not moved.
pub fn missed(from: &Reading, to: &Reading) -> Duration {
    let mono = to.mono.saturating_duration_since(from.mono);
    let boot = match (from.boot, to.boot) {
        (Some(a), Some(b)) => b.saturating_sub(a),
        _ => Duration::ZERO,
    };
    let wall = to.wall.duration_since(from.wall).unwrap_or(Duration::ZERO);
    boot.max(wall).saturating_sub(mono)
}

/// The machine's clocks.
#[derive(Debug, Default)]
pub struct SystemClocks {
    /// Test only: a file holding milliseconds added to boot time, so that a
    /// test can make a running process see a suspend it never had.
    pub extra_boot_time_file: Option<PathBuf>,
}

impl Clocks for SystemClocks {
    fn read(&self) -> Reading {
        let extra = self
            .extra_boot_time_file
            .as_ref()
            .and_then(|f| std::fs::read_to_string(f).ok())
            .and_then(|s| s.trim().parse::<u64>().ok())
            .map_or(Duration::ZERO, Duration::from_millis);
        Reading {
            mono: std::time::Instant::now(),
            boot: boot_time().map(|b| b + extra),
            wall: SystemTime::now(),
        }
    }
}

#[cfg(any(target_os = "linux", target_os = "android"))]
fn boot_time() -> Option<Duration> {
    use nix::time::{ClockId, clock_gettime};
    clock_gettime(ClockId::CLOCK_BOOTTIME)
        .ok()
        .map(|t| Duration::new(t.tv_sec() as u64, t.tv_nsec() as u32))
}

#[cfg(not(any(target_os = "linux", target_os = "android")))]
fn boot_time() -> Option<Duration> {
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(mono: std::time::Instant, boot: u64, wall: u64) -> Reading {
        Reading {
            mono,
            boot: Some(Duration::from_secs(boot)),
            wall: SystemTime::UNIX_EPOCH + Duration::from_secs(wall),
        }
    }

    #[test]
    fn time_the_monotonic_clock_missed_is_what_boot_or_wall_time_saw_beyond_it() {
        let t0 = std::time::Instant::now();
        let t10 = t0 + Duration::from_secs(10);
        let from = at(t0, 100, 1_000);
        // All three agree: nothing missed.
        assert_eq!(missed(&from, &at(t10, 110, 1_010)), Duration::ZERO);
        // Suspended to RAM for 50 s: boot time saw it.
        assert_eq!(missed(&from, &at(t10, 160, 1_060)), Duration::from_secs(50));
        // A VM paused for 40 s, its wall clock set right after; boot time
        // stopped with it.
        assert_eq!(missed(&from, &at(t10, 110, 1_050)), Duration::from_secs(40));
        // A wall clock set back misses nothing.
        assert_eq!(missed(&from, &at(t10, 110, 900)), Duration::ZERO);
        // Without boot time, the wall clock alone.
        let no_boot = |r: Reading| Reading { boot: None, ..r };
        assert_eq!(
            missed(&no_boot(from), &no_boot(at(t10, 0, 1_030))),
            Duration::from_secs(20)
        );
    }

    #[test]
    fn the_machines_clocks_move_together_and_a_test_can_add_boot_time() {
        let clocks = SystemClocks::default();
        let (a, b) = (clocks.read(), clocks.read());
        assert!(missed(&a, &b) < Duration::from_millis(100));
        let file = std::env::temp_dir().join(format!("jobgate-clock-{}", std::process::id()));
        std::fs::write(&file, "30000").unwrap();
        let slept = SystemClocks {
            extra_boot_time_file: Some(file.clone()),
        };
        if cfg!(target_os = "linux") {
            assert!(missed(&a, &slept.read()) >= Duration::from_secs(29));
        }
        std::fs::remove_file(file).unwrap();
    }
}
