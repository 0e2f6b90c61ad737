//! Gives `jobgate --version` the commit it was built from. A release build
//! passes JOBGATE_COMMIT itself (the Dockerfile, `make image`); a plain
//! `cargo build` in a git checkout gets it from git here. Without git (a
//! source tarball) the version stands alone.

use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=JOBGATE_COMMIT");
    if std::env::var("JOBGATE_COMMIT").is_ok_and(|c| !c.is_empty()) {
        return;
    }
    let Some(commit) = git(&["rev-parse", "--short=12", "HEAD"]) else {
        return;
    };
    println!("cargo:rustc-env=JOBGATE_COMMIT={commit}");
    // Rebuild when HEAD moves: HEAD itself (a checkout) and the branch it
    // names (a commit). Only files that exist are named, since cargo reruns
    // a build script on every build while a named file is missing.
    let Some(git_dir) = git(&["rev-parse", "--git-dir"]).map(PathBuf::from) else {
        return;
    };
    let common = git(&["rev-parse", "--git-common-dir"]).map_or(git_dir.clone(), PathBuf::from);
    let mut watched = vec![git_dir.join("HEAD"), common.join("packed-refs")];
    if let Some(branch) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(common.join(branch));
    }
    for path in watched.iter().filter(|p| Path::new(p).exists()) {
        println!("cargo:rerun-if-changed={}", path.display());
    }
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    let text = String::from_utf8(out.stdout).ok()?;
    (out.status.success() && !text.trim().is_empty()).then(|| text.trim().to_string())
}
