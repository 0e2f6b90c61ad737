//! A pass's IO, call by call: whole passes against the fake API server and
//! the ledger in memory (`fixtures`), on tokio's paused clock, each
//! asserting the exact requests and ledger writes in the order they were
//! made, and the preconditions they carry.

use super::fixtures::*;
use super::*;
use crate::store::DynStore;

/// Takes a slot for the Job with `uid` here, then lets S3 refuse writes
/// for 30 s, past the group's 25 s fence period: renewals fail and the
/// slot is lost. S3 is back before the pass; a renewal landing again does
/// not make a lost slot safe (its Job must stop first).
async fn lose_the_slot(h: &Harness, group: &ConcurrencyGroup, uid: &str) {
    let permit = h.hold(group, uid).await;
    h.store.refuse_writes(true);
    tokio::time::sleep(Duration::from_secs(30)).await;
    assert!(permit.is_lost(), "renewals failed past the fence period");
    h.store.refuse_writes(false);
    // Long enough for the client's retries (backing off up to 2 s) to
    // land a renewal, short of the next one: the pass meets a quiet client.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(permit.is_lost());
    h.forget_log();
}

/// Scenario 1: a pass's first step suspends a running Job whose slot was
/// lost, from this process's own permits and before any ledger read, with
/// the resourceVersion it listed (a Job changed since is not suspended on
/// an older view).
#[tokio::test(start_paused = true)]
async fn a_lost_permit_leads_to_a_suspend_patch_with_the_listed_resource_version() {
    let group = group();
    let h = Harness::new(&group, &[admitted_job("etl", "41", false)], |_| {});
    lose_the_slot(&h, &group, "uid-etl").await;

    let action = reconcile(Arc::new(group), h.ctx.clone()).await;

    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        h.log(),
        [
            // Listed now: the cache may be behind this process's patches.
            list_jobs_call(),
            patch_job_call("etl"),
            // A lost slot is decided on a LIST made after the ledger read.
            list_jobs_call(),
            // Suspended now, but its pod may still run: the slot is kept,
            // so nothing is written to the ledger.
            list_pods_call(&["uid-etl"]),
            patch_status_call(),
        ]
    );
    let patch = h.body_of(&patch_job_call("etl"));
    assert_eq!(patch["spec"]["suspend"], json!(true));
    assert_eq!(patch["metadata"]["resourceVersion"], json!("41"));
    assert_eq!(patch["metadata"]["uid"], json!("uid-etl"));
    assert_eq!(
        patch["metadata"]["annotations"],
        json!({ADMITTED_AT_ANNOTATION: null, TOKEN_ANNOTATION: null})
    );
    h.settle().await;
    assert!(
        h.event_reasons().iter().any(|r| r == "LeaseLost"),
        "{:?}",
        h.event_reasons()
    );
}

/// Scenario 1 with fences only from a decision after the ledger read
/// (`--unsafe-fence-only-with-ledger`): the pipeline's fence step suspends
/// the Job with the resourceVersion of the LIST its lost slot called for,
/// not the older one in the watch's cache (which would have met a 409, a
/// GET and a second PATCH).
#[tokio::test(start_paused = true)]
async fn a_lost_permit_decided_on_the_ledger_is_fenced_with_the_listed_resource_version() {
    let group = group();
    let mut h = Harness::new(&group, &[admitted_job("etl", "41", false)], |ctx| {
        ctx.fence_without_ledger = false;
    });
    // The watch has not delivered the Job's last status update yet.
    h.cache_sees(&admitted_job("etl", "40", false));
    lose_the_slot(&h, &group, "uid-etl").await;

    let action = reconcile(Arc::new(group), h.ctx.clone()).await;

    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        h.log(),
        [list_jobs_call(), patch_job_call("etl"), patch_status_call()]
    );
    let patch = h.body_of(&patch_job_call("etl"));
    assert_eq!(patch["spec"]["suspend"], json!(true));
    assert_eq!(patch["metadata"]["resourceVersion"], json!("41"));
}

/// Scenario 2: a slot whose Job looks suspended by a user in the cache is
/// given up only on a LIST made after the ledger read (the cache may lag
/// behind this process's own unsuspend): the LIST comes before the ledger
/// write that frees the slot.
#[tokio::test(start_paused = true)]
async fn an_unsure_release_lists_the_jobs_before_it_writes_the_ledger() {
    let group = group();
    let h = Harness::new(&group, &[admitted_job("etl", "50", true)], |_| {});
    h.hold(&group, "uid-etl").await;
    h.forget_log();

    let action = reconcile(Arc::new(group), h.ctx.clone()).await;

    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        h.log(),
        [
            // Its slot frees only once its pods are gone.
            list_pods_call(&["uid-etl"]),
            list_jobs_call(),
            list_pods_call(&["uid-etl"]),
            ledger_write(),
            // No longer admitted: resumed, it waits for a slot again.
            patch_job_call("etl"),
            patch_status_call(),
        ]
    );
    assert_eq!(
        h.body_of(&patch_job_call("etl"))["metadata"]["annotations"],
        json!({ADMITTED_AT_ANNOTATION: null, TOKEN_ANNOTATION: null})
    );
    let ledger = crate::semaphore::read_ledger(&(h.store.clone() as DynStore), LEDGER_KEY).await;
    let (ledger, _) = ledger.unwrap().unwrap();
    assert!(ledger.holders.is_empty(), "{ledger:?}");
}

/// Scenario 2, the other way: a held slot whose Job the cache does not
/// show (its watch is behind) would be freed as deleted; the LIST shows
/// the Job running, and nothing is written.
#[tokio::test(start_paused = true)]
async fn a_held_slot_whose_job_the_cache_misses_is_kept_when_the_list_shows_it() {
    let group = group();
    let etl = admitted_job("etl", "60", false);
    let mut h = Harness::new(&group, &[], |_| {});
    lock(&h.objects).put(job_path("etl"), &etl);
    h.hold(&group, "uid-etl").await;
    h.forget_log();

    let action = reconcile(Arc::new(group), h.ctx.clone()).await;

    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        h.log(),
        [
            list_pods_call(&["uid-etl"]),
            list_jobs_call(),
            patch_status_call(),
        ]
    );
    // The watch catches up; the slot is still held.
    h.cache_sees(&etl);
    let ledger = crate::semaphore::read_ledger(&(h.store.clone() as DynStore), LEDGER_KEY).await;
    let (ledger, _) = ledger.unwrap().unwrap();
    assert!(ledger.holders.contains_key("uid-etl"), "{ledger:?}");
}

/// Scenario 3: a new group's first pass puts the finalizer on (guarded by
/// the resourceVersion it saw) before it opens the ledger, takes a slot
/// or writes the status: a slot taken without it could outlive a deleted
/// group, never given back.
#[tokio::test(start_paused = true)]
async fn a_new_groups_finalizer_comes_before_the_ledger_and_the_status() {
    let group = new_group();
    let h = Harness::new(&group, &[waiting_job("etl", "70")], |_| {});

    let action = reconcile(Arc::new(group), h.ctx.clone()).await;

    assert!(action.is_ok(), "{action:?}");
    assert_eq!(
        h.log(),
        [
            patch_group_call(),
            probe_write(),
            // Created with the group's limit and the Job's slot in one write.
            ledger_write(),
            patch_job_call("etl"),
            patch_status_call(),
        ]
    );
    assert_eq!(
        h.body_of(&patch_group_call()),
        json!({"metadata": {"finalizers": [FINALIZER], "resourceVersion": "1"}})
    );
    assert_eq!(
        h.body_of(&patch_job_call("etl"))["spec"]["suspend"],
        json!(false)
    );
    let status = &h.body_of(&patch_status_call())["status"];
    assert_eq!(
        (&status["limit"], &status["inUse"], &status["admittedHere"]),
        (&json!(2), &json!(1), &json!(1))
    );
    let stored = lock(&h.objects).get(&group_path()).cloned().unwrap();
    assert_eq!(stored["metadata"]["finalizers"], json!([FINALIZER]));
}
