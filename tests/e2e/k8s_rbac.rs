//! The chart's RBAC proven by use: its ServiceAccount, ClusterRole, Roles
//! and bindings (rendered by `helm template`; of the rest of the chart only
//! the webhook's empty Secret and its configuration, which those rules
//! name) applied to a full cluster (kube-controller-manager and kwok run
//! the Jobs), and the controller run as that ServiceAccount, with a token
//! and no admin credentials, the way the chart runs it: every namespace,
//! the default cluster name (the kube-system UID), leader election on a
//! Lease in the release's namespace, the webhook with its own certificate
//! in the Secret and its CA in the configuration, S3 credentials from a
//! group's Secret. Three Jobs created without `suspend` must pass a limit
//! of one without a refused request. The webhook is called at a loopback
//! URL (`webhook.url`), as the controller runs as a process here.

use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use jobgate_testkit::chart::{chart_dir, helm, text};
use jobgate_testkit::k8s::ControlPlane;
use jobgate_testkit::operator::{
    AdmissionLog, Bed, ControllerProcess, GroupSpec, apply_credentials, apply_group_with,
    create_job, eventually, observe,
};
use jobgate_testkit::pods::PodLog;
use jobgate_testkit::testbed::free_port;
use serde::Deserialize;
use serde_json::json;

const NS: &str = "batch";
const RELEASE: &str = "jobgate";
const RELEASE_NS: &str = "jobgate-system";
/// What the chart names the ServiceAccount and the leader Lease for RELEASE.
const SERVICE_ACCOUNT: &str = "jobgate";
const LEASE: &str = "jobgate-controller";
/// And its webhook Secret, Service and configuration.
const WEBHOOK_SECRET: &str = "jobgate-webhook-tls";
const WEBHOOK_SERVICE: &str = "jobgate-webhook";
const WEBHOOK_CONFIGURATION: &str = "jobgate";

const RBAC_KINDS: &[&str] = &[
    "ServiceAccount",
    "ClusterRole",
    "ClusterRoleBinding",
    "Role",
    "RoleBinding",
];

/// The chart rendered with `sets`, as YAML documents.
fn render(cp: &ControlPlane, sets: &[&str]) -> Vec<serde_yaml::Value> {
    let chart = chart_dir().display().to_string();
    let mut args = vec!["template", RELEASE, &chart, "--namespace", RELEASE_NS];
    for set in sets {
        args.extend(["--set", set]);
    }
    let out = helm(cp, &args);
    assert!(out.status.success(), "helm template: {}", text(&out));
    let yaml = String::from_utf8_lossy(&out.stdout).into_owned();
    serde_yaml::Deserializer::from_str(&yaml)
        .map(|doc| serde_yaml::Value::deserialize(doc).unwrap())
        .filter(|doc| !doc.is_null())
        .collect()
}

fn kind(doc: &serde_yaml::Value) -> &str {
    doc["kind"].as_str().unwrap_or_default()
}

/// The rules' verbs, resources and apiGroups that hold a `*`.
fn wildcards(docs: &[serde_yaml::Value]) -> Vec<String> {
    let mut found = Vec::new();
    for doc in docs {
        let name = doc["metadata"]["name"].as_str().unwrap_or_default();
        for rule in doc["rules"].as_sequence().into_iter().flatten() {
            for field in ["verbs", "resources", "apiGroups"] {
                for item in rule[field].as_sequence().into_iter().flatten() {
                    if item.as_str().is_some_and(|s| s.contains('*')) {
                        found.push(format!("{} {name}: {field} {item:?}", kind(doc)));
                    }
                }
            }
        }
    }
    found
}

/// kubectl as whoever `kubeconfig` says.
fn kubectl_as(kubeconfig: &Path, args: &[&str]) -> Output {
    let bin = jobgate_testkit::testbed::binary("kubectl").unwrap_or_else(|e| panic!("{e}"));
    Command::new(bin)
        .arg(format!("--kubeconfig={}", kubeconfig.display()))
        .args(args)
        .output()
        .unwrap()
}

fn ok(out: Output, what: &str) -> String {
    assert!(
        out.status.success(),
        "{what}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The HTTP status of GET `path` on 127.0.0.1:`port`.
fn http_status(port: u16, path: &str) -> Option<u16> {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.write_all(format!("GET {path} HTTP/1.0\r\nHost: x\r\n\r\n").as_bytes())
        .ok()?;
    let mut out = String::new();
    s.read_to_string(&mut out).ok()?;
    out.split_whitespace().nth(1)?.parse().ok()
}

/// The text without terminal colour codes (the controller's log has them).
fn plain(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut chars = text.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            // CSI: ESC [ parameters, ended by a letter.
            for c in chars.by_ref() {
                if c.is_ascii_alphabetic() {
                    break;
                }
            }
        } else {
            out.push(c);
        }
    }
    out
}

/// Log lines that say a request was refused: "forbidden", "Unauthorized",
/// or 403/401 as a number of its own (ports and UIDs may contain the digits).
fn refusals(log: &str) -> Vec<String> {
    let code = |line: &str, code: &str| {
        line.match_indices(code).any(|(i, _)| {
            let before = line[..i].chars().next_back();
            let after = line[i + code.len()..].chars().next();
            !before.is_some_and(|c| c.is_ascii_alphanumeric())
                && !after.is_some_and(|c| c.is_ascii_alphanumeric())
        })
    };
    plain(log)
        .lines()
        .filter(|l| {
            let lower = l.to_lowercase();
            lower.contains("forbidden")
                || lower.contains("unauthorized")
                || code(l, "403")
                || code(l, "401")
        })
        .map(String::from)
        .collect()
}

#[test]
fn refusals_are_found_and_port_numbers_are_not_refusals() {
    let log = "listening on 127.0.0.1:40312\nuid 4403a\nApiError: jobs.batch is forbidden (403)\n\u{1b}[2mHTTP\u{1b}[0m 401\n";
    assert_eq!(
        refusals(log),
        ["ApiError: jobs.batch is forbidden (403)", "HTTP 401"]
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_charts_rbac_is_enough_for_a_full_admission_cycle() {
    let started = Instant::now();
    let bed = Bed::start(NS, true).await;
    let (s3, cp, kube) = (&bed.s3, &bed.cp, &bed.kube);
    eprintln!("full cluster up: {:?}", started.elapsed());

    // No wildcard anywhere, with the defaults or as run here.
    let port = free_port();
    let url = format!("webhook.url=https://127.0.0.1:{port}/mutate-jobs");
    let defaults = render(cp, &[]);
    let ours = render(cp, &[&url]);
    for docs in [&defaults, &ours] {
        let rbac: Vec<_> = docs
            .iter()
            .filter(|d| RBAC_KINDS.contains(&kind(d)))
            .cloned()
            .collect();
        assert!(
            rbac.iter().any(|d| kind(d) == "ClusterRole"),
            "no ClusterRole rendered"
        );
        assert_eq!(wildcards(&rbac), Vec::<String>::new(), "wildcards in RBAC");
    }

    // Only the RBAC objects, and the two objects the webhook's rules name,
    // applied by the admin.
    let rbac: Vec<_> = ours
        .into_iter()
        .filter(|d| {
            RBAC_KINDS.contains(&kind(d))
                || ["Secret", "MutatingWebhookConfiguration"].contains(&kind(d))
        })
        .collect();
    let kinds: Vec<&str> = rbac.iter().map(kind).collect();
    eprintln!("applying {kinds:?}");
    assert_eq!(
        kinds.iter().filter(|k| **k == "Role").count(),
        2,
        "the leader-election and webhook Roles"
    );
    ok(
        cp.kubectl(&["create", "namespace", RELEASE_NS]),
        "namespace",
    );
    let manifest = rbac
        .iter()
        .map(|d| serde_yaml::to_string(d).unwrap())
        .collect::<Vec<_>>()
        .join("---\n");
    let file = cp.dir.path().join("rbac.yaml");
    std::fs::write(&file, &manifest).unwrap();
    ok(
        cp.kubectl(&["apply", "-f", &file.display().to_string()]),
        "applying the chart's RBAC",
    );

    // A kubeconfig with the ServiceAccount's token and nothing else.
    let token = ok(
        cp.kubectl(&[
            "create",
            "token",
            SERVICE_ACCOUNT,
            "-n",
            RELEASE_NS,
            "--duration=1h",
        ]),
        "token",
    );
    let sa_kubeconfig = cp.dir.path().join("kubeconfig-jobgate-sa");
    std::fs::write(
        &sa_kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\nclusters:\n- name: test\n  cluster:\n    server: https://127.0.0.1:{}\n    insecure-skip-tls-verify: true\nusers:\n- name: jobgate\n  user:\n    token: {}\ncontexts:\n- name: jobgate\n  context:\n    cluster: test\n    user: jobgate\ncurrent-context: jobgate\n",
            cp.apiserver_port(),
            token.trim()
        ),
    )
    .unwrap();
    let whoami = ok(
        kubectl_as(
            &sa_kubeconfig,
            &[
                "auth",
                "whoami",
                "-o",
                "jsonpath={.status.userInfo.username}",
            ],
        ),
        "whoami",
    );
    assert_eq!(
        whoami,
        format!("system:serviceaccount:{RELEASE_NS}:{SERVICE_ACCOUNT}")
    );
    // Not an admin: it may read a Secret it is told of, never list them.
    let listed = kubectl_as(&sa_kubeconfig, &["get", "secrets", "-n", NS]);
    assert!(
        !listed.status.success(),
        "the ServiceAccount may list Secrets"
    );

    // Limit 1, three Jobs, the group's credentials in a Secret. The group's
    // lease must outlast twice the leader-election lease (15 s).
    apply_credentials(cp, NS, "s3-creds", s3);
    apply_group_with(
        cp,
        &GroupSpec {
            name: "rbac",
            ns: NS,
            limit: 1,
            bucket: &bed.bucket,
            endpoint: &s3.endpoint,
            key: None,
            secret: Some("s3-creds"),
        },
        json!({"leaseSeconds": 30}),
    );
    let pods = PodLog::default();
    pods.watch(kube.clone(), "one", NS);
    let checker = AdmissionLog::default();
    observe(kube.clone(), "one", NS, checker.clone(), None);

    // As the chart's Deployment runs it (POD_NAMESPACE's defaults given as
    // flags).
    let identity = "jobgate-rbac-0";
    let mut controller = ControllerProcess::start_as(
        cp,
        s3,
        &sa_kubeconfig,
        false,
        &[
            "--leader-elect=true",
            &format!("--leader-election-namespace={RELEASE_NS}"),
            &format!("--leader-election-name={LEASE}"),
            &format!("--identity={identity}"),
            &format!("--webhook-listen=127.0.0.1:{port}"),
            &format!("--webhook-secret={WEBHOOK_SECRET}"),
            &format!("--webhook-service={WEBHOOK_SERVICE}"),
            &format!("--webhook-configuration={WEBHOOK_CONFIGURATION}"),
            "--webhook-host=127.0.0.1",
            &format!("--webhook-namespace={RELEASE_NS}"),
        ],
        "rbac",
    );
    // The webhook serves once its CA is in the configuration and the
    // certificate in the Secret: creating labelled Jobs fails until then
    // (failurePolicy Fail).
    let webhook_up = Instant::now();
    eventually(Duration::from_secs(60), "the webhook serving", || async {
        let ca = cp.kubectl(&[
            "get",
            "mutatingwebhookconfiguration",
            WEBHOOK_CONFIGURATION,
            "-o",
            "jsonpath={.webhooks[0].clientConfig.caBundle}",
        ]);
        (!ca.stdout.is_empty() && http_status(controller.metrics_port, "/readyz") == Some(200))
            .then_some(())
    })
    .await;
    eprintln!("webhook serving after {:?}", webhook_up.elapsed());
    let secret = ok(
        cp.kubectl(&[
            "get",
            "secret",
            WEBHOOK_SECRET,
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.data}",
        ]),
        "webhook Secret",
    );
    assert!(
        secret.contains("tls.crt"),
        "the Secret was not filled: {secret}"
    );
    // Written without `suspend`: the webhook creates them suspended.
    for i in 0..3 {
        let job = create_job(kube, NS, &format!("job-{i:02}"), "rbac", false).await;
        assert_eq!(job.spec.and_then(|s| s.suspend), Some(true), "job-{i:02}");
    }
    let cycle = Instant::now();
    // A refused request fails the test at once, with what was refused.
    let refused = eventually(Duration::from_secs(120), "three Jobs finished", || async {
        let log = controller.log_text();
        let refused = refusals(&log);
        let done = checker.snapshot(|s| s.finished.len()) == 3;
        (done || !refused.is_empty()).then_some(refused)
    })
    .await;
    assert_eq!(refused, Vec::<String>::new(), "requests refused");
    bed.ledger_drains("jobgate/batch/rbac.json").await;
    let cycle = cycle.elapsed();
    // Let the pod watch catch up.
    tokio::time::sleep(Duration::from_secs(1)).await;
    eprintln!(
        "three Jobs through limit 1 in {cycle:?}; {}",
        pods.summary(1)
    );
    let log = controller.log_text();
    assert_eq!(pods.max(), 1, "{}\n{log}", pods.summary(1));
    assert_eq!(pods.time_over(1), Duration::ZERO);
    checker.snapshot(|s| {
        assert!(s.max_running <= 1, "{} Jobs ran at once", s.max_running);
        let order: Vec<&str> = s.order.iter().map(|(_, j)| j.as_str()).collect();
        assert_eq!(order, ["job-00", "job-01", "job-02"], "admission order");
    });

    // Nothing was refused; the controller named the cluster by the
    // kube-system UID and led through the Lease it created.
    assert_eq!(refusals(&log), Vec::<String>::new(), "{log}");
    let uid = ok(
        cp.kubectl(&[
            "get",
            "namespace",
            "kube-system",
            "-o",
            "jsonpath={.metadata.uid}",
        ]),
        "kube-system",
    );
    // (The drained ledger no longer lists the agent; its log line does.)
    let agent = format!("{uid}/{NS}/rbac");
    assert!(log.contains(&agent), "{log}");
    let holder = ok(
        cp.kubectl(&[
            "get",
            "lease",
            LEASE,
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]),
        "leader Lease",
    );
    assert_eq!(holder, identity);
    let ready = ok(
        cp.kubectl(&[
            "get",
            "cg",
            "rbac",
            "-n",
            NS,
            "-o",
            "jsonpath={.status.conditions[?(@.type==\"Ready\")].status}",
        ]),
        "group status",
    );
    assert_eq!(ready, "True", "the status was written");
    // Events on the Jobs, recorded by the controller as that identity.
    for (job, reasons) in [
        ("job-00", &["Admitted", "Released"][..]),
        ("job-02", &["Waiting", "Admitted", "Released"][..]),
    ] {
        let selector = format!("involvedObject.kind=Job,involvedObject.name={job}");
        let events = eventually(Duration::from_secs(20), "the Jobs' events", || async {
            let out = cp.kubectl(&[
                "get",
                "events",
                "-n",
                NS,
                "--field-selector",
                &selector,
                "-o",
                "jsonpath={.items[*].reason}",
            ]);
            let found = String::from_utf8_lossy(&out.stdout).into_owned();
            reasons
                .iter()
                .all(|r| found.split_whitespace().any(|f| f == *r))
                .then_some(found)
        })
        .await;
        eprintln!("{job} events: {events}");
    }
    // SIGTERM: the leader hands the Lease back (an update) and exits cleanly.
    assert_eq!(controller.terminate(), Some(0), "{}", controller.log_text());
    let log = controller.log_text();
    assert_eq!(refusals(&log), Vec::<String>::new(), "{log}");
    let holder = ok(
        cp.kubectl(&[
            "get",
            "lease",
            LEASE,
            "-n",
            RELEASE_NS,
            "-o",
            "jsonpath={.spec.holderIdentity}",
        ]),
        "leader Lease",
    );
    assert_eq!(holder, "", "the Lease was not handed back");
    eprintln!("whole test: {:?}", started.elapsed());
}
