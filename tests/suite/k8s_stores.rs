//! A ConcurrencyGroup whose ledger is in Google Cloud Storage or Azure Blob
//! Storage (on their emulators, fake-gcs-server and Azurite) admits Jobs
//! under its limit on the binary's held cluster (each pod runs 2 s, so
//! admitted Jobs overlap), counted on pods, and frees every slot; the
//! ledger is read back from the emulator itself.

use std::time::Duration;

use serde_json::json;

use jobgate::store::DynStore;
use jobgate_testkit::operator::{
    Bed, ControllerProcess, GroupSpec, apply_group_with, create_held_job, drained, eventually,
    succeeded_jobs,
};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::stores::{self, AZURITE_ACCOUNT, Azurite, FakeGcs};

const LIMIT: usize = 3;
const JOBS: usize = 8;

fn job_names() -> Vec<String> {
    (0..JOBS).map(|i| format!("job-{i:02}")).collect()
}

/// Runs `JOBS` Jobs through a group of limit `LIMIT` whose spec.ledger is
/// `ledger`, with a controller given `env`; `store` reads the same ledger.
async fn admits_under_the_limit(
    prefix: &str,
    ledger: serde_json::Value,
    store: DynStore,
    env: &[(&str, &str)],
) {
    let bed = Bed::shared_held(prefix).await;
    let ns = bed.ns.as_str();
    let (cp, kube) = (&bed.cp, &bed.kube);
    apply_group_with(
        cp,
        &GroupSpec {
            name: "etl",
            ns,
            limit: LIMIT as u32,
            bucket: &bed.bucket,
            endpoint: &bed.s3.endpoint,
            key: None,
            secret: None,
        },
        json!({ "ledger": ledger }),
    );
    let pods = PodLog::default();
    pods.watch(kube.clone(), prefix, ns);
    for name in job_names() {
        create_held_job(kube, ns, &name, "etl", 0, Some(Duration::from_secs(2))).await;
    }
    let controller = ControllerProcess::start_via(
        cp,
        &bed.s3,
        &cp.kubeconfig,
        (prefix, ns),
        &["--leader-elect=false"],
        "",
        env,
    );
    let key = bed.key("etl");
    eventually(Duration::from_secs(120), "every Job complete", || async {
        (succeeded_jobs(cp, ns) == JOBS).then_some(())
    })
    .await;
    eventually(Duration::from_secs(30), "an empty ledger", || {
        drained(&store, &key)
    })
    .await;
    assert!(
        pods.max() <= LIMIT,
        "{} pods ran at once over a limit of {LIMIT}: {}",
        pods.max(),
        pods.summary(LIMIT)
    );
    assert!(
        pods.max() >= 2,
        "the Jobs never ran side by side ({}); {}",
        pods.max(),
        controller.log_text()
    );
    let metrics = controller.metrics();
    assert!(
        metrics.contains(&format!(
            r#"jobgate_admissions_total{{namespace="{ns}",group="etl"}} {JOBS}"#
        )),
        "{metrics}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_gcs_admits_jobs_under_its_limit() {
    let server = stores::start(FakeGcs::start).await;
    let bucket = format!("jg_{:08x}", rand::random::<u32>());
    server.create_bucket(&bucket).await.unwrap();
    let ledger = json!({"store": "GCS", "bucket": bucket, "endpoint": server.0.endpoint});
    admits_under_the_limit("gcs", ledger, server.dyn_store(&bucket), &[]).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_group_on_azure_admits_jobs_under_its_limit() {
    let server = stores::start(Azurite::start).await;
    let container = stores::name();
    server.create_container(&container).await.unwrap();
    let ledger = json!({
        "store": "Azure",
        "account": AZURITE_ACCOUNT,
        "bucket": container,
        "endpoint": server.0.endpoint,
    });
    let env = server.env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    admits_under_the_limit("azure", ledger, server.dyn_store(&container), &env).await;
}
