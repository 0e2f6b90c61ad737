//! Agent identity: who renews a set of holders.

/// The host name, or "unknown-host".
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_string())
}

/// A fresh agent id for this process: host, pid and a random part, so a
/// restarted process never inherits a dead one's lease.
pub fn new_agent_id() -> String {
    format!(
        "{}-{}-{:08x}",
        hostname(),
        std::process::id(),
        rand::random::<u32>()
    )
}
