//! Prometheus metrics of the controller, served on `/metrics`.

use std::sync::atomic::AtomicU64;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct GroupLabels {
    pub namespace: String,
    pub group: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReleaseLabels {
    pub namespace: String,
    pub group: String,
    /// finished, deleted, suspended, lease_lost
    pub reason: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OpLabels {
    pub op: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    /// get, put, delete
    pub op: String,
    /// See `outcome` in ledgers.rs: ok, not_modified, missing, conflict,
    /// ambiguous, unavailable, denied, no_bucket, unsupported, error.
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct VerbLabels {
    /// get, list, watch, create, update, patch, delete, deletecollection, other
    pub verb: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ErrorLabels {
    /// The pipeline step that failed (see `operator::Error::kind`).
    pub kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct WebhookLabels {
    /// suspended, unchanged, invalid
    pub verdict: String,
}

type HistogramFamily<L> = Family<L, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    // 1 ms .. about 33 s.
    Histogram::new(exponential_buckets(0.001, 2.0, 16))
}

fn wait_histogram() -> Histogram {
    // 100 ms .. about 1.8 days: batch Jobs can wait long.
    Histogram::new(exponential_buckets(0.1, 3.0, 15))
}

pub struct Metrics {
    pub admissions: Family<GroupLabels, Counter>,
    pub releases: Family<ReleaseLabels, Counter>,
    pub waiting: Family<GroupLabels, Gauge>,
    pub in_use: Family<GroupLabels, Gauge>,
    pub admitted_here: Family<GroupLabels, Gauge>,
    pub limit: Family<GroupLabels, Gauge>,
    pub ledger_conflicts: Family<GroupLabels, Counter>,
    pub ledger_writes: Family<GroupLabels, Counter>,
    pub s3_latency: HistogramFamily<OpLabels>,
    pub api_latency: HistogramFamily<OpLabels>,
    pub admission_wait: HistogramFamily<GroupLabels>,
    pub pass_duration: HistogramFamily<GroupLabels>,
    pub reconciles: Counter,
    pub reconcile_errors: Family<ErrorLabels, Counter>,
    pub leader: Gauge,
    pub deadline_patches: Family<GroupLabels, Counter>,
    pub webhook_reviews: Family<WebhookLabels, Counter>,
    pub jobs_without_group: Family<GroupLabels, Gauge>,
    pub kube_requests: Family<VerbLabels, Counter>,
    pub s3_requests: Family<OutcomeLabels, Counter>,
    pub group_ready: Family<GroupLabels, Gauge>,
    pub lease_renewal_age: Family<GroupLabels, Gauge<f64, AtomicU64>>,
    pub lease_remaining: Family<GroupLabels, Gauge<f64, AtomicU64>>,
    pub oldest_waiting: Family<GroupLabels, Gauge<f64, AtomicU64>>,
    pub events_dropped: Counter,
    pub event_repeats: Counter,
}

impl Metrics {
    pub fn new(registry: &mut Registry) -> Self {
        let m = Metrics {
            admissions: Family::default(),
            releases: Family::default(),
            waiting: Family::default(),
            in_use: Family::default(),
            admitted_here: Family::default(),
            limit: Family::default(),
            ledger_conflicts: Family::default(),
            ledger_writes: Family::default(),
            s3_latency: Family::new_with_constructor(latency_histogram),
            api_latency: Family::new_with_constructor(latency_histogram),
            admission_wait: Family::new_with_constructor(wait_histogram),
            pass_duration: Family::new_with_constructor(latency_histogram),
            reconciles: Counter::default(),
            reconcile_errors: Family::default(),
            leader: Gauge::default(),
            deadline_patches: Family::default(),
            webhook_reviews: Family::default(),
            jobs_without_group: Family::default(),
            kube_requests: Family::default(),
            s3_requests: Family::default(),
            group_ready: Family::default(),
            lease_renewal_age: Family::default(),
            lease_remaining: Family::default(),
            oldest_waiting: Family::default(),
            events_dropped: Counter::default(),
            event_repeats: Counter::default(),
        };
        registry.register_collector(Box::new(super::process_metrics::ProcessCollector));
        let r = registry.sub_registry_with_prefix("jobgate");
        // Which build runs, for dashboards and for alerts that must tell
        // replicas of different versions apart.
        r.register(
            "build",
            "The running build: its version (and commit, when the build was told it)",
            prometheus_client::metrics::info::Info::new(vec![(
                "version",
                crate::version::VERSION.to_string(),
            )]),
        );
        r.register(
            "webhook_reviews",
            "Job creations the webhook reviewed, by what it did",
            m.webhook_reviews.clone(),
        );
        r.register(
            "jobs_without_group",
            "Unfinished Jobs labelled with a group that does not exist, by namespace and group name",
            m.jobs_without_group.clone(),
        );
        r.register(
            "events_dropped",
            "Events not created because too many waited to be (Normal ones past half the queue, Warnings when it is full)",
            m.events_dropped.clone(),
        );
        r.register(
            "event_repeats",
            "Events that repeated a recent one on the same object and were counted on its series instead",
            m.event_repeats.clone(),
        );
        r.register(
            "kube_requests",
            "Requests sent to the Kubernetes API server, by verb (watches count once each)",
            m.kube_requests.clone(),
        );
        r.register(
            "deadline_patches",
            "Job activeDeadlineSeconds set or moved on (onControllerLoss: FailJobs)",
            m.deadline_patches.clone(),
        );
        r.register(
            "admissions",
            "Jobs admitted (given a slot and unsuspended)",
            m.admissions.clone(),
        );
        r.register("releases", "Slots freed, by reason", m.releases.clone());
        r.register(
            "waiting_jobs",
            "Jobs waiting for a slot in this cluster",
            m.waiting.clone(),
        );
        r.register(
            "slots_in_use",
            "Slots in use in all clusters, as of the last ledger read",
            m.in_use.clone(),
        );
        r.register(
            "slots_held_here",
            "Slots held by this cluster",
            m.admitted_here.clone(),
        );
        r.register(
            "limit",
            "The limit in force (the ledger's)",
            m.limit.clone(),
        );
        r.register(
            "ledger_write_conflicts",
            "Ledger writes that lost a compare-and-swap race",
            m.ledger_conflicts.clone(),
        );
        r.register(
            "ledger_writes",
            "Ledger writes that landed",
            m.ledger_writes.clone(),
        );
        r.register(
            "s3_request_duration_seconds",
            "Ledger store (S3, GCS or Azure) request latency by operation",
            m.s3_latency.clone(),
        );
        r.register(
            "kube_request_duration_seconds",
            "Kubernetes API request latency by operation",
            m.api_latency.clone(),
        );
        r.register(
            "admission_wait_seconds",
            "Time from Job creation to admission",
            m.admission_wait.clone(),
        );
        r.register("reconciles", "Group reconciliations", m.reconciles.clone());
        r.register(
            "pass_duration_seconds",
            "How long one reconciliation of a group took, end to end (the group's next pass waits for it)",
            m.pass_duration.clone(),
        );
        r.register(
            "reconcile_errors",
            "Failed reconciliations by failing step",
            m.reconcile_errors.clone(),
        );
        r.register(
            "s3_requests",
            "Ledger store (S3, GCS or Azure) requests by operation and outcome (conflict: a compare-and-swap lost; ambiguous: may have been applied)",
            m.s3_requests.clone(),
        );
        r.register(
            "group_ready",
            "1 while the group's Ready condition is True (its ledger is usable), else 0",
            m.group_ready.clone(),
        );
        r.register(
            "lease_last_renewal_age_seconds",
            "While this cluster holds slots of the group: seconds since the send time of the last renewal known to have landed",
            m.lease_renewal_age.clone(),
        );
        r.register(
            "lease_remaining_seconds",
            "While this cluster holds slots of the group: seconds until its Jobs are fenced (suspended) unless a renewal lands first",
            m.lease_remaining.clone(),
        );
        r.register(
            "oldest_waiting_job_seconds",
            "How long the group's longest-waiting Job in this cluster has waited since its creation (no series while none waits)",
            m.oldest_waiting.clone(),
        );
        r.register(
            "leader",
            "1 while this replica is the leader (always, without leader election)",
            m.leader.clone(),
        );
        m
    }

    pub fn observe_s3(&self, op: &str, took: Duration) {
        self.s3_latency
            .get_or_create(&OpLabels { op: op.into() })
            .observe(took.as_secs_f64());
    }

    /// Drops every series of a group that no longer exists, so that a gauge
    /// (and an alert on it) does not keep a deleted group's last value.
    pub fn forget_group(&self, labels: &GroupLabels) {
        for family in [
            &self.waiting,
            &self.in_use,
            &self.admitted_here,
            &self.limit,
            &self.group_ready,
        ] {
            family.remove(labels);
        }
        self.lease_renewal_age.remove(labels);
        self.lease_remaining.remove(labels);
        self.oldest_waiting.remove(labels);
    }

    /// Sets the lease gauges of a group from its client's lease at `now`,
    /// or removes them while it holds no slot.
    pub fn set_lease(
        &self,
        labels: &GroupLabels,
        lease: Option<crate::semaphore::Lease>,
        now: tokio::time::Instant,
    ) {
        match lease {
            Some(l) => {
                self.lease_renewal_age
                    .get_or_create(labels)
                    .set(now.saturating_duration_since(l.renewed).as_secs_f64());
                self.lease_remaining
                    .get_or_create(labels)
                    .set(l.safe_until.saturating_duration_since(now).as_secs_f64());
            }
            None => {
                self.lease_renewal_age.remove(labels);
                self.lease_remaining.remove(labels);
            }
        }
    }

    pub fn count_s3(&self, op: &str, outcome: &str) {
        self.s3_requests
            .get_or_create(&OutcomeLabels {
                op: op.into(),
                outcome: outcome.into(),
            })
            .inc();
    }

    pub fn observe_api(&self, op: &str, took: Duration) {
        self.api_latency
            .get_or_create(&OpLabels { op: op.into() })
            .observe(took.as_secs_f64());
    }
}

/// The registry in Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut out = String::new();
    if prometheus_client::encoding::text::encode(&mut out, registry).is_err() {
        out.clear();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_the_families_with_labels() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let g = GroupLabels {
            namespace: "batch".into(),
            group: "etl".into(),
        };
        m.admissions.get_or_create(&g).inc();
        m.observe_s3("put", Duration::from_millis(3));
        let text = render(&registry);
        assert!(
            text.contains(&format!(
                "jobgate_build_info{{version=\"{}\"}} 1",
                *crate::version::VERSION
            )),
            "{text}"
        );
        assert!(
            text.contains(r#"jobgate_admissions_total{namespace="batch",group="etl"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"jobgate_s3_request_duration_seconds_count{op="put"} 1"#),
            "{text}"
        );
    }

    #[test]
    fn lease_gauges_follow_the_lease_and_a_forgotten_group_leaves_no_series() {
        let mut registry = Registry::default();
        let m = Metrics::new(&mut registry);
        let g = GroupLabels {
            namespace: "batch".into(),
            group: "etl".into(),
        };
        let now = tokio::time::Instant::now();
        let lease = crate::semaphore::Lease {
            renewed: now - Duration::from_secs(4),
            safe_until: now + Duration::from_secs(11),
        };
        m.set_lease(&g, Some(lease), now);
        m.group_ready.get_or_create(&g).set(1);
        let text = render(&registry);
        for line in [
            r#"jobgate_lease_last_renewal_age_seconds{namespace="batch",group="etl"} 4.0"#,
            r#"jobgate_lease_remaining_seconds{namespace="batch",group="etl"} 11.0"#,
            r#"jobgate_group_ready{namespace="batch",group="etl"} 1"#,
        ] {
            assert!(text.contains(line), "{line} in:\n{text}");
        }
        // Holding no slot: no lease to report.
        m.set_lease(&g, None, now);
        assert!(!render(&registry).contains("jobgate_lease_remaining_seconds{"));
        m.forget_group(&g);
        assert!(!render(&registry).contains(r#"group="etl""#));
    }
}
