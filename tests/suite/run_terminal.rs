//! `jobgate run` at a terminal: every signal reaches the command exactly
//! once, whether the terminal sent it (Ctrl-C, Ctrl-\), which reaches the
//! command directly since it shares the terminal's foreground group, or a
//! process sent it to jobgate alone (`kill`), which jobgate passes on.

use std::process::Command;
use std::time::Duration;

use jobgate_testkit::pty::Terminal;
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

/// Logs each of SIGINT, SIGQUIT and SIGHUP it gets, one line per delivery;
/// SIGTERM ends it.
const COUNTER: &str = r#"
import signal, sys, time
log = open(sys.argv[1], "a", buffering=1)
def note(sig, frame):
    log.write(signal.Signals(sig).name + "\n")
for s in (signal.SIGINT, signal.SIGQUIT, signal.SIGHUP):
    signal.signal(s, note)
log.write("ready\n")
while True:
    time.sleep(1)
"#;

fn counts(log: &std::path::Path, name: &str) -> usize {
    std::fs::read_to_string(log)
        .unwrap_or_default()
        .lines()
        .filter(|l| *l == name)
        .count()
}

/// Waits for `name` to reach `want`, then long enough for a second copy
/// (passed on by jobgate after the terminal's) to show.
fn expect(log: &std::path::Path, term: &Terminal, name: &str, want: usize) {
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while counts(log, name) < want && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let got = counts(log, name);
    assert_eq!(
        got,
        want,
        "{name}: got {got}, want {want}\nlog:\n{}\nterminal:\n{}",
        std::fs::read_to_string(log).unwrap_or_default(),
        term.screen()
    );
}

#[test]
fn every_signal_reaches_an_interactive_command_exactly_once() {
    let dir = tempfile::tempdir().unwrap();
    let log = dir.path().join("signals.log");
    let ledger = format!("file://{}/tty.json", dir.path().display());
    let mut cmd = Command::new(jobgate_testkit::jobgate_bin());
    cmd.args(["run", "--ledger", &ledger, "--limit", "1", "--"])
        .args(["python3", "-c", COUNTER])
        .arg(&log);
    let (mut child, mut term) = Terminal::spawn(cmd).unwrap();
    let jobgate = Pid::from_raw(child.id() as i32);
    expect(&log, &term, "ready", 1);

    // From the terminal: the command has it from there, once.
    term.type_keys(b"\x03");
    expect(&log, &term, "SIGINT", 1);
    term.type_keys(b"\x1c");
    expect(&log, &term, "SIGQUIT", 1);

    // To jobgate alone: passed on, once.
    kill(jobgate, Signal::SIGINT).unwrap();
    expect(&log, &term, "SIGINT", 2);
    kill(jobgate, Signal::SIGQUIT).unwrap();
    expect(&log, &term, "SIGQUIT", 2);
    kill(jobgate, Signal::SIGHUP).unwrap();
    expect(&log, &term, "SIGHUP", 1);

    // SIGTERM ends the command, and jobgate reports it.
    kill(jobgate, Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15), "{}", term.screen());
}
