//! `make playground`: SeaweedFS and two local clusters, "east" and "west",
//! each with a real node (kubelet, containerd), the chart installed from
//! this checkout with an image of this build, and one ConcurrencyGroup
//! shared through one ledger (examples/group.yaml, limit 3). Five Jobs
//! (examples/jobs.yaml) go into each cluster; the playground prints how
//! they move from waiting to running to done, and the group as
//! `kubectl get cg` shows it, then cleans everything up. Ctrl-C cleans up
//! too, also during start-up. Nothing leaves the machine: every server
//! listens on loopback, the nodes at 127.0.0.20 and 127.0.0.21, apart from
//! the tests' 127.0.0.2 and 127.0.0.3.

use std::time::{Duration, Instant};

use k8s_openapi::api::batch::v1::Job;
use kube::Client;
use kube::api::{Api, ListParams};

use jobgate_testkit::chart::{self, Install};
use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::node::JOBGATE_IMAGE;
use jobgate_testkit::operator::client;
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::{SeaweedFs, jobgate_bin, repo_dir};

const NS: &str = "batch";
const LIMIT: usize = 3;
const JOBS_PER_CLUSTER: usize = 5;

struct Cluster {
    name: &'static str,
    cp: ControlPlane,
    kube: Client,
}

/// Prints the next step and lets the `select!` in `main` look at Ctrl-C:
/// the start-up calls (control plane, node, image import, helm) block the
/// thread, so a Ctrl-C during one is noticed only once it has returned.
async fn step(what: &str) {
    println!("\n==> {what}");
    tokio::task::yield_now().await;
}

fn must(out: std::process::Output, what: &str) {
    if !out.status.success() {
        panic!("{what} failed:\n{}", chart::text(&out));
    }
}

async fn start_cluster(name: &'static str, host: u8, s3: &SeaweedFs) -> Cluster {
    step(&format!(
        "cluster {name}: control plane and a real node at 127.0.0.{host}"
    ))
    .await;
    let node = format!("{name}-node");
    let cp = ControlPlane::start_real_at(&[&node], host);
    cp.import_jobgate_image(&jobgate_bin(), JOBGATE_IMAGE);
    step(&format!(
        "cluster {name}: helm install jobgate charts/jobgate"
    ))
    .await;
    let (out, _, _) = chart::install(
        &cp,
        &Install {
            release: "jobgate",
            namespace: "jobgate",
            cluster_name: name,
            replicas: 1,
            image: JOBGATE_IMAGE,
            s3,
            webhook_node: &node,
        },
    );
    must(out, "helm install");
    let kube = client(&cp).await;
    must(
        cp.kubectl(&["create", "namespace", NS]),
        "kubectl create namespace",
    );
    cp.wait_default_service_account(NS);
    let examples = repo_dir().join("examples");
    must(
        cp.kubectl(&[
            "apply",
            "-f",
            &examples.join("group.yaml").display().to_string(),
        ]),
        "kubectl apply -f examples/group.yaml",
    );
    Cluster { name, cp, kube }
}

/// (waiting, running, done) Jobs in `ns`.
async fn counts(kube: &Client) -> (usize, usize, usize) {
    let jobs: Api<Job> = Api::namespaced(kube.clone(), NS);
    let Ok(list) = jobs.list(&ListParams::default()).await else {
        return (0, 0, 0);
    };
    let mut c = (0, 0, 0);
    for j in &list.items {
        let status = j.status.clone().unwrap_or_default();
        if status.succeeded.unwrap_or(0) > 0 || status.failed.unwrap_or(0) > 0 {
            c.2 += 1;
        } else if j.spec.as_ref().and_then(|s| s.suspend).unwrap_or(false) {
            c.0 += 1;
        } else {
            c.1 += 1;
        }
    }
    c
}

async fn run(clusters: &[Cluster], pods: &PodLog) -> bool {
    step(&format!(
        "{JOBS_PER_CLUSTER} Jobs into each cluster: kubectl create -f examples/jobs.yaml"
    ))
    .await;
    let jobs = repo_dir().join("examples/jobs.yaml").display().to_string();
    for c in clusters {
        for _ in 0..JOBS_PER_CLUSTER {
            must(c.cp.kubectl(&["create", "-f", &jobs]), "kubectl create");
        }
    }
    step(&format!(
        "watching: at most {LIMIT} Jobs with live pods in both clusters together"
    ))
    .await;
    let start = Instant::now();
    let total = JOBS_PER_CLUSTER * clusters.len();
    let mut last_cg = Instant::now() - Duration::from_secs(60);
    loop {
        let mut line = format!("{:>4}s ", start.elapsed().as_secs());
        let mut done = 0;
        for c in clusters {
            let (w, r, d) = counts(&c.kube).await;
            done += d;
            line.push_str(&format!(
                " | {}: {w} waiting, {r} running, {d} done",
                c.name
            ));
        }
        println!("{line} | pods running: {}/{LIMIT}", pods.running());
        if last_cg.elapsed() >= Duration::from_secs(10) || done == total {
            last_cg = Instant::now();
            for c in clusters {
                let out = c.cp.kubectl(&["get", "cg", "-n", NS]);
                println!("  kubectl get cg -n {NS}   ({})", c.name);
                for l in String::from_utf8_lossy(&out.stdout).lines() {
                    println!("    {l}");
                }
            }
        }
        if done == total {
            break;
        }
        if start.elapsed() > Duration::from_secs(300) {
            println!("not done after 5 minutes; the controllers said:");
            for c in clusters {
                let out =
                    c.cp.kubectl(&["logs", "-n", "jobgate", "deploy/jobgate", "--tail=20"]);
                println!("{}", chart::text(&out));
            }
            return false;
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    println!(
        "\nall {total} Jobs done in {}s; peak {} Jobs with live pods at limit {LIMIT}",
        start.elapsed().as_secs(),
        pods.max()
    );
    pods.max() <= LIMIT
}

/// Starts everything and runs the Jobs. What has started is kept in `s3`
/// and `clusters`, owned by `main`, so that `main` stops it whether this
/// ends or is interrupted; a cluster still starting lives in this future
/// and stops when `main` drops it.
async fn start_and_run(s3: &mut Option<SeaweedFs>, clusters: &mut Vec<Cluster>) -> bool {
    step("SeaweedFS (S3) on loopback, bucket \"playground\"").await;
    let s3 = s3.insert(SeaweedFs::start().await.unwrap_or_else(|e| panic!("{e}")));
    s3.create_bucket("playground")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    // Not the tests' 127.0.0.2 and 127.0.0.3: a playground beside a test
    // run would take the same node addresses and ports.
    for (name, host) in [("east", 20), ("west", 21)] {
        let cluster = start_cluster(name, host, s3).await;
        clusters.push(cluster);
    }
    let pods = PodLog::default();
    for c in clusters.iter() {
        pods.watch(c.kube.clone(), c.name, NS);
    }
    run(clusters, &pods).await
}

#[tokio::main]
async fn main() {
    // Polled first (biased) in the select! below, so SIGINT is caught from
    // before the first server starts: without it, Ctrl-C during start-up
    // would kill the process and leave servers, nodes and their files
    // behind.
    let interrupted = tokio::signal::ctrl_c();
    tokio::pin!(interrupted);
    println!(
        "Ctrl-C stops and cleans up at any time; during start-up it takes \
         effect once the step in progress returns (start-up steps block)."
    );
    let mut s3 = None;
    let mut clusters = Vec::new();
    let ok = tokio::select! {
        biased;
        _ = &mut interrupted => {
            println!("\ninterrupted");
            true
        }
        ok = start_and_run(&mut s3, &mut clusters) => ok,
    };
    step("cleaning up: clusters, nodes and SeaweedFS stop, their files go").await;
    drop(clusters);
    drop(s3);
    if !ok {
        std::process::exit(1);
    }
}
