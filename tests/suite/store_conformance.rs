//! The same conformance suite against every store.

use std::sync::Arc;

use jobgate::store::{FileStore, MemoryStore};
use jobgate_testkit::stores::{self, Azurite, FakeGcs};

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
