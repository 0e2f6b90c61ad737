//! What `jobgate` prints when the store cannot be used: one short line that
//! names the cause, with the SDK's detail only under `-v`.
//!
//! Runs the real binary in a scrubbed environment. Nothing here may leave
//! the machine: IMDS is disabled, and wherever a request could be sent the
//! endpoint is on loopback.

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Output};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

/// Nothing listens on port 1, so connecting there is refused at once.
const REFUSED: &str = "http://127.0.0.1:1";

/// An empty directory for HOME, so that no `~/.aws` profile can supply
/// credentials or a region.
struct EmptyHome(PathBuf);

impl EmptyHome {
    fn new(tag: &str) -> EmptyHome {
        let dir = std::env::temp_dir().join(format!(
            "jobgate-cli-errors-{tag}-{}-{}",
            std::process::id(),
            NEXT.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        EmptyHome(dir)
    }
}

impl Drop for EmptyHome {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

static NEXT: AtomicU64 = AtomicU64::new(0);

/// Runs jobgate with only PATH, HOME and `env` set; IMDS is always disabled
/// so that the SDK never probes 169.254.169.254.
fn jobgate(args: &[&str], env: &[(&str, &str)]) -> (Output, Duration) {
    let home = EmptyHome::new("home");
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_jobgate"));
    cmd.args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("HOME", &home.0)
        .env("AWS_EC2_METADATA_DISABLED", "true");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let start = Instant::now();
    let out = cmd.output().unwrap();
    (out, start.elapsed())
}

/// The single error line, after checking the exit code, the line count, the
/// length and that the answer came back quickly.
fn one_short_line((out, took): (Output, Duration)) -> String {
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(125), "stderr: {stderr}");
    assert_eq!(stderr.lines().count(), 1, "not one line:\n{stderr}");
    let line = stderr.trim_end().to_string();
    assert!(line.starts_with("jobgate: error: "), "{line}");
    assert!(
        line.chars().count() < 200,
        "{} chars: {line}",
        line.chars().count()
    );
    assert!(!line.contains(" { "), "a Debug dump leaked: {line}");
    assert!(took < Duration::from_secs(5), "took {took:?}: {line}");
    line
}

fn run_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["run", "--ledger", "s3://b/k.json", "--limit", "2"];
    args.extend_from_slice(extra);
    args.extend_from_slice(&["--", "true"]);
    args
}

fn status_args(extra: &[&'static str]) -> Vec<&'static str> {
    let mut args = vec!["status", "--ledger", "s3://b/k.json"];
    args.extend_from_slice(extra);
    args
}

const CREDENTIALS: [(&str, &str); 3] = [
    ("AWS_ACCESS_KEY_ID", "x"),
    ("AWS_SECRET_ACCESS_KEY", "y"),
    ("AWS_REGION", "us-east-1"),
];

#[test]
fn missing_credentials_fail_before_any_request() {
    // First with an endpoint that would notice a connection: the SDK must
    // give up while resolving the identity, before it sends anything. Only
    // once that holds is it safe to run without an endpoint (which would
    // mean AWS itself).
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let watched: &'static str = format!("http://{}", listener.local_addr().unwrap()).leak();
    for args in [
        run_args(&["--endpoint-url", watched]),
        status_args(&["--endpoint-url", watched]),
    ] {
        let line = one_short_line(jobgate(&args, &[]));
        assert!(line.contains("no AWS credentials"), "{line}");
    }
    match listener.accept() {
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
        other => panic!("jobgate connected to the store without credentials: {other:?}"),
    }

    for args in [run_args(&[]), status_args(&[])] {
        let line = one_short_line(jobgate(&args, &[]));
        assert!(line.contains("credentials"), "{line}");
        assert!(
            line.contains("AWS_ACCESS_KEY_ID"),
            "says how to fix it: {line}"
        );
    }
}

#[test]
fn an_unreachable_endpoint_is_named() {
    for args in [
        run_args(&["--endpoint-url", REFUSED]),
        status_args(&["--endpoint-url", REFUSED]),
    ] {
        let line = one_short_line(jobgate(&args, &CREDENTIALS));
        assert_eq!(
            line,
            format!("jobgate: error: cannot reach {REFUSED} (connection refused)")
        );
    }
    // The same endpoint from the environment is named the same way.
    let mut env = CREDENTIALS.to_vec();
    env.push(("AWS_ENDPOINT_URL", REFUSED));
    let line = one_short_line(jobgate(&status_args(&[]), &env));
    assert!(line.contains(&format!("cannot reach {REFUSED}")), "{line}");
}

/// An HTTP server on loopback that answers every request with 404 and an
/// HTML page, as an ordinary web server (or the wrong port) would.
fn not_found_everywhere() -> String {
    use std::io::{Read, Write};
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let Ok(mut stream) = stream else { continue };
            std::thread::spawn(move || {
                let mut buf = [0u8; 65536];
                // One request per read is enough for the SDK's small ones.
                while let Ok(n) = stream.read(&mut buf) {
                    if n == 0 {
                        break;
                    }
                    let page = "<html><body>Not Found</body></html>";
                    let answer = format!(
                        "HTTP/1.1 404 Not Found\r\ncontent-type: text/html\r\ncontent-length: {}\r\n\r\n{page}",
                        page.len()
                    );
                    if stream.write_all(answer.as_bytes()).is_err() {
                        break;
                    }
                }
            });
        }
    });
    url
}

#[test]
fn an_endpoint_that_is_not_s3_is_named_within_seconds() {
    let url: &'static str = not_found_everywhere().leak();
    let line = one_short_line(jobgate(&run_args(&["--endpoint-url", url]), &CREDENTIALS));
    assert!(line.contains("does not behave like S3"), "{line}");
}

#[test]
fn verbose_runs_show_the_sdk_detail() {
    let verbose = [
        "-v",
        "status",
        "--ledger",
        "s3://b/k.json",
        "--endpoint-url",
        REFUSED,
    ];
    let (out, _) = jobgate(&verbose, &CREDENTIALS);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(125), "{stderr}");
    assert!(stderr.lines().count() > 1, "{stderr}");
    // The SDK's own wording, down to the operating system's error.
    assert!(stderr.contains("dispatch failure"), "{stderr}");
    assert!(stderr.contains("Connection refused"), "{stderr}");
    let last = stderr.lines().last().unwrap_or_default();
    assert_eq!(
        last,
        format!("jobgate: error: cannot reach {REFUSED} (connection refused)")
    );

    let (out, _) = jobgate(&verbose, &[]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no providers in chain"), "{stderr}");
}

#[test]
fn a_webhook_without_a_name_for_its_certificate_is_refused_before_connecting() {
    // No --webhook-service or --webhook-host: nothing the API server could
    // verify. Refused before the kubeconfig is even read.
    let out = jobgate(
        &[
            "controller",
            "--webhook-listen",
            "127.0.0.1:0",
            "--kubeconfig",
            "/nonexistent",
        ],
        &[],
    );
    let line = one_short_line(out);
    assert_eq!(
        line,
        "jobgate: error: the webhook's own certificate needs a name: give --webhook-service (its Service) or --webhook-host (the host the API server calls)"
    );
}
