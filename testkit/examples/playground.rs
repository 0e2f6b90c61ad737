//! `make playground`: SeaweedFS and two local clusters, "east" and "west",
//! each with a real node (kubelet, containerd), the chart installed from
//! this checkout with an image of this build, and one ConcurrencyGroup
//! shared through one ledger (examples/group.yaml, limit 3). Five Jobs
//! (examples/jobs.yaml) go into each cluster; the playground prints how
//! they move from waiting to running to done, and the group as
//! `kubectl get cg` shows it, then cleans everything up. Ctrl-C cleans up
//! too. Nothing leaves the machine: every server listens on loopback.

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

fn step(what: &str) {
    println!("\n==> {what}");
}

fn must(out: std::process::Output, what: &str) {
    if !out.status.success() {
        panic!("{what} failed:\n{}", chart::text(&out));
    }
}

async fn start_cluster(name: &'static str, host: u8, s3: &SeaweedFs) -> Cluster {
    step(&format!(
        "cluster {name}: control plane and a real node at 127.0.0.{host}"
    ));
    let node = format!("{name}-node");
    let cp = ControlPlane::start_real_at(&[&node], host);
    cp.import_jobgate_image(&jobgate_bin(), JOBGATE_IMAGE);
    step(&format!(
        "cluster {name}: helm install jobgate charts/jobgate"
    ));
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
    ));
    let jobs = repo_dir().join("examples/jobs.yaml").display().to_string();
    for c in clusters {
        for _ in 0..JOBS_PER_CLUSTER {
            must(c.cp.kubectl(&["create", "-f", &jobs]), "kubectl create");
        }
    }
    step(&format!(
        "watching: at most {LIMIT} Jobs with live pods in both clusters together"
    ));
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

#[tokio::main]
async fn main() {
    step("SeaweedFS (S3) on loopback, bucket \"playground\"");
    let s3 = SeaweedFs::start().await.unwrap_or_else(|e| panic!("{e}"));
    s3.create_bucket("playground")
        .await
        .unwrap_or_else(|e| panic!("{e}"));
    let clusters = vec![
        start_cluster("east", 2, &s3).await,
        start_cluster("west", 3, &s3).await,
    ];
    let pods = PodLog::default();
    for c in &clusters {
        pods.watch(c.kube.clone(), c.name, NS);
    }
    let ok = tokio::select! {
        ok = run(&clusters, &pods) => ok,
        _ = tokio::signal::ctrl_c() => {
            println!("\ninterrupted");
            true
        }
    };
    step("cleaning up: clusters, nodes and SeaweedFS stop, their files go");
    drop(clusters);
    drop(s3);
    if !ok {
        std::process::exit(1);
    }
}
