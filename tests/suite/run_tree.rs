//! `jobgate run` owns the command's whole process tree: nothing the command
//! started outlives jobgate, however jobgate dies, and nothing it left
//! running outlives its slot. Real processes on a `file://` ledger.
//!
//! Each command writes the pid of the process under test to a file once
//! that process is set up, and the tests wait for that file, so nothing
//! depends on which process happens to start first. A process counts as
//! alive while /proc/PID/cmdline still names its unique `sleep` argument:
//! a pid reused by someone else, or a zombie, does not.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{Signal, kill, killpg};
use nix::unistd::Pid;

const JOBGATE: &str = env!("CARGO_BIN_EXE_jobgate");
/// The lease of the runs here unless a test says otherwise; processes that
/// ignore SIGTERM get SIGKILL after 20% of it.
const LEASE: &str = "5s";
const GRACE: Duration = Duration::from_secs(1);

struct Bed {
    dir: tempfile::TempDir,
    ledger: String,
    lease: &'static str,
}

impl Bed {
    fn new() -> Self {
        let dir = tempfile::tempdir().unwrap();
        let ledger = format!("file://{}/ledger.json", dir.path().display());
        Bed {
            dir,
            ledger,
            lease: LEASE,
        }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// `jobgate run` of `sh -c SCRIPT`, with `$PIDFILE` and `$OUT` set.
    fn run(&self, holder: &str, script: &str) -> Command {
        let mut cmd = Command::new(JOBGATE);
        cmd.args(["run", "--ledger", &self.ledger, "--limit", "1"])
            .args(["--lease", self.lease, "--holder", holder])
            .args(["--", "sh", "-c", script])
            .env("PIDFILE", self.path("pid"))
            .env("OUT", self.path("out"))
            .stdin(Stdio::null());
        cmd
    }

    fn holders(&self) -> serde_json::Value {
        let out = Command::new(JOBGATE)
            .args(["status", "--ledger", &self.ledger, "-o", "json"])
            .stdin(Stdio::null())
            .output()
            .unwrap();
        let ledger: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        ledger["holders"].clone()
    }
}

/// The pid a command wrote to `path`, once it has.
fn wait_for_pid(path: &Path, jobgate: &mut Child) -> Pid {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        // Complete once the newline is there.
        if let Some(pid) = std::fs::read_to_string(path)
            .ok()
            .filter(|s| s.ends_with('\n'))
            .and_then(|s| s.trim().parse::<i32>().ok())
        {
            return Pid::from_raw(pid);
        }
        if let Some(status) = jobgate.try_wait().unwrap() {
            panic!("jobgate exited ({status}) before the command wrote its pid");
        }
        assert!(Instant::now() < deadline, "the command never wrote its pid");
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Whether `pid` is still a live process whose command line has `marker`
/// (a shell about to `exec sleep MARKER` has it too). A zombie is not
/// alive; a process in the middle of an exec, whose command line reads
/// empty for a moment, is.
fn alive(pid: Pid, marker: &str) -> bool {
    let Ok(process) = procfs::process::Process::new(pid.as_raw()) else {
        return false;
    };
    if process.stat().is_ok_and(|s| s.state == 'Z') {
        return false;
    }
    std::fs::read(format!("/proc/{pid}/cmdline")).is_ok_and(|cmdline| {
        cmdline.is_empty() || String::from_utf8_lossy(&cmdline).contains(marker)
    })
}

fn assert_gone_within(pid: Pid, marker: &str, within: Duration) {
    let deadline = Instant::now() + within;
    while alive(pid, marker) {
        if Instant::now() >= deadline {
            // Not left behind to hold the test's output open.
            let _ = kill(pid, Signal::SIGKILL);
            panic!("process {pid} ({marker}) still runs {within:?} later");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Asserts that `pid` is gone already, with no waiting.
fn assert_gone(pid: Pid, marker: &str, why: &str) {
    if alive(pid, marker) {
        let _ = kill(pid, Signal::SIGKILL);
        panic!("process {pid} ({marker}) still runs: {why}");
    }
}

fn read_pid(path: &Path) -> Pid {
    Pid::from_raw(
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap(),
    )
}

/// The guard: the child of jobgate that runs `jobgate __guard`.
fn guard_of(jobgate: Pid) -> Option<Pid> {
    procfs::process::all_processes()
        .unwrap()
        .filter_map(|p| p.ok())
        .find(|p| {
            p.stat().is_ok_and(|s| s.ppid == jobgate.as_raw())
                && p.cmdline().is_ok_and(|c| c.iter().any(|a| a == "__guard"))
        })
        .map(|p| Pid::from_raw(p.pid()))
}

/// What gets SIGKILLed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Victim {
    Jobgate,
    /// jobgate's whole process group, as a supervisor or a shell may do.
    JobgateGroup,
    /// Only the guard: jobgate stays and stops what the guard left.
    Guard,
    /// Every process whose command line contains "jobgate", as
    /// `pkill -9 -f jobgate` does (here only jobgate and its guard are
    /// looked at, so that the test's neighbours live).
    ByName,
}

/// SIGKILLs `victim` once the process under test is up, and checks that
/// the process and the guard are gone within a few seconds.
fn dies_with(victim: Victim, holder: &str, script: &str, marker: &str) {
    let bed = Bed::new();
    let mut run = bed.run(holder, script);
    if victim == Victim::JobgateGroup {
        use std::os::unix::process::CommandExt;
        run.process_group(0);
    }
    let mut jobgate = run.spawn().unwrap();
    let pid = wait_for_pid(&bed.path("pid"), &mut jobgate);
    if !alive(pid, marker) {
        let _ = jobgate.kill();
        panic!("the pid file names the wrong process");
    }
    let jobgate_pid = Pid::from_raw(jobgate.id() as i32);
    let guard = guard_of(jobgate_pid);
    match victim {
        Victim::Jobgate => kill(jobgate_pid, Signal::SIGKILL).unwrap(),
        Victim::JobgateGroup => killpg(jobgate_pid, Signal::SIGKILL).unwrap(),
        Victim::Guard => {
            let Some(guard) = guard else {
                let _ = jobgate.kill();
                panic!("no guard to kill");
            };
            kill(guard, Signal::SIGKILL).unwrap();
        }
        Victim::ByName => {
            let named = |pid: Pid| {
                std::fs::read(format!("/proc/{pid}/cmdline"))
                    .is_ok_and(|c| String::from_utf8_lossy(&c).contains("jobgate"))
            };
            assert!(named(jobgate_pid), "jobgate's command line names it");
            for pid in std::iter::once(jobgate_pid)
                .chain(guard)
                .filter(|p| named(*p))
            {
                kill(pid, Signal::SIGKILL).unwrap();
            }
        }
    }
    let out = wait_with_timeout(&mut jobgate, Duration::from_secs(20));
    if victim == Victim::Guard {
        assert_eq!(out.code(), Some(125), "a killed guard is a jobgate error");
    } else {
        assert_eq!(out.code(), None, "jobgate was killed, so no exit code");
    }
    assert_gone_within(pid, marker, Duration::from_secs(5));
    let guard = guard.expect("jobgate ran its command through a guard");
    assert_gone_within(guard, "__guard", Duration::from_secs(5));
}

#[test]
fn sigkill_of_jobgate_kills_a_background_job_of_the_command() {
    dies_with(
        Victim::Jobgate,
        "background",
        r#"sleep 1234.51 & echo $! > "$PIDFILE"; wait"#,
        "1234.51",
    );
}

#[test]
fn sigkill_of_jobgate_kills_a_descendant_in_a_session_of_its_own() {
    dies_with(
        Victim::Jobgate,
        "setsid",
        r#"setsid sh -c 'echo $$ > "$PIDFILE"; exec sleep 1234.52' & wait"#,
        "1234.52",
    );
}

#[test]
fn sigkill_of_jobgate_kills_a_double_forked_daemon() {
    // The subshell exits at once: its child is an orphan, in a session of
    // its own, that no process group or parent of the command leads to.
    dies_with(
        Victim::Jobgate,
        "daemon",
        r#"(setsid sh -c 'echo $$ > "$PIDFILE"; exec sleep 1234.53' &); exec sleep 1234.530"#,
        "1234.53",
    );
}

/// `pkill -9 -f jobgate`, aimed at jobgate by name, misses the guard,
/// which then stops the command's whole tree.
#[test]
fn sigkill_by_name_of_jobgate_kills_a_descendant_in_a_session_of_its_own() {
    dies_with(
        Victim::ByName,
        "by-name",
        r#"setsid sh -c 'echo $$ > "$PIDFILE"; exec sleep 1234.60' & wait"#,
        "1234.60",
    );
}

#[test]
fn sigkill_of_jobgates_process_group_kills_a_descendant_in_a_session_of_its_own() {
    dies_with(
        Victim::JobgateGroup,
        "group",
        r#"setsid sh -c 'echo $$ > "$PIDFILE"; exec sleep 1234.58' & wait"#,
        "1234.58",
    );
}

#[test]
fn sigkill_of_the_guard_still_stops_a_descendant_in_a_session_of_its_own() {
    dies_with(
        Victim::Guard,
        "guard",
        r#"setsid sh -c 'echo $$ > "$PIDFILE"; exec sleep 1234.59' & wait"#,
        "1234.59",
    );
}

#[test]
fn what_the_command_leaves_running_is_stopped_before_the_slot_is_released() {
    let bed = Bed::new();
    let status = bed
        .run("leaves", r#"sleep 1234.54 & echo $! > "$PIDFILE""#)
        .status()
        .unwrap();
    assert_eq!(status.code(), Some(0));
    // No waiting: it must be gone by the time jobgate exits.
    assert_gone(
        read_pid(&bed.path("pid")),
        "1234.54",
        "the background job outlived jobgate",
    );
    assert_eq!(bed.holders(), serde_json::json!({}));
}

#[test]
fn what_ignores_sigterm_gets_sigkill_after_the_grace() {
    let bed = Bed::new();
    // The leftover ignores SIGTERM before the command exits (it writes its
    // pid only then, and the command waits for that).
    let script = r#"sh -c 'trap "" TERM; echo $$ > "$PIDFILE"; exec sleep 1234.55' &
        while [ ! -s "$PIDFILE" ]; do sleep 0.01; done; exit 3"#;
    let started = Instant::now();
    let status = bed.run("stubborn", script).status().unwrap();
    let took = started.elapsed();
    assert_eq!(status.code(), Some(3), "the command's own exit code");
    assert_gone(
        read_pid(&bed.path("pid")),
        "1234.55",
        "it ignored SIGTERM and outlived jobgate",
    );
    assert!(
        took >= GRACE,
        "jobgate returned after {took:?}, before SIGKILL could have been sent"
    );
    assert_eq!(bed.holders(), serde_json::json!({}));
}

fn code(bed: &Bed, args: &[&str]) -> (Option<i32>, String) {
    let out = Command::new(JOBGATE)
        .args(["run", "--ledger", &bed.ledger, "--limit", "1", "--"])
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn exit_codes_pass_through_the_guard() {
    let bed = Bed::new();
    assert_eq!(code(&bed, &["sh", "-c", "exit 7"]).0, Some(7));
    assert_eq!(code(&bed, &["sh", "-c", "kill -TERM $$"]).0, Some(128 + 15));
    let (status, stderr) = code(&bed, &["no-such-command-jobgate"]);
    assert_eq!(status, Some(127), "{stderr}");
    assert_eq!(
        stderr.trim(),
        "jobgate: command not found: no-such-command-jobgate"
    );
    let not_executable = bed.path("script.sh");
    std::fs::write(&not_executable, "#!/bin/sh\n").unwrap();
    let (status, stderr) = code(&bed, &[not_executable.to_str().unwrap()]);
    assert_eq!(status, Some(126), "{stderr}");
    assert_eq!(bed.holders(), serde_json::json!({}));
}

#[test]
fn a_forwarded_signal_reaches_a_descendant_outside_the_process_group() {
    // A long grace: SIGKILL must not come before the trap has run, however
    // busy the machine.
    let bed = Bed {
        lease: "60s",
        ..Bed::new()
    };
    let script = r#"setsid sh -c 'trap "echo TERM > \"$OUT\"; exit 0" TERM; echo $$ > "$PIDFILE"; while :; do sleep 0.1; done' & wait"#;
    let mut jobgate = bed.run("forward", script).spawn().unwrap();
    let pid = wait_for_pid(&bed.path("pid"), &mut jobgate);
    kill(Pid::from_raw(jobgate.id() as i32), Signal::SIGTERM).unwrap();
    let status = jobgate.wait().unwrap();
    let got = std::fs::read_to_string(bed.path("out")).unwrap_or_default();
    if got.trim() != "TERM" {
        let _ = kill(pid, Signal::SIGKILL);
        panic!("the descendant in its own session did not get SIGTERM");
    }
    assert_eq!(status.code(), Some(128 + 15), "the command died of SIGTERM");
}

#[test]
fn lease_loss_stops_the_whole_tree() {
    let bed = Bed::new();
    let script = r#"setsid sh -c 'trap "" TERM; echo $$ > "$PIDFILE"; exec sleep 1234.56' & wait"#;
    let mut jobgate = bed.run("victim", script).spawn().unwrap();
    let pid = wait_for_pid(&bed.path("pid"), &mut jobgate);
    // Freed by hand: at its next renewal jobgate finds its holder gone.
    let out = Command::new(JOBGATE)
        .args(["release", "--ledger", &bed.ledger, "victim"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    let status = wait_with_timeout(&mut jobgate, Duration::from_secs(20));
    assert_eq!(status.code(), Some(123), "exit code for a lost lease");
    assert_gone(
        pid,
        "1234.56",
        "a descendant that ignores SIGTERM outlived the lost slot",
    );
}

fn wait_with_timeout(child: &mut Child, within: Duration) -> ExitStatus {
    let deadline = Instant::now() + within;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("jobgate still runs after {within:?}");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Through a terminal (script(1) gives the command one): the command is in
/// the terminal's foreground process group, reads from it, and Ctrl-C
/// reaches it from the terminal.
#[test]
fn an_interactive_command_keeps_the_terminal() {
    let bed = Bed::new();
    let inner = format!(
        "{JOBGATE} run --ledger {} --limit 1 -- sh -c '{}'",
        bed.ledger,
        r#"read -r pid comm state ppid pgrp sid tty tpgid rest < /proc/$$/stat; [ "$pgrp" = "$tpgid" ] && echo foreground > "$OUT"; read -r line; echo "$line" >> "$OUT"; echo $$ > "$PIDFILE"; exec sleep 1234.57"#
    );
    let mut script = Command::new("script")
        .args(["-qec", &inner, "/dev/null"])
        .env("PIDFILE", bed.path("pid"))
        .env("OUT", bed.path("out"))
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .unwrap();
    let mut terminal = script.stdin.take().unwrap();
    terminal.write_all(b"typed\n").unwrap();
    let pid = wait_for_pid(&bed.path("pid"), &mut script);
    assert_eq!(
        std::fs::read_to_string(bed.path("out")).unwrap(),
        "foreground\ntyped\n"
    );
    // Ctrl-C, as typed on the terminal.
    terminal.write_all(&[0x03]).unwrap();
    let status = wait_with_timeout(&mut script, Duration::from_secs(20));
    assert_eq!(status.code(), Some(128 + 2), "the command died of SIGINT");
    assert_gone(pid, "1234.57", "Ctrl-C did not stop the command");
    drop(terminal);
}
