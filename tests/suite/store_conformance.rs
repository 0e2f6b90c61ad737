//! The same conformance suite against every store.

use std::sync::Arc;

use jobgate::store::{FileStore, MemoryStore};
use jobgate_testkit::stores::{self, Azurite, FakeGcs, Moto};

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn memory_store_conforms() {
    jobgate_testkit::conformance::run_all(Arc::new(MemoryStore::new())).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn file_store_conforms() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("conformance")).unwrap();
    jobgate_testkit::conformance::run_all(Arc::new(FileStore::new(dir.path()))).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_conforms_on_seaweedfs() {
    let server = jobgate_testkit::shared::seaweed();
    let bucket = jobgate_testkit::bucket(server).await;
    jobgate_testkit::conformance::run_all(server.dyn_store(&bucket).await).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn gcs_store_conforms_on_fake_gcs_server() {
    let server = stores::start(FakeGcs::start).await;
    let bucket = stores::name();
    server.create_bucket(&bucket).await.unwrap();
    jobgate_testkit::conformance::run_all(server.dyn_store(&bucket)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn azure_store_conforms_on_azurite() {
    let server = stores::start(Azurite::start).await;
    let container = stores::name();
    server.create_container(&container).await.unwrap();
    jobgate_testkit::conformance::run_all(server.dyn_store(&container)).await;
}

/// moto answers as AWS does (404 for If-Match on a missing key, 412 on a
/// mismatch), so the S3 backend's reading of AWS's answers is checked here.
/// Only one writer at a time: moto checks a precondition and then writes
/// without a lock (moto/s3/responses.py, `put_object`), so it is not held
/// to the races, which it may lose (docs/stores.md).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_store_reads_aws_answers_on_moto() {
    let server = stores::start(Moto::start).await;
    let bucket = stores::name();
    server.create_bucket(&bucket).await.unwrap();
    jobgate_testkit::conformance::run_sequential(&server.dyn_store(&bucket).await).await;
}

/// The suite fails a store that ignores the preconditions: fake-gcs-server
/// behind a proxy that drops them, as GCS's S3-compatible API does.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_suite_fails_a_store_that_drops_the_preconditions() {
    let server = stores::start(FakeGcs::start).await;
    let bucket = stores::name();
    server.create_bucket(&bucket).await.unwrap();
    let proxy = jobgate_testkit::stripper::Stripper::start(&server.0.endpoint).await;
    let store: jobgate::store::DynStore = Arc::new(
        jobgate::store::GcsStore::connect(
            &bucket,
            &jobgate::store::GcsOptions {
                endpoint: Some(proxy.endpoint.clone()),
                ..Default::default()
            },
        )
        .unwrap(),
    );
    let outcome = tokio::spawn(jobgate_testkit::conformance::run_all(store)).await;
    let panic = outcome.expect_err("the suite passed a store without preconditions");
    let message = panic.into_panic();
    let text = message
        .downcast_ref::<String>()
        .cloned()
        .or_else(|| message.downcast_ref::<&str>().map(|s| s.to_string()))
        .unwrap_or_default();
    assert!(text.contains("second create"), "{text}");
}
