//! `jobgate run`'s exit codes, as timeout(1) and env(1) use them. In the
//! library because the guard process (`process::guard`) exits with them too.

/// The wait for a slot timed out (`--wait`), as with timeout(1).
pub const EXIT_WAIT_TIMEOUT: u8 = 124;
/// jobgate itself failed (bad input, store unreachable, ...).
pub const EXIT_ERROR: u8 = 125;
/// The command could not be executed.
pub const EXIT_NOT_EXECUTABLE: u8 = 126;
/// The command was not found.
pub const EXIT_NOT_FOUND: u8 = 127;
/// The lease could not be renewed, so the command was stopped.
pub const EXIT_LEASE_LOST: u8 = 123;
