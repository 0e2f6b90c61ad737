use super::*;

const LEASE: Duration = Duration::from_secs(15);

fn held_by(holder: Option<&str>) -> Record {
    Record {
        holder: holder.map(String::from),
        renew_time: Some(MicroTime(Timestamp::now())),
        transitions: Some(3),
        duration_seconds: Some(15),
    }
}

fn seen(record: Record, since: Instant) -> SeenRecord {
    SeenRecord { record, since }
}

#[test]
fn unheld_lease_is_taken_at_once() {
    let t = Instant::now();
    assert!(may_take(&seen(held_by(None), t), "me", t, LEASE));
    assert!(may_take(&seen(held_by(Some("")), t), "me", t, LEASE));
}

#[test]
fn own_lease_is_taken_back_at_once() {
    let t = Instant::now();
    assert!(may_take(&seen(held_by(Some("me")), t), "me", t, LEASE));
}

#[test]
fn recently_changed_lease_of_another_is_left_alone() {
    let t = Instant::now();
    let o = seen(held_by(Some("other")), t);
    assert!(!may_take(&o, "me", t, LEASE));
    assert!(!may_take(
        &o,
        "me",
        t + LEASE - Duration::from_millis(1),
        LEASE
    ));
}

#[test]
fn lease_unchanged_for_a_whole_lease_on_our_clock_is_taken() {
    let t = Instant::now();
    let o = seen(held_by(Some("other")), t);
    assert!(may_take(&o, "me", t + LEASE, LEASE));
}

#[test]
fn remote_renew_time_far_in_the_past_is_not_trusted() {
    let t = Instant::now();
    let mut r = held_by(Some("other"));
    r.renew_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
    assert!(!may_take(
        &seen(r, t),
        "me",
        t + Duration::from_secs(1),
        LEASE
    ));
}

#[test]
fn a_longer_declared_lease_is_waited_out() {
    let t = Instant::now();
    let mut r = held_by(Some("other"));
    r.duration_seconds = Some(60);
    let o = seen(r, t);
    assert!(!may_take(&o, "me", t + LEASE, LEASE));
    assert!(may_take(&o, "me", t + Duration::from_secs(60), LEASE));
}

#[test]
fn observation_clock_restarts_only_when_the_record_changes() {
    let t = Instant::now();
    let r = held_by(Some("other"));
    let first = SeenRecord::update(None, r.clone(), t);
    let same = SeenRecord::update(Some(first), r.clone(), t + Duration::from_secs(10));
    assert_eq!(same.since, t);
    let mut renewed = r;
    renewed.renew_time = Some(MicroTime(Timestamp::UNIX_EPOCH));
    let later = t + Duration::from_secs(12);
    let changed = SeenRecord::update(Some(same), renewed, later);
    assert_eq!(changed.since, later);
    assert!(!may_take(&changed, "me", t + LEASE, LEASE));
}

fn lease_with(spec: LeaseSpec) -> Lease {
    Lease {
        metadata: ObjectMeta {
            name: Some("l".into()),
            resource_version: Some("42".into()),
            ..ObjectMeta::default()
        },
        spec: Some(spec),
    }
}

#[test]
fn claiming_counts_transitions_only_on_takeover() {
    let cfg = LeaseConfig::new("ns", "l", "me");
    let fresh = claimed(&cfg, None);
    let spec = fresh.spec.clone().unwrap_or_default();
    assert_eq!(spec.holder_identity.as_deref(), Some("me"));
    assert_eq!(spec.lease_transitions, Some(0));
    assert_eq!(spec.lease_duration_seconds, Some(15));
    assert_eq!(fresh.metadata.namespace.as_deref(), Some("ns"));

    let acquired = MicroTime(Timestamp::UNIX_EPOCH);
    let theirs = lease_with(LeaseSpec {
        holder_identity: Some("other".into()),
        acquire_time: Some(acquired.clone()),
        lease_transitions: Some(4),
        ..LeaseSpec::default()
    });
    let taken = claimed(&cfg, Some(&theirs));
    let spec = taken.spec.clone().unwrap_or_default();
    assert_eq!(spec.lease_transitions, Some(5));
    assert_ne!(spec.acquire_time, Some(acquired.clone()));
    assert_eq!(taken.metadata.resource_version.as_deref(), Some("42"));

    let mine = lease_with(LeaseSpec {
        holder_identity: Some("me".into()),
        acquire_time: Some(acquired.clone()),
        lease_transitions: Some(4),
        ..LeaseSpec::default()
    });
    let spec = claimed(&cfg, Some(&mine)).spec.unwrap_or_default();
    assert_eq!(spec.lease_transitions, Some(4));
    assert_eq!(spec.acquire_time, Some(acquired));
}

#[test]
fn lease_seconds_round_up_and_config_is_checked() {
    let mut cfg = LeaseConfig::new("ns", "l", "me");
    assert!(cfg.validate().is_ok());
    cfg.lease_duration = Duration::from_millis(2500);
    assert_eq!(cfg.lease_seconds(), 3);
    cfg.renew_interval = Duration::from_secs(2);
    assert!(cfg.validate().is_err(), "renewing slower than the term");
    cfg.renew_interval = Duration::from_millis(500);
    assert!(cfg.validate().is_ok());
    cfg.identity.clear();
    assert!(cfg.validate().is_err());
}

#[tokio::test]
async fn term_runs_out_on_time_without_a_renewer() {
    let until = Instant::now() + Duration::from_millis(150);
    let (tx, rx) = watch::channel(Some(until));
    let mut term = Term(rx);
    assert!(term.is_current());
    drop(tx);
    term.ended().await;
    assert!(Instant::now() >= until);
    assert!(!term.is_current());
}

#[tokio::test]
async fn term_follows_renewals_and_ends_when_lost() {
    let start = Instant::now();
    let (tx, rx) = watch::channel(Some(start + Duration::from_millis(100)));
    let mut term = Term(rx);
    let renewer = tokio::spawn(async move {
        sleep(Duration::from_millis(50)).await;
        tx.send_replace(Some(Instant::now() + Duration::from_millis(200)));
        sleep(Duration::from_millis(100)).await;
        tx.send_replace(None);
        // Keep the sender alive: `None` alone must end the term.
        sleep(Duration::from_secs(5)).await;
    });
    term.ended().await;
    let waited = start.elapsed();
    assert!(waited >= Duration::from_millis(150), "{waited:?}");
    assert!(waited < Duration::from_secs(2), "{waited:?}");
    assert!(!term.is_current());
    renewer.abort();
}
