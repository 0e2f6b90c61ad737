use super::*;

#[test]
fn counts_alone_wait_their_turn_and_anything_else_goes_at_once() {
    let before = build(None, &healthy(), "2026-01-01T00:00:00Z");
    let mut busier = before.clone();
    busier.in_use = Some(3);
    busier.waiting_here = Some(3);
    let soon = Some(Duration::from_millis(300));
    assert_eq!(
        write_after(Some(&before), &busier, soon),
        Some(Duration::from_millis(700))
    );
    // Long enough ago, never written by this process, or nothing known.
    assert_eq!(
        write_after(Some(&before), &busier, Some(COUNTS_EVERY)),
        None
    );
    assert_eq!(write_after(Some(&before), &busier, None), None);
    assert_eq!(write_after(None, &busier, soon), None);
    // A condition, the limit or the generation never waits.
    let mut failing = busier.clone();
    failing.conditions[0].status = "False".into();
    assert_eq!(write_after(Some(&before), &failing, soon), None);
    let mut limit = busier.clone();
    limit.limit = Some(9);
    assert_eq!(write_after(Some(&before), &limit, soon), None);
    let mut generation = busier;
    generation.observed_generation = Some(3);
    assert_eq!(write_after(Some(&before), &generation, soon), None);
}

fn healthy() -> Observed {
    Observed {
        generation: Some(2),
        ledger_key: "jobgate/ns/g.json".into(),
        spec_limit: 3,
        ledger_limit: Some(3),
        in_use: Some(2),
        admitted_here: Some(1),
        waiting_here: Some(4),
        problem: None,
        too_slow_to_stop: None,
        held_too_slow: None,
        max_grace_seconds: 30,
        ..Default::default()
    }
}

#[test]
fn jobs_that_cannot_stop_in_time_are_named_in_a_condition() {
    let s = build(None, &healthy(), "t0");
    assert_eq!(cond(&s, JOBS_FIT).status, "True");
    let mut obs = healthy();
    obs.too_slow_to_stop = Some((2, 600));
    let s = build(Some(&s), &obs, "t1");
    let c = cond(&s, JOBS_FIT);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "GracePeriodTooLong")
    );
    assert!(c.message.contains("up to 600") && c.message.contains("maxGracePeriodSeconds 30"));
    let mut held = healthy();
    held.held_too_slow = Some((1, 45));
    let s = build(Some(&s), &held, "t2");
    let c = cond(&s, JOBS_FIT);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "RunningJobsTooSlowToStop")
    );
    assert!(c.message.contains("by up to 15 s"), "{}", c.message);
    assert_eq!(c.last_transition_time, "t1");
}

fn cond<'a>(s: &'a ConcurrencyGroupStatus, t: &str) -> &'a GroupCondition {
    s.conditions.iter().find(|c| c.type_ == t).unwrap()
}

#[test]
fn the_read_time_is_renewed_with_any_change_or_every_thirty_seconds() {
    let read = |at: &str| Observed {
        ledger_read_at: Some(at.to_string()),
        ..healthy()
    };
    let t0 = "2026-01-01T00:00:00Z";
    let s = build(None, &read(t0), "2026-01-01T00:00:01Z");
    assert_eq!(s.ledger_read_time.as_deref(), Some(t0));
    // Nothing else changed: the time stays, so the status is not
    // written again on every pass.
    let same = build(Some(&s), &read("2026-01-01T00:00:29Z"), "t");
    assert_eq!(same, s);
    let due = build(Some(&s), &read("2026-01-01T00:00:30Z"), "t");
    assert_eq!(
        due.ledger_read_time.as_deref(),
        Some("2026-01-01T00:00:30Z")
    );
    // Any change carries the time of the read that saw it.
    let freed = Observed {
        in_use: Some(0),
        ..read("2026-01-01T00:00:05Z")
    };
    let s2 = build(Some(&s), &freed, "t");
    assert_eq!(s2.ledger_read_time.as_deref(), Some("2026-01-01T00:00:05Z"));
    // A pass that could not read the ledger keeps the last read's time.
    let unread = Observed {
        in_use: None,
        ledger_limit: None,
        problem: Some(Problem::new("LedgerUnreachable", "timed out")),
        ..healthy()
    };
    let s3 = build(Some(&s), &unread, "2026-01-01T00:01:00Z");
    assert_eq!(s3.ledger_read_time.as_deref(), Some(t0));
}

#[test]
fn healthy_group_is_ready_and_agrees() {
    let s = build(None, &healthy(), "t1");
    assert_eq!(cond(&s, READY).status, "True");
    assert_eq!(cond(&s, LIMIT_AGREED).status, "True");
    assert_eq!(
        (s.limit, s.in_use, s.waiting_here),
        (Some(3), Some(2), Some(4))
    );
    assert_eq!(s.observed_generation, Some(2));
}

#[test]
fn transition_time_moves_only_when_the_status_changes() {
    let first = build(None, &healthy(), "t1");
    let same = build(Some(&first), &healthy(), "t2");
    assert_eq!(cond(&same, READY).last_transition_time, "t1");
    let mut broken = healthy();
    broken.problem = Some(Problem::new("LedgerUnreachable", "timeout"));
    let down = build(Some(&same), &broken, "t3");
    assert_eq!(cond(&down, READY).status, "False");
    assert_eq!(cond(&down, READY).reason, "LedgerUnreachable");
    assert_eq!(cond(&down, READY).last_transition_time, "t3");
}

#[test]
fn a_disagreeing_limit_is_reported_and_the_ledger_wins() {
    let mut obs = healthy();
    obs.spec_limit = 5;
    let s = build(None, &obs, "t1");
    let c = cond(&s, LIMIT_AGREED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("False", "LimitMismatch")
    );
    assert_eq!(s.limit, Some(3));
    assert!(
        c.message
            .contains("set by the cluster that created the ledger"),
        "{}",
        c.message
    );
    obs.limit_source = Some("by west/ns/g from generation 4 at t (was 2)".into());
    let c = build(None, &obs, "t2").conditions;
    let c = c.iter().find(|c| c.type_ == LIMIT_AGREED).unwrap();
    assert!(
        c.message.contains(
            "spec.limit is 5 but the shared ledger's limit is 3, set by west/ns/g from generation 4"
        ),
        "{}",
        c.message
    );
}

#[test]
fn a_suspended_or_deleting_group_says_it_admits_nothing_new() {
    let s = build(None, &healthy(), "t1");
    assert_eq!(cond(&s, SUSPENDED).status, "False");
    let mut obs = healthy();
    obs.suspended = true;
    let s = build(Some(&s), &obs, "t2");
    let c = cond(&s, SUSPENDED);
    assert_eq!(
        (c.status.as_str(), c.reason.as_str()),
        ("True", "SuspendedBySpec")
    );
    obs.deleting = Some(2);
    let s = build(Some(&s), &obs, "t3");
    let c = cond(&s, SUSPENDED);
    assert_eq!((c.status.as_str(), c.reason.as_str()), ("True", "Deleting"));
    assert!(c.message.contains("2 slot(s)"), "{}", c.message);
    assert_eq!(c.last_transition_time, "t2", "still suspended");
}

#[test]
fn unreadable_ledger_keeps_the_last_counts() {
    let first = build(None, &healthy(), "t1");
    let obs = Observed {
        problem: Some(Problem::new("CredentialsRejected", "403")),
        ..Observed {
            generation: Some(2),
            ledger_key: "k".into(),
            spec_limit: 3,
            ..Default::default()
        }
    };
    let s = build(Some(&first), &obs, "t2");
    assert_eq!(s.in_use, Some(2));
    assert_eq!(cond(&s, LIMIT_AGREED).status, "True");
    assert_eq!(cond(&s, READY).reason, "CredentialsRejected");
}

#[test]
fn ledger_errors_map_to_actionable_reasons() {
    let denied = CoreError::Store(StoreError::AccessDenied("403".into()));
    assert_eq!(Problem::from_ledger(&denied).reason, "CredentialsRejected");
    let nobucket = CoreError::Store(StoreError::NoSuchBucket("b".into()));
    assert_eq!(Problem::from_ledger(&nobucket).reason, "BucketNotFound");
    let cw = CoreError::ConditionalWritesUnsupported("x".into());
    assert_eq!(
        Problem::from_ledger(&cw).reason,
        "ConditionalWritesUnsupported"
    );
}

#[test]
fn condition_messages_are_the_stores_sentence() {
    // What the S3 store says for the two commonest set-up mistakes: the
    // condition and the Event carry it as is, no prefix, no SDK dump.
    let no_credentials = "no AWS credentials found (set AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, AWS_PROFILE, or run with an instance or pod identity)";
    let p = Problem::from_ledger(&CoreError::Store(StoreError::AccessDenied(
        no_credentials.into(),
    )));
    assert_eq!(
        (p.reason, p.message.as_str()),
        ("CredentialsRejected", no_credentials)
    );
    let refused = "cannot reach http://127.0.0.1:1 (connection refused)";
    let p = Problem::from_ledger(&CoreError::Store(StoreError::Unavailable(refused.into())));
    assert_eq!(
        (p.reason, p.message.as_str()),
        ("LedgerUnreachable", refused)
    );
    let p = Problem::from_ledger(&CoreError::Exhausted {
        attempts: 5,
        last: refused.into(),
    });
    assert_eq!(p.reason, "LedgerUnreachable");
    assert_eq!(p.message, format!("gave up after 5 attempt(s): {refused}"));
}
