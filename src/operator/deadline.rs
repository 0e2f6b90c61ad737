//! The dead man's switch of `onControllerLoss: FailJobs`, as pure functions.
//!
//! Other clusters take a silent cluster's slots a lease after its last
//! renewal, whether or not its Jobs still run. A controller that is dead
//! cannot stop them, but the Job controller can: a Job whose
//! `spec.activeDeadlineSeconds` (counted from `status.startTime`) runs out
//! is failed with reason `DeadlineExceeded` and its pods are deleted. So
//! each admitted Job carries a deadline a little after this cluster's fence
//! (when its slots stop being safe without a renewal), and every pass moves
//! it on as renewals land (a pass needs the API server, not the ledger). If
//! the controller stops, nobody moves it, and the Job controller stops the
//! Job in time for its pods to end within the lease. A live controller that
//! loses the ledger suspends the Job at the fence instead, 2 s before the
//! deadline; the Job controller does not check the deadline of a suspended
//! Job. It does check it against the old `startTime` when the Job resumes,
//! before resetting it, so a re-admitted Job's first deadline counts from
//! that old start.

use std::time::Duration;

/// Remembers the Job's own `activeDeadlineSeconds` (or `none`) while the
/// controller manages the field, so that a deadline the user set is never
/// lengthened and comes back when the group stops using the switch.
pub const USER_DEADLINE_ANNOTATION: &str = "jobgate.dev/user-active-deadline-seconds";

/// How long after the fence the deadline falls: a live controller suspends
/// first; the rest of the stop margin is the Job controller's to act in.
pub const AFTER_FENCE: Duration = Duration::from_secs(2);

/// The user's own deadline: recorded in the annotation while managed,
/// else whatever the Job carries.
pub fn user_deadline(annotation: Option<&str>, current: Option<i64>) -> Option<i64> {
    match annotation {
        Some(recorded) => recorded.trim().parse().ok(),
        None => current,
    }
}

/// The annotation value that records `user`.
pub fn record(user: Option<i64>) -> String {
    user.map_or_else(|| "none".to_string(), |d| d.to_string())
}

/// The `activeDeadlineSeconds` that ends the Job `stop_in` from now, given
/// how long it has run (now − `startTime`; zero before the Job controller
/// has set it, which makes the Job end later by the Job controller's delay
/// in starting it: part of the margin). Rounded down, never under 1, and
/// never later than the user's own deadline.
pub fn wanted(running_for: Duration, stop_in: Duration, user: Option<i64>) -> i64 {
    let ours = i64::try_from((running_for + stop_in).as_secs())
        .unwrap_or(i64::MAX)
        .max(1);
    user.map_or(ours, |u| u.min(ours))
}

/// Whether to patch the Job: it has no deadline, or one that `wanted` moves
/// on, so that the deadline always trails the latest fence by
/// [`AFTER_FENCE`] once a pass has seen the renewal (one patch per renewal
/// per running Job). A deadline more than a second later than wanted (the
/// Job controller restarted its clock on a resume, or the user lowered
/// theirs) is brought down; a second either way is rounding between clocks.
pub fn needs_patch(current: Option<i64>, wanted: i64) -> bool {
    match current {
        None => true,
        Some(current) => wanted > current || wanted < current - 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: u64) -> Duration {
        Duration::from_secs(s)
    }

    #[test]
    fn the_deadline_ends_the_job_when_asked_and_rounds_down() {
        assert_eq!(wanted(secs(100), Duration::from_millis(26_900), None), 126);
        assert_eq!(wanted(Duration::ZERO, Duration::ZERO, None), 1);
    }

    #[test]
    fn the_users_own_deadline_is_never_lengthened() {
        assert_eq!(wanted(secs(100), secs(27), Some(110)), 110);
        assert_eq!(wanted(secs(100), secs(27), Some(9000)), 127);
    }

    #[test]
    fn the_user_deadline_is_read_from_the_annotation_while_managed() {
        assert_eq!(user_deadline(None, Some(600)), Some(600));
        assert_eq!(user_deadline(Some("600"), Some(127)), Some(600));
        assert_eq!(user_deadline(Some("none"), Some(127)), None);
        assert_eq!(record(None), "none");
        assert_eq!(record(Some(600)), "600");
    }

    #[test]
    fn a_job_without_a_deadline_or_with_a_later_one_is_patched() {
        assert!(needs_patch(None, 127));
        assert!(needs_patch(Some(200), 127));
    }

    #[test]
    fn the_deadline_moves_on_with_every_renewal_but_not_for_rounding() {
        assert!(needs_patch(Some(127), 135));
        assert!(!needs_patch(Some(127), 127));
        assert!(!needs_patch(Some(128), 127), "a second of rounding");
    }
}
