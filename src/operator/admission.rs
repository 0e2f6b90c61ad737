//! The pure admission decision for one group in one cluster: given the
//! group's Jobs and the slots this cluster holds in the ledger, what to do.
//! The controller gathers the inputs, calls `plan`, then writes the ledger
//! and patches Jobs.

use std::collections::BTreeSet;

/// What the controller knows about one Job of the group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobView {
    /// The holder id in the ledger.
    pub uid: String,
    pub name: String,
    /// Creation time as a sortable RFC 3339 string.
    pub created: String,
    /// `jobgate.dev/priority`; higher goes first.
    pub priority: i32,
    pub suspended: bool,
    /// Carries the admitted-at annotation (this controller let it run).
    pub admitted: bool,
    /// Has a `Complete` or `Failed` condition.
    pub finished: bool,
    /// Has pods that are not finished.
    pub active_pods: bool,
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Free these slots: the Job finished, was deleted, or was suspended again
    /// by a user and its pods are gone.
    pub release: Vec<String>,
    /// Hold a slot but are still suspended (e.g. the controller stopped between
    /// the ledger write and the patch): unsuspend them now.
    pub unsuspend: Vec<String>,
    /// Running without a slot (created without `suspend: true`): take a slot
    /// if one is free, else suspend them again.
    pub adopt: Vec<String>,
    /// Waiting Jobs in admission order: priority, then age, then name.
    pub acquire: Vec<String>,
}

pub fn plan(jobs: &[JobView], held_here: &BTreeSet<String>) -> Plan {
    let mut out = Plan::default();
    for holder in held_here {
        match jobs.iter().find(|j| &j.uid == holder) {
            None => out.release.push(holder.clone()),
            Some(j) if j.finished => out.release.push(holder.clone()),
            Some(j) if j.suspended && j.admitted && !j.active_pods => {
                out.release.push(holder.clone())
            }
            Some(j) if j.suspended && !j.admitted => out.unsuspend.push(holder.clone()),
            Some(_) => {}
        }
    }
    let mut waiting: Vec<&JobView> = Vec::new();
    for j in jobs {
        if j.finished || held_here.contains(&j.uid) {
            continue;
        }
        if !j.suspended {
            out.adopt.push(j.uid.clone());
        } else if !j.admitted {
            waiting.push(j);
        }
    }
    waiting.sort_by(|a, b| {
        b.priority
            .cmp(&a.priority)
            .then_with(|| a.created.cmp(&b.created))
            .then_with(|| a.name.cmp(&b.name))
    });
    out.acquire = waiting.into_iter().map(|j| j.uid.clone()).collect();
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(uid: &str, created: &str) -> JobView {
        JobView {
            uid: uid.into(),
            name: format!("job-{uid}"),
            created: created.into(),
            priority: 0,
            suspended: true,
            admitted: false,
            finished: false,
            active_pods: false,
        }
    }

    fn held(uids: &[&str]) -> BTreeSet<String> {
        uids.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn waiting_jobs_go_by_priority_then_age() {
        let mut urgent = job("c", "2026-01-03T00:00:00Z");
        urgent.priority = 10;
        let jobs = [
            job("b", "2026-01-02T00:00:00Z"),
            job("a", "2026-01-01T00:00:00Z"),
            urgent,
        ];
        assert_eq!(plan(&jobs, &held(&[])).acquire, vec!["c", "a", "b"]);
    }

    #[test]
    fn finished_and_deleted_jobs_free_their_slots() {
        let mut done = job("a", "t");
        done.finished = true;
        done.suspended = false;
        done.admitted = true;
        let p = plan(&[done], &held(&["a", "gone"]));
        assert_eq!(p.release, vec!["a", "gone"]);
        assert!(p.acquire.is_empty());
    }

    #[test]
    fn a_slot_held_for_a_suspended_job_is_finished_by_unsuspending() {
        let p = plan(&[job("a", "t")], &held(&["a"]));
        assert_eq!(p.unsuspend, vec!["a"]);
        assert!(p.acquire.is_empty(), "must not ask for a second slot");
    }

    #[test]
    fn a_job_suspended_again_by_a_user_is_released_once_its_pods_are_gone() {
        let mut paused = job("a", "t");
        paused.admitted = true;
        paused.active_pods = true;
        assert!(plan(&[paused.clone()], &held(&["a"])).release.is_empty());
        paused.active_pods = false;
        assert_eq!(plan(&[paused], &held(&["a"])).release, vec!["a"]);
    }

    #[test]
    fn running_jobs_without_a_slot_are_adopted() {
        let mut rogue = job("a", "t");
        rogue.suspended = false;
        let p = plan(&[rogue], &held(&[]));
        assert_eq!(p.adopt, vec!["a"]);
        assert!(p.acquire.is_empty());
    }

    #[test]
    fn admitted_running_jobs_are_left_alone() {
        let mut running = job("a", "t");
        running.suspended = false;
        running.admitted = true;
        assert_eq!(plan(&[running], &held(&["a"])), Plan::default());
    }
}
