//! Repeats of an Event, counted the way client-go's events recorder
//! (`k8s.io/client-go/tools/events`) counts them: an Event is isomorphic to
//! an earlier one when everything but its time is the same (object,
//! type, reason, action, note); the first is created, and a repeat within
//! six minutes of the last one becomes a count on the first (its
//! `series`) instead of an Event of its own.
//!
//! Where this differs: client-go patches the series at the second
//! occurrence and then every 30 minutes; here it is patched at the 2nd,
//! 4th, 8th, ... occurrence, so that a series costs log₂(repeats)
//! requests and its count is never less than half the truth, with no timer
//! to run. And only the last `REMEMBERED` Events are kept: client-go keeps
//! every Event of the last six minutes, which at depth was most of the
//! controller's memory (see the module above).
//!
//! Pure: the caller passes the time in, so the rules are tested without a
//! clock.

use std::collections::{HashMap, VecDeque};
use std::hash::{DefaultHasher, Hash, Hasher};
use std::time::{Duration, Instant};

/// How long after its last occurrence a repeat still joins a series, as in
/// client-go.
pub const WINDOW: Duration = Duration::from_secs(6 * 60);

/// How many distinct Events are remembered for repeats; past that the one
/// seen least recently is forgotten (its next repeat is created anew).
pub const REMEMBERED: usize = 4096;

/// What to send for one occurrence of an Event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Send {
    /// The first occurrence (or the first since it was forgotten): create it.
    Create,
    /// A repeat that a series patch reports: set the series of the Event
    /// created as `name` to `count`.
    Series { name: String, count: u32 },
    /// A repeat counted in memory only.
    Nothing,
}

/// Identifies an Event up to its time (client-go's `getKey`).
#[derive(Hash)]
pub struct Key<'a> {
    pub namespace: &'a str,
    pub object: &'a str,
    pub uid: &'a str,
    pub type_: &'a str,
    pub reason: &'a str,
    pub action: &'a str,
    pub note: &'a str,
}

impl Key<'_> {
    /// A hash stands in for the key: keeping the notes of thousands of
    /// Events would cost what the hash saves. Two different Events with
    /// one hash (odds of about 2⁻⁶⁴ per pair) would make the second a
    /// repeat of the first: one Event fewer, nothing else.
    fn digest(&self) -> u64 {
        let mut h = DefaultHasher::new();
        self.hash(&mut h);
        h.finish()
    }
}

struct Seen {
    /// The name the first occurrence was created under.
    name: String,
    count: u32,
    last: Instant,
}

#[derive(Default)]
pub struct Series {
    seen: HashMap<u64, Seen>,
    /// Digests by when they were last seen, oldest first; may hold stale
    /// entries for digests seen again since (skipped when evicting).
    order: VecDeque<(u64, Instant)>,
}

impl Series {
    /// Records an occurrence of the Event `key`, which would be created as
    /// `name`, at `now`, and says what to send.
    pub fn observe(&mut self, key: &Key, name: &str, now: Instant) -> Send {
        let digest = key.digest();
        let send = match self.seen.get_mut(&digest) {
            Some(seen) if now.saturating_duration_since(seen.last) <= WINDOW => {
                seen.count += 1;
                seen.last = now;
                if seen.count.is_power_of_two() {
                    Send::Series {
                        name: seen.name.clone(),
                        count: seen.count,
                    }
                } else {
                    Send::Nothing
                }
            }
            _ => {
                self.seen.insert(
                    digest,
                    Seen {
                        name: name.to_string(),
                        count: 1,
                        last: now,
                    },
                );
                Send::Create
            }
        };
        self.order.push_back((digest, now));
        self.evict(now);
        send
    }

    /// Forgets Events not seen within the window, and the least recently
    /// seen ones past `REMEMBERED`.
    fn evict(&mut self, now: Instant) {
        while let Some(&(digest, at)) = self.order.front() {
            let current = self.seen.get(&digest).is_some_and(|s| s.last == at);
            let expired = now.saturating_duration_since(at) > WINDOW;
            let over = self.seen.len() > REMEMBERED || self.order.len() > 2 * REMEMBERED;
            if current && !expired && !over {
                break;
            }
            self.order.pop_front();
            if current {
                self.seen.remove(&digest);
            }
        }
    }

    /// How many distinct Events are remembered.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.seen.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(note: &str) -> Key<'_> {
        Key {
            namespace: "batch",
            object: "etl",
            uid: "u1",
            type_: "Warning",
            reason: "OverLimit",
            action: "Admit",
            note,
        }
    }

    #[test]
    fn a_repeat_within_the_window_counts_on_the_first_and_is_patched_at_each_doubling() {
        let mut s = Series::default();
        let t = Instant::now();
        assert_eq!(s.observe(&key("n"), "etl.1", t), Send::Create);
        let mut sent = Vec::new();
        for i in 1..=9u64 {
            sent.push(s.observe(&key("n"), "etl.x", t + Duration::from_secs(i)));
        }
        let series = |count| Send::Series {
            name: "etl.1".into(),
            count,
        };
        assert_eq!(
            sent,
            vec![
                series(2),
                Send::Nothing,
                series(4),
                Send::Nothing,
                Send::Nothing,
                Send::Nothing,
                series(8),
                Send::Nothing,
                Send::Nothing,
            ]
        );
    }

    #[test]
    fn a_different_note_or_object_is_an_event_of_its_own() {
        let mut s = Series::default();
        let t = Instant::now();
        assert_eq!(s.observe(&key("a"), "etl.1", t), Send::Create);
        assert_eq!(s.observe(&key("b"), "etl.2", t), Send::Create);
        let other = Key {
            uid: "u2",
            ..key("a")
        };
        assert_eq!(s.observe(&other, "etl.3", t), Send::Create);
    }

    #[test]
    fn a_repeat_after_the_window_starts_anew() {
        let mut s = Series::default();
        let t = Instant::now();
        assert_eq!(s.observe(&key("n"), "etl.1", t), Send::Create);
        // Each repeat moves the window on.
        let t2 = t + WINDOW;
        assert!(matches!(
            s.observe(&key("n"), "etl.2", t2),
            Send::Series { .. }
        ));
        let late = t2 + WINDOW + Duration::from_secs(1);
        assert_eq!(s.observe(&key("n"), "etl.3", late), Send::Create);
        assert_eq!(s.len(), 1, "the expired one is forgotten");
    }

    #[test]
    fn at_most_the_last_remembered_events_are_kept() {
        let mut s = Series::default();
        let t = Instant::now();
        let notes: Vec<String> = (0..REMEMBERED + 10).map(|i| i.to_string()).collect();
        for note in &notes {
            s.observe(&key(note), "e", t);
        }
        assert_eq!(s.len(), REMEMBERED);
        // The first ones were forgotten: created again.
        assert_eq!(s.observe(&key(&notes[0]), "e", t), Send::Create);
        // The last one is still remembered.
        assert!(matches!(
            s.observe(&key(&notes[REMEMBERED + 9]), "e", t),
            Send::Series { .. }
        ));
    }
}
