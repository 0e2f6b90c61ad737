//! A checker for the one property that matters: at no instant did more than
//! `limit` holders hold a slot. Holding intervals are recorded on one
//! monotonic clock; the check is a sweep over their end points.

use std::sync::Mutex;
use std::time::Instant;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Interval {
    pub contender: usize,
    pub start: Instant,
    pub end: Instant,
}

#[derive(Debug, Default)]
pub struct IntervalLog {
    intervals: Mutex<Vec<Interval>>,
}

impl IntervalLog {
    pub fn record(&self, contender: usize, start: Instant, end: Instant) {
        let mut v = self.intervals.lock().unwrap_or_else(|p| p.into_inner());
        v.push(Interval {
            contender,
            start,
            end,
        });
    }

    pub fn intervals(&self) -> Vec<Interval> {
        self.intervals
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }
}

/// The largest number of intervals that overlap at one instant. Intervals
/// are half-open: one that ends exactly when another starts does not overlap.
pub fn max_overlap(intervals: &[Interval]) -> usize {
    let mut events: Vec<(Instant, i32)> = Vec::with_capacity(intervals.len() * 2);
    for i in intervals {
        events.push((i.start, 1));
        events.push((i.end, -1));
    }
    // Ends sort before starts at the same instant.
    events.sort();
    let (mut cur, mut max) = (0i64, 0i64);
    for (_, delta) in events {
        cur += delta as i64;
        max = max.max(cur);
    }
    max as usize
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn iv(t0: Instant, a: u64, b: u64) -> Interval {
        Interval {
            contender: 0,
            start: t0 + Duration::from_millis(a),
            end: t0 + Duration::from_millis(b),
        }
    }

    #[test]
    fn counts_overlaps() {
        let t0 = Instant::now();
        assert_eq!(max_overlap(&[]), 0);
        assert_eq!(max_overlap(&[iv(t0, 0, 10), iv(t0, 10, 20)]), 1);
        assert_eq!(
            max_overlap(&[iv(t0, 0, 10), iv(t0, 5, 20), iv(t0, 6, 7)]),
            3
        );
        assert_eq!(
            max_overlap(&[iv(t0, 0, 10), iv(t0, 5, 20), iv(t0, 11, 12)]),
            2
        );
    }
}
