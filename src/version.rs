//! The version the binary reports (`--version`, `jobgate_build_info`, the
//! controller's startup line), in the library so that the operator need not
//! import it from the CLI.

/// What `--version` prints: the release's version (JOBGATE_VERSION at build
/// time, as the Dockerfile passes it, else Cargo's) and the commit when the
/// build was told it (JOBGATE_COMMIT). Empty values count as absent, since
/// `--build-arg X=` passes an empty one.
pub static VERSION: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    let given = |v: Option<&'static str>| v.filter(|s| !s.is_empty());
    let version = given(option_env!("JOBGATE_VERSION")).unwrap_or(env!("CARGO_PKG_VERSION"));
    match given(option_env!("JOBGATE_COMMIT")) {
        Some(commit) => format!("{version} ({commit})"),
        None => version.to_string(),
    }
});
