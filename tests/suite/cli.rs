//! The `jobgate` binary end to end: concurrency of real processes, exit
//! codes, and one-line errors that leave the ledger untouched.

use std::path::Path;
use std::process::{Command, Output, Stdio};

const LIMIT: usize = 3;
const PROCESSES: usize = 8;

/// Each child marks itself present in `slots/`, counts who is present, and
/// leaves. The largest count any child saw is the true peak concurrency.
/// A child stays until it sees `$LIMIT` present (or 3 s pass, for the last
/// few), so that the limit is reached however the processes' start-up times
/// happen to fall, and any extra one would be seen.
const CHILD: &str = r#"mkdir "$SLOTS/$JOBGATE_HOLDER" && ls "$SLOTS" | wc -l >> "$COUNTS/$JOBGATE_HOLDER" && for i in $(seq 30); do [ "$(ls "$SLOTS" | wc -l)" -ge "$LIMIT" ] && break; sleep 0.1; done; sleep 0.1 && ls "$SLOTS" | wc -l >> "$COUNTS/$JOBGATE_HOLDER" && rmdir "$SLOTS/$JOBGATE_HOLDER""#;

fn run_many(ledger: &str, env: &[(&'static str, String)], work: &Path) -> usize {
    let slots = work.join("slots");
    let counts = work.join("counts");
    std::fs::create_dir_all(&slots).unwrap();
    std::fs::create_dir_all(&counts).unwrap();
    let children: Vec<_> = (0..PROCESSES)
        .map(|i| {
            Command::new(jobgate_testkit::jobgate_bin())
                .args([
                    "run",
                    "--ledger",
                    ledger,
                    "--limit",
                    &LIMIT.to_string(),
                    "--poll",
                    "50ms",
                ])
                .args(["--holder", &format!("job-{i}"), "--", "sh", "-c", CHILD])
                .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
                .env("SLOTS", &slots)
                .env("LIMIT", LIMIT.to_string())
                .env("COUNTS", &counts)
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        let status = c.wait().unwrap();
        assert!(status.success(), "a jobgate run failed: {status}");
    }
    let mut peak = 0;
    let mut ran = 0;
    for entry in std::fs::read_dir(&counts).unwrap() {
        ran += 1;
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            peak = peak.max(line.trim().parse::<usize>().unwrap());
        }
    }
    assert_eq!(ran, PROCESSES, "every command must have run");
    peak
}

/// Never above the limit, and the limit actually reached (else the test
/// could not have seen a violation).
fn assert_peak(peak: usize) {
    assert!(
        peak <= LIMIT,
        "{peak} commands ran at once with limit {LIMIT}"
    );
    assert_eq!(
        peak, LIMIT,
        "the limit was never reached, so the test proves little"
    );
}

#[test]
fn concurrent_runs_on_a_file_ledger_respect_the_limit() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("file://{}/ledger.json", dir.path().display());
    let peak = run_many(&ledger, &[], dir.path());
    assert_peak(peak);
    let status = jobgate(&["status", "--ledger", &ledger, "-o", "json"], &[]);
    let ledger: serde_json::Value = serde_json::from_slice(&status.stdout).unwrap();
    assert_eq!(ledger["holders"], serde_json::json!({}));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_runs_on_seaweedfs_respect_the_limit() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("s3://{bucket}/cli.json");
    let env = server.env();
    let peak = tokio::task::block_in_place(|| run_many(&ledger, &env, dir.path()));
    assert_peak(peak);
    let out = jobgate(&["status", "--ledger", &ledger], &env);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("in use  0"), "{text}");
    let doctor = jobgate(&["doctor", "--ledger", &ledger], &env);
    let text = String::from_utf8_lossy(&doctor.stdout);
    assert!(
        doctor.status.success(),
        "doctor failed on SeaweedFS:\n{text}"
    );
    assert!(text.contains("verdict: OK"), "{text}");
}

/// A grant answered after the fence period is never used: `jobgate run`
/// exits 123 without starting the command. Every request to S3 waits 4 s in
/// a proxy, past the 3 s fence of a 5 s lease, so the grant's answer comes
/// late. (Without the check, the command starts and is stopped on lease
/// loss a moment later: exit 123 too, but the marker exists.)
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_grant_answered_too_late_never_starts_the_command() {
    use jobgate_testkit::faultproxy::{FaultProxy, Faults};
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let slow = Faults {
        delay: 1.0,
        delay_by: std::time::Duration::from_secs(4),
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&server.endpoint, slow).await;
    let mut env = server.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint.clone();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    let marker = dir.path().join("ran");
    let ledger = format!("s3://{bucket}/late.json");
    let marker_arg = marker.display().to_string();
    let args = [
        "run",
        "--ledger",
        &ledger,
        "--limit",
        "1",
        "--lease",
        "5s",
        "--",
        "touch",
        &marker_arg,
    ];
    let out = tokio::task::block_in_place(|| jobgate(&args, &env));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !marker.exists(),
        "the command ran on a grant answered too late: {stderr}"
    );
    assert_eq!(out.status.code(), Some(123), "stderr: {stderr}");
    assert!(stderr.contains("before the command started"), "{stderr}");
}

/// AWS answers a read of an object that does not exist with 403 to callers
/// that may not list the bucket (examples/iam-policy.json grants
/// `s3:ListBucket` for this). A proxy answers so: a new ledger's first read
/// fails in one line naming both causes, and `jobgate doctor` says what to
/// grant, before and after the ledger exists.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_ledger_read_as_forbidden_is_told_to_grant_list_bucket() {
    use jobgate_testkit::faultproxy::{FaultProxy, Faults, Missing};
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let proxy = FaultProxy::start(&server.endpoint, Faults::default()).await;
    proxy.answer_missing(Missing::Forbidden);
    let mut env = server.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint.clone();
        }
    }
    let ledger = format!("s3://{bucket}/new.json");
    let run = ["run", "--ledger", &ledger, "--limit", "1", "--", "true"];
    let doctor = ["doctor", "--ledger", &ledger];
    let out = tokio::task::block_in_place(|| jobgate(&run, &env));
    let line = one_line_error(&out);
    assert!(
        line.contains("wrong credentials") && line.contains("s3:ListBucket"),
        "{line}"
    );
    let out = tokio::task::block_in_place(|| jobgate(&doctor, &env));
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(text.contains("s3:ListBucket"), "{text}");

    // Created by a caller that may list the bucket: runs work through the
    // proxy, and doctor still says what is missing for the next ledger.
    let out = tokio::task::block_in_place(|| jobgate(&run, &server.env()));
    assert!(out.status.success(), "{out:?}");
    let out = tokio::task::block_in_place(|| jobgate(&run, &env));
    assert!(out.status.success(), "{out:?}");
    let out = tokio::task::block_in_place(|| jobgate(&doctor, &env));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("PASS  read ledger"), "{text}");
    assert!(
        text.contains(
            "FAIL  a missing object reads as missing: refused (403) instead: grant s3:ListBucket"
        ),
        "{text}"
    );
    // Without the proxy's 403s, every check passes.
    let out = tokio::task::block_in_place(|| jobgate(&doctor, &server.env()));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("PASS  a missing object reads as missing"),
        "{text}"
    );
    assert!(text.contains("verdict: OK"), "{text}");
}

/// A SIGTERM ends `jobgate run`'s wait for a slot at once, even while every
/// write loses its race (a proxy answers each with 409): before, it was
/// taken only when the client gave up on its own, after 1,000 lost races
/// (about 100 s).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_signal_ends_the_wait_at_once_while_every_write_loses_its_race() {
    use jobgate_testkit::faultproxy::{FaultProxy, Faults};
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let racing = Faults {
        conflict_409: 1.0,
        ..Faults::default()
    };
    let proxy = FaultProxy::start(&server.endpoint, racing).await;
    let mut env = server.env();
    for (k, v) in env.iter_mut() {
        if *k == "AWS_ENDPOINT_URL" {
            *v = proxy.endpoint.clone();
        }
    }
    let ledger = format!("s3://{bucket}/racing.json");
    // The ledger exists (created past the proxy): every write through the
    // proxy is a compare-and-swap that loses.
    let created = jobgate(
        &["run", "--ledger", &ledger, "--limit", "1", "--", "true"],
        &server.env(),
    );
    assert!(created.status.success(), "{created:?}");
    let mut run = Command::new(jobgate_testkit::jobgate_bin())
        .args(["run", "--ledger", &ledger, "--limit", "1", "--", "true"])
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Well into the spin: the conditional-write probe is done, and lost
    // races have been retried for seconds.
    tokio::time::sleep(std::time::Duration::from_secs(4)).await;
    assert!(run.try_wait().unwrap().is_none(), "jobgate run ended early");
    let conflicts = proxy
        .counts
        .conflict_409
        .load(std::sync::atomic::Ordering::Relaxed);
    assert!(conflicts > 5, "only {conflicts} lost races");
    let signalled = std::time::Instant::now();
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(run.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = loop {
        if let Some(status) = run.try_wait().unwrap() {
            break status;
        }
        assert!(
            signalled.elapsed() < std::time::Duration::from_secs(10),
            "jobgate run ignored SIGTERM for 10 s"
        );
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
    };
    let took = signalled.elapsed();
    eprintln!("SIGTERM during {conflicts} lost races: exited {status} {took:?} after");
    assert_eq!(status.code(), Some(128 + 15));
    assert!(took < std::time::Duration::from_secs(2), "{took:?}");
}

fn jobgate(args: &[&str], env: &[(&'static str, String)]) -> Output {
    Command::new(jobgate_testkit::jobgate_bin())
        .args(args)
        .envs(env.iter().map(|(k, v)| (*k, v.as_str())))
        .stdin(Stdio::null())
        .output()
        .unwrap()
}

fn one_line_error(out: &Output) -> String {
    let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(out.status.code(), Some(125), "stderr: {err}");
    assert_eq!(err.lines().count(), 1, "expected one line, got:\n{err}");
    assert!(err.starts_with("jobgate: error: "), "{err}");
    err
}

#[test]
fn exit_codes_pass_through_and_waits_time_out() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("file://{}/codes.json", dir.path().display());
    let out = jobgate(
        &[
            "run", "--ledger", &ledger, "--limit", "1", "--", "sh", "-c", "exit 7",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(7));
    let out = jobgate(
        &[
            "run",
            "--ledger",
            &ledger,
            "--limit",
            "1",
            "--",
            "no-such-command-jobgate",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(127));

    let mut holder = Command::new(jobgate_testkit::jobgate_bin())
        .args([
            "run", "--ledger", &ledger, "--limit", "1", "--", "sleep", "30",
        ])
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let s = jobgate(&["status", "--ledger", &ledger, "-o", "json"], &[]);
        let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap_or_default();
        if v["holders"].as_object().is_some_and(|h| !h.is_empty()) {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "first run never got its slot"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = jobgate(
        &["run", "--ledger", &ledger, "--wait", "1s", "--", "true"],
        &[],
    );
    assert_eq!(
        out.status.code(),
        Some(124),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // SIGTERM is forwarded; the slot is released on the way out.
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(holder.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
    let status = holder.wait().unwrap();
    assert_eq!(status.code(), Some(128 + 15));
    let s = jobgate(&["status", "--ledger", &ledger, "-o", "json"], &[]);
    let v: serde_json::Value = serde_json::from_slice(&s.stdout).unwrap();
    assert_eq!(
        v["holders"],
        serde_json::json!({}),
        "slot not released after SIGTERM"
    );
}

#[test]
fn a_corrupt_ledger_is_reported_and_left_alone() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.json");
    std::fs::write(&path, "{\"count\": 2}").unwrap();
    let ledger = format!("file://{}", path.display());
    for args in [
        vec!["run", "--ledger", &ledger, "--limit", "2", "--", "true"],
        vec!["status", "--ledger", &ledger],
        vec!["release", "--ledger", &ledger, "someone"],
    ] {
        let err = one_line_error(&jobgate(&args, &[]));
        assert!(err.contains("not a jobgate ledger"), "{err}");
    }
    std::fs::write(&path, "{\"count\": ").unwrap();
    let err = one_line_error(&jobgate(
        &["run", "--ledger", &ledger, "--limit", "2", "--", "true"],
        &[],
    ));
    assert!(err.contains("not valid JSON"), "{err}");
    assert_eq!(
        std::fs::read_to_string(&path).unwrap(),
        "{\"count\": ",
        "the ledger was touched"
    );
}

#[test]
fn bad_input_gets_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("file://{}/x.json", dir.path().display());
    let err = one_line_error(&jobgate(
        &["run", "--ledger", &ledger, "--limit", "0", "--", "true"],
        &[],
    ));
    assert!(err.contains("limit"), "{err}");
    // Out of range either way: the same sentence, which names the range
    // (not clap's tip to write `-- -1`, which would make -1 the command).
    for limit in ["-1", "99999999999"] {
        let err = one_line_error(&jobgate(
            &["run", "--ledger", &ledger, "--limit", limit, "--", "true"],
            &[],
        ));
        assert_eq!(
            err,
            format!(
                "jobgate: error: invalid limit {limit}: the limit is a whole number from 1 to 4294967295"
            )
        );
        let err = one_line_error(&jobgate(&["limit", "--ledger", &ledger, limit], &[]));
        assert!(err.contains("from 1 to 4294967295"), "{err}");
    }
    let err = one_line_error(&jobgate(
        &["run", "--ledger", "ftp://x/y", "--limit", "1", "--", "true"],
        &[],
    ));
    assert!(err.contains("s3://BUCKET/KEY"), "{err}");
    // `status` and `release` take no --limit: told what creates a ledger.
    for args in [
        vec!["status", "--ledger", &ledger],
        vec!["release", "--ledger", &ledger, "someone"],
    ] {
        let err = one_line_error(&jobgate(&args, &[]));
        assert!(err.contains("does not exist yet"), "{err}");
        assert!(err.contains("`jobgate run --limit N`"), "{err}");
        assert!(!err.contains("pass --limit"), "{err}");
    }
    let unreachable = [
        (
            "AWS_ENDPOINT_URL",
            format!("http://127.0.0.1:{}", jobgate_testkit::testbed::free_port()),
        ),
        ("AWS_ACCESS_KEY_ID", "x".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "y".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
    ];
    let err = one_line_error(&jobgate(
        &[
            "run",
            "--ledger",
            "s3://b/k.json",
            "--limit",
            "1",
            "--",
            "true",
        ],
        &unreachable,
    ));
    assert!(
        err.contains("connect") || err.contains("unavailable"),
        "{err}"
    );
}

/// A ledger in a directory jobgate may not write in is reported as that,
/// not as the lock file jobgate makes beside it. The directory is `/sys`:
/// sysfs refuses new files to everyone, root included.
#[test]
fn a_ledger_directory_that_is_not_writable_is_named() {
    let err = one_line_error(&jobgate(
        &[
            "run",
            "--ledger",
            "file:///sys/jobgate-test.json",
            "--limit",
            "1",
            "--",
            "true",
        ],
        &[],
    ));
    assert_eq!(
        err,
        "jobgate: error: cannot write in /sys (permission denied): every jobgate that uses a ledger there needs to write in its directory"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn s3_errors_get_one_line() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    let env = server.env();
    let err = one_line_error(&jobgate(
        &[
            "run",
            "--ledger",
            "s3://no-such-bucket-jg/k.json",
            "--limit",
            "1",
            "--",
            "true",
        ],
        &env,
    ));
    assert!(
        err.contains("no-such-bucket-jg") && err.contains("does not exist"),
        "{err}"
    );
    let mut wrong = env.clone();
    for (k, v) in wrong.iter_mut() {
        if *k == "AWS_SECRET_ACCESS_KEY" {
            *v = "wrong-secret".into();
        }
    }
    let err = one_line_error(&jobgate(
        &[
            "run",
            "--ledger",
            &format!("s3://{bucket}/k.json"),
            "--limit",
            "1",
            "--",
            "true",
        ],
        &wrong,
    ));
    assert!(err.contains("access denied"), "{err}");
}

/// `--slots`: commands taking 2 and 1 units of a limit of 3 never hold more
/// than 3 units at once, counted by the commands themselves, and every one
/// runs. `--slots` above `--limit` is refused in one line.
#[test]
fn weighted_runs_never_exceed_the_limit_in_units() {
    let dir = tempfile::tempdir().unwrap();
    let ledger = format!("file://{}/ledger.json", dir.path().display());
    let slots = dir.path().join("slots");
    let peaks = dir.path().join("peaks");
    std::fs::create_dir_all(&slots).unwrap();
    std::fs::create_dir_all(&peaks).unwrap();
    // Each command writes its units into slots/, sums everyone's, stays a
    // moment, sums again and leaves.
    let child = r#"echo "$UNITS" > "$SLOTS/$JOBGATE_HOLDER" && cat "$SLOTS"/* | awk '{s+=$1} END {print s}' >> "$PEAKS/$JOBGATE_HOLDER" && sleep 0.4 && cat "$SLOTS"/* | awk '{s+=$1} END {print s}' >> "$PEAKS/$JOBGATE_HOLDER" && rm "$SLOTS/$JOBGATE_HOLDER""#;
    let units = [2, 1, 2, 1, 2, 1];
    let children: Vec<_> = units
        .iter()
        .enumerate()
        .map(|(i, u)| {
            Command::new(jobgate_testkit::jobgate_bin())
                .args(["run", "--ledger", &ledger, "--limit", "3", "--poll", "50ms"])
                .args(["--slots", &u.to_string(), "--holder", &format!("w-{i}")])
                .args(["--", "sh", "-c", child])
                .env("SLOTS", &slots)
                .env("PEAKS", &peaks)
                .env("UNITS", u.to_string())
                .stdin(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    for mut c in children {
        assert!(c.wait().unwrap().success());
    }
    let mut peak = 0;
    for entry in std::fs::read_dir(&peaks).unwrap() {
        let text = std::fs::read_to_string(entry.unwrap().path()).unwrap();
        for line in text.lines() {
            peak = peak.max(line.trim().parse::<u32>().unwrap());
        }
    }
    assert_eq!(std::fs::read_dir(&peaks).unwrap().count(), units.len());
    assert!(peak <= 3, "{peak} units held at once with limit 3");
    assert!(
        peak >= 2,
        "never more than one command at once: proves little"
    );
    let out = jobgate(
        &[
            "run", "--ledger", &ledger, "--limit", "3", "--slots", "4", "--", "true",
        ],
        &[],
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{err}");
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("--slots 4 is more than --limit 3"), "{err}");
}

/// `jobgate run --help` says what the command receives and what each exit
/// code means; `jobgate completions SHELL` prints a script for each shell.
#[test]
fn help_lists_exit_codes_and_completions_exist_for_each_shell() {
    let out = jobgate(&["run", "--help"], &[]);
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{help}");
    for needle in [
        "JOBGATE_HOLDER",
        "JOBGATE_FENCING_TOKEN",
        "JOBGATE_LEDGER",
        "123 ",
        "124 ",
        "125 ",
        "126 ",
        "127 ",
    ] {
        assert!(help.contains(needle), "{needle} not in:\n{help}");
    }
    for (shell, marker) in [
        ("bash", "_jobgate()"),
        ("zsh", "#compdef jobgate"),
        ("fish", "complete -c jobgate"),
    ] {
        let out = jobgate(&["completions", shell], &[]);
        let script = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{shell}: {out:?}");
        assert!(script.contains(marker), "{shell}: {script}");
        assert!(script.contains("doctor"), "{shell}: no subcommands");
    }
    let err = usage_error(&jobgate(&["completions", "tcsh"], &[]));
    assert!(err.contains("tcsh"), "{err}");
}

/// A plain `cargo build` in a git checkout names its commit in `--version`
/// (build.rs), as release builds do with JOBGATE_COMMIT.
#[test]
fn version_names_the_commit_it_was_built_from() {
    let head = std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("git rev-parse: the tests run in a git checkout");
    let head = String::from_utf8_lossy(&head.stdout).trim().to_string();
    let out = jobgate(&["--version"], &[]);
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{out:?}");
    assert_eq!(
        version.trim(),
        format!("jobgate {} ({head})", env!("CARGO_PKG_VERSION")),
        "rebuild after committing: the binary is older than HEAD"
    );
}

/// clap's own usage errors (exit 2) for values it refuses.
fn usage_error(out: &Output) -> String {
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    String::from_utf8_lossy(&out.stderr).into_owned()
}
