//! Test support for jobgate, never published: real servers built by
//! `scripts/testbed.sh` (SeaweedFS, a Kubernetes control plane), a fault
//! proxy for S3, the store conformance suite, limit checkers, helpers for
//! the operator's end-to-end tests, and the naive unconditional-PUT counter
//! that jobgate replaces (kept to show that the checkers catch violations).
//!
//! It lives outside the `jobgate` library so that nothing shipped can start
//! test servers or write a ledger unconditionally.

pub mod batchrun;
pub mod bench;
pub mod chart;
pub mod conformance;
pub mod controller;
pub mod faultproxy;
pub mod history;
pub mod k8s;
pub mod kueue;
pub mod naive;
pub mod node;
pub mod operator;
pub mod pods;
pub mod pty;
pub mod seaweedfs;
pub mod seed;
pub mod shared;
pub mod stores;
pub mod stripper;
pub mod tcpproxy;
pub mod testbed;
pub mod webhook;
pub mod workloads;

pub use seaweedfs::{SeaweedFs, bucket, seaweed};

use std::path::PathBuf;

/// The `jobgate` binary that cargo built for the test or benchmark now
/// running: it sits next to the `deps/` directory of the test executable.
/// `JOBGATE_BIN` overrides.
pub fn jobgate_bin() -> PathBuf {
    if let Some(bin) = std::env::var_os("JOBGATE_BIN") {
        return PathBuf::from(bin);
    }
    let exe = std::env::current_exe().unwrap_or_else(|e| panic!("current_exe: {e}"));
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .unwrap_or_else(|| panic!("{} has no profile directory", exe.display()));
    let bin = profile_dir.join("jobgate");
    assert!(
        bin.is_file(),
        "{} not found: build it with `cargo build` (cargo test builds it for jobgate's own tests)",
        bin.display()
    );
    bin
}

/// The repository's top directory (for `crds/` and `charts/`).
pub fn repo_dir() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
}
