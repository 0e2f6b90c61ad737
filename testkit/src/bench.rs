//! Figures for the operator benchmark (`benches/operator.rs`), from what a
//! watcher of the Jobs saw: when each Job was admitted (seen unsuspended)
//! and when it finished (seen complete).

use std::collections::{BTreeMap, VecDeque};
use std::time::Duration;

/// One thing seen happen to a Job of a group, at a time since the start.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Seen {
    Admitted,
    Finished,
}

/// Freed→admitted latencies, group by group: each admission is paired with
/// the oldest unpaired completion before it, but only completions that
/// came while the group still had Jobs waiting count (when none waits, a
/// freed slot stays free, and pairing it later would measure the wait for
/// new work, not the controller). `events` is (group, time, what) in any
/// order; `jobs` is each group's number of Jobs.
pub fn freed_to_admitted(
    events: &[(String, Duration, Seen)],
    jobs: &BTreeMap<String, usize>,
) -> Vec<Duration> {
    let mut sorted: Vec<&(String, Duration, Seen)> = events.iter().collect();
    // Admissions before completions at the same instant: a completion
    // cannot have caused an admission seen at the same time.
    sorted.sort_by_key(|(g, t, s)| (*t, *s == Seen::Finished, g.clone()));
    let mut admitted: BTreeMap<&str, usize> = BTreeMap::new();
    let mut freed: BTreeMap<&str, VecDeque<Duration>> = BTreeMap::new();
    let mut out = Vec::new();
    for (group, at, seen) in sorted {
        match seen {
            Seen::Admitted => {
                *admitted.entry(group).or_default() += 1;
                if let Some(free) = freed.entry(group).or_default().pop_front() {
                    out.push(at.saturating_sub(free));
                }
            }
            Seen::Finished => {
                let total = jobs.get(group).copied().unwrap_or(0);
                let so_far = admitted.get(group.as_str()).copied().unwrap_or(0);
                if so_far < total {
                    freed.entry(group).or_default().push_back(*at);
                }
            }
        }
    }
    out
}

/// The `q` quantile (0..=1) of `values`, by nearest rank; zero when empty.
pub fn quantile(values: &[Duration], q: f64) -> Duration {
    if values.is_empty() {
        return Duration::ZERO;
    }
    let mut v = values.to_vec();
    v.sort();
    let rank = ((q * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Events per second between the first and the last of `times`.
pub fn rate(times: &[Duration]) -> f64 {
    let (Some(first), Some(last)) = (times.iter().min(), times.iter().max()) else {
        return 0.0;
    };
    let span = last.saturating_sub(*first).as_secs_f64();
    if span == 0.0 {
        return 0.0;
    }
    (times.len().saturating_sub(1)) as f64 / span
}

/// S3 request cost in dollars per million Jobs at S3 Standard list prices
/// (PUT $0.005 and GET $0.0004 per 1,000 requests).
pub fn cost_per_million_jobs(gets_per_job: f64, puts_per_job: f64) -> f64 {
    (gets_per_job * 0.0004 + puts_per_job * 0.005) / 1000.0 * 1_000_000.0
}

/// The sum of a counter's samples in Prometheus text whose name is `name`
/// and whose labels contain every `labels` pair (`op="get"`).
pub fn metric_sum(text: &str, name: &str, labels: &[&str]) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let (series, value) = l.rsplit_once(' ')?;
            let (metric, rest) = match series.split_once('{') {
                Some((m, rest)) => (m, rest),
                None => (series, ""),
            };
            (metric == name && labels.iter().all(|want| rest.contains(want)))
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn admissions_pair_with_frees_only_while_jobs_wait() {
        let g = "g".to_string();
        let jobs = BTreeMap::from([(g.clone(), 4)]);
        // Limit 2: two admitted at once, then each completion frees a slot
        // for the next; the last two completions find nobody waiting.
        let events = vec![
            (g.clone(), ms(0), Seen::Admitted),
            (g.clone(), ms(1), Seen::Admitted),
            (g.clone(), ms(100), Seen::Finished),
            (g.clone(), ms(130), Seen::Admitted),
            (g.clone(), ms(200), Seen::Finished),
            (g.clone(), ms(250), Seen::Admitted),
            (g.clone(), ms(300), Seen::Finished),
            (g.clone(), ms(400), Seen::Finished),
        ];
        assert_eq!(freed_to_admitted(&events, &jobs), vec![ms(30), ms(50)]);
    }

    #[test]
    fn groups_are_paired_apart_and_order_of_events_does_not_matter() {
        let jobs = BTreeMap::from([("a".to_string(), 2), ("b".to_string(), 2)]);
        let mut events = vec![
            ("a".to_string(), ms(0), Seen::Admitted),
            ("b".to_string(), ms(0), Seen::Admitted),
            ("a".to_string(), ms(10), Seen::Finished),
            ("b".to_string(), ms(20), Seen::Finished),
            ("b".to_string(), ms(25), Seen::Admitted),
            ("a".to_string(), ms(40), Seen::Admitted),
        ];
        events.reverse();
        let mut got = freed_to_admitted(&events, &jobs);
        got.sort();
        assert_eq!(got, vec![ms(5), ms(30)]);
    }

    #[test]
    fn quantiles_rates_costs_and_metrics() {
        let v: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(quantile(&v, 0.5), ms(50));
        assert_eq!(quantile(&v, 0.99), ms(99));
        assert_eq!(quantile(&v, 1.0), ms(100));
        assert_eq!(quantile(&[], 0.5), Duration::ZERO);
        let times: Vec<Duration> = (0..=10).map(|i| ms(i * 100)).collect();
        assert!((rate(&times) - 10.0).abs() < 1e-9);
        // 1 PUT and 2 GETs per Job: $5 + $0.80 per million.
        assert!((cost_per_million_jobs(2.0, 1.0) - 5.8).abs() < 1e-9);
        let text = "# HELP x\njobgate_s3_request_duration_seconds_count{op=\"get\"} 3\njobgate_s3_request_duration_seconds_count{op=\"put\"} 2\njobgate_kube_requests_total{verb=\"list\"} 4\njobgate_kube_requests_total{verb=\"watch\"} 1\n";
        assert_eq!(
            metric_sum(
                text,
                "jobgate_s3_request_duration_seconds_count",
                &["op=\"get\""]
            ),
            3.0
        );
        assert_eq!(metric_sum(text, "jobgate_kube_requests_total", &[]), 5.0);
    }
}
