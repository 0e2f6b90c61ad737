//! The vocabulary between the plan and the act steps of a pass: what is to
//! be done to a workload (`Effect`), and what workloads have been told
//! already (`Told`), with "tell once" as a pure filter over effects. Kept
//! apart from `reconcile` because `Told` outlives a pass, in the group's
//! `ledgers::Remembered`.

use std::collections::BTreeSet;

use kube::runtime::events::EventType;

use super::admission::ReleaseReason;

/// One thing to do to one workload (by UID), in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Effect {
    /// Its slot was freed by this pass's write: count it, and for a Job a
    /// user suspended, clear its admission marks so that resumed it waits.
    Released { uid: String, reason: ReleaseReason },
    /// Suspended, still marked admitted, holding no slot: clear the marks.
    Disown { uid: String },
    /// Suspend it (it runs and must not), telling it why.
    Suspend {
        uid: String,
        reason: &'static str,
        note: String,
    },
    /// Unsuspend it into the slot granted with `token`. Carried out
    /// together with the other admissions of the pass, several at once.
    Unsuspend { uid: String, token: u64 },
    /// It runs and now holds a slot: mark it admitted.
    Adopt { uid: String, token: u64 },
    /// An Event on it, told once per `once` key if it has one.
    Tell {
        uid: String,
        type_: EventType,
        reason: &'static str,
        action: &'static str,
        note: String,
        once: Option<Once>,
    },
}

/// What a workload has already been told, by which of the three memories
/// of `Told` it is kept in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Once {
    /// That it waits (or why it cannot be admitted at all): forgotten when
    /// it is admitted.
    Waiting(String),
    /// Why it is refused, as `reason/uid`.
    Refused(String),
    /// Why nothing is admitted (group suspended or being deleted), as
    /// `reason/uid`: forgotten when the group admits again.
    Held(String),
}

/// What the workloads of a group have been told, kept between passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Told {
    pub waiting: BTreeSet<String>,
    pub refused: BTreeSet<String>,
    pub held: BTreeSet<String>,
}

impl Told {
    /// Forgets workloads that are gone, and, when the group admits again
    /// (nothing held back), why it did not: held back again later, they
    /// are told again.
    pub fn forget(&mut self, present: impl Fn(&str) -> bool, nothing_held: bool) {
        let of_present = |key: &String| key.split_once('/').is_some_and(|(_, uid)| present(uid));
        self.waiting.retain(|uid| present(uid));
        self.refused.retain(of_present);
        if nothing_held {
            self.held.clear();
        } else {
            self.held.retain(of_present);
        }
    }

    /// Whether the tell keyed `once` was made already.
    pub fn knows(&self, once: &Once) -> bool {
        match once {
            Once::Waiting(uid) => self.waiting.contains(uid),
            Once::Refused(key) => self.refused.contains(key),
            Once::Held(key) => self.held.contains(key),
        }
    }

    /// A workload admitted: told again if it ever waits again.
    pub fn admitted(&mut self, uid: &str) {
        self.waiting.remove(uid);
    }
}

/// "Tell once", as a filter: drops every `Tell` whose key is already in
/// `told`, and records the keys of the ones it lets through.
pub fn tell_once(told: &mut Told, effects: Vec<Effect>) -> Vec<Effect> {
    effects
        .into_iter()
        .filter(|effect| match effect {
            Effect::Tell {
                once: Some(once), ..
            } => match once {
                Once::Waiting(uid) => told.waiting.insert(uid.clone()),
                Once::Refused(key) => told.refused.insert(key.clone()),
                Once::Held(key) => told.held.insert(key.clone()),
            },
            _ => true,
        })
        .collect()
}
