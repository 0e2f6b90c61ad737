//! The Helm chart in charts/jobgate: it lints, its CRD is the
//! repository's, it turns values into the controller's flags, and a real
//! kube-apiserver accepts every object it renders.

use jobgate_testkit::k8s;
use serde::Deserialize;
use serde_yaml::Value;
use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/jobgate");
const REPO_CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
/// The Kubernetes the test bed's kube-apiserver is (scripts/testbed.sh).
const KUBE_VERSION: &str = "1.35.0";
const NAMESPACE: &str = "jobgate";
/// The values the brief's second example sets: a named cluster, one
/// namespace, no leader election.
const CUSTOM: &str = "clusterName=east,watchNamespace=batch,leaderElection.enabled=false";

fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the test bed's helm with its config, cache and data in a fresh
/// directory, so nothing from the machine's own helm setup leaks in.
fn helm(args: &[&str]) -> Output {
    let bin = jobgate_testkit::testbed::binary("helm").unwrap_or_else(|e| panic!("{e}"));
    let home = tempfile::tempdir().unwrap();
    Command::new(&bin)
        .args(args)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

/// `helm template` of the chart as release "jobgate" in namespace "jobgate".
fn render(extra: &[&str]) -> String {
    let mut args = vec![
        "template",
        "jobgate",
        CHART,
        "--namespace",
        NAMESPACE,
        "--kube-version",
        KUBE_VERSION,
    ];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(out.status.success(), "helm {args:?}: {}", text(&out));
    String::from_utf8(out.stdout).unwrap()
}

fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{e}:\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| d["kind"].as_str()).collect()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} expected, kinds: {:?}",
        kinds(docs)
    );
    found[0]
}

fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s:?}")))
        .collect()
}

fn container(docs: &[Value]) -> &Value {
    &only(docs, "Deployment")["spec"]["template"]["spec"]["containers"][0]
}

fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_sequence()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no env {name}: {:?}", container["env"]))
}

/// The ClusterRole rule for `resource` in `group`.
fn rule<'a>(docs: &'a [Value], group: &str, resource: &str) -> Option<&'a Value> {
    only(docs, "ClusterRole")["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| strings(&r["apiGroups"]).contains(&group) && r["resources"][0] == resource)
}

#[test]
fn helm_lint_passes() {
    for set in [None, Some(CUSTOM)] {
        let mut args = vec!["lint", "--strict", CHART];
        if let Some(set) = set {
            args.extend(["--set", set]);
        }
        let out = helm(&args);
        let msg = text(&out);
        assert!(out.status.success(), "helm {args:?}: {msg}");
        assert!(msg.contains("0 chart(s) failed"), "{msg}");
    }
}

#[test]
fn chart_crds_equal_the_repository_crds() {
    let names = |dir: &Path| {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    };
    let repo = Path::new(REPO_CRDS);
    let chart = Path::new(CHART).join("crds");
    assert_eq!(
        names(&chart),
        names(repo),
        "charts/jobgate/crds/ must hold exactly the files of crds/"
    );
    for name in names(repo) {
        let want = std::fs::read(repo.join(&name)).unwrap();
        let got = std::fs::read(chart.join(&name)).unwrap();
        assert!(
            got == want,
            "charts/jobgate/crds/{name} differs from crds/{name}; \
             refresh it: cp crds/{name} charts/jobgate/crds/{name}"
        );
    }
}

#[test]
fn default_values_render_a_leader_elected_controller() {
    let docs = documents(&render(&[]));
    let mut got = kinds(&docs);
    got.sort();
    assert_eq!(
        got,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["spec"]["replicas"], 2);
    let c = container(&docs);
    assert_eq!(c["image"], "ghcr.io/jobgate/jobgate:0.1.0");
    assert_eq!(strings(&c["command"]), ["jobgate"]);
    assert_eq!(
        strings(&c["args"]),
        [
            "controller",
            "--poll-waiting",
            "2s",
            "--poll-idle",
            "60s",
            "--listen",
            "0.0.0.0:8080",
            "--leader-elect=true",
            "--leader-election-namespace",
            "$(POD_NAMESPACE)",
            "--leader-election-name",
            "jobgate-controller",
            "--identity",
            "$(POD_NAME)",
            "--log-format",
            "json",
        ]
    );
    assert_eq!(
        env_var(c, "POD_NAMESPACE")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.namespace"
    );
    assert_eq!(
        env_var(c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // No RUST_LOG unless asked for: the controller's default keeps the AWS
    // SDK's own warnings out of the log.
    assert!(
        c["env"]
            .as_sequence()
            .is_some_and(|env| env.iter().all(|e| e["name"] != "RUST_LOG")),
        "{:?}",
        c["env"]
    );
    assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz");
    assert_eq!(c["readinessProbe"]["httpGet"]["path"], "/readyz");
    assert_eq!(c["ports"][0]["containerPort"], 8080);

    // Leases only in the release namespace, through a Role.
    let role = only(&docs, "Role");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    assert_eq!(strings(&role["rules"][0]["resources"]), ["leases"]);
    assert_eq!(
        strings(&role["rules"][0]["verbs"]),
        ["get", "create", "update"]
    );
    assert!(rule(&docs, "coordination.k8s.io", "leases").is_none());
    // The default cluster name needs the kube-system namespace, and only it.
    let namespaces = rule(&docs, "", "namespaces").expect("a namespaces rule");
    assert_eq!(strings(&namespaces["resourceNames"]), ["kube-system"]);
    let jobs = rule(&docs, "batch", "jobs").expect("a jobs rule");
    assert_eq!(
        strings(&jobs["verbs"]),
        ["get", "list", "watch", "patch", "update"]
    );
    let pods = rule(&docs, "", "pods").expect("a pods rule");
    assert_eq!(pods["verbs"], serde_yaml::to_value(["list"]).unwrap());
    let secrets = rule(&docs, "", "secrets").expect("a secrets rule");
    assert_eq!(strings(&secrets["verbs"]), ["get"]);
    assert!(rule(&docs, "jobgate.dev", "concurrencygroups/status").is_some());
    assert!(rule(&docs, "events.k8s.io", "events").is_some());

    let service = only(&docs, "Service");
    assert_eq!(service["spec"]["ports"][0]["port"], 8080);
    assert_eq!(
        service["spec"]["selector"],
        deployment["spec"]["selector"]["matchLabels"]
    );
}

#[test]
fn values_set_cluster_namespace_and_leader_election() {
    let docs = documents(&render(&["--set", CUSTOM]));
    let c = container(&docs);
    let args = strings(&c["args"]);
    let value = |flag: &str| {
        let at = args.iter().position(|a| *a == flag);
        at.map(|i| args[i + 1])
    };
    assert_eq!(value("--cluster-name"), Some("east"), "{args:?}");
    assert_eq!(value("--namespace"), Some("batch"), "{args:?}");
    assert_eq!(value("--identity"), Some("$(POD_NAME)"), "{args:?}");
    assert!(args.contains(&"--leader-elect=false"), "{args:?}");
    assert!(
        !args.iter().any(|a| a.starts_with("--leader-election-")),
        "{args:?}"
    );
    // Two controllers without an election would both admit Jobs.
    assert_eq!(only(&docs, "Deployment")["spec"]["replicas"], 1);
    let got = kinds(&docs);
    assert!(
        !got.contains(&"Role") && !got.contains(&"RoleBinding"),
        "{got:?}"
    );
    // A named cluster never reads the kube-system namespace.
    assert!(rule(&docs, "", "namespaces").is_none());

    // The ServiceMonitor is off by default and selects the metrics Service.
    let docs = documents(&render(&[
        "--set",
        "metrics.serviceMonitor.enabled=true,metrics.serviceMonitor.labels.release=prom",
    ]));
    let monitor = only(&docs, "ServiceMonitor");
    assert_eq!(monitor["metadata"]["labels"]["release"], "prom");
    assert_eq!(monitor["spec"]["endpoints"][0]["port"], "metrics");
    assert_eq!(
        monitor["spec"]["selector"]["matchLabels"],
        only(&docs, "Service")["spec"]["selector"]
    );
}

#[test]
fn the_api_server_accepts_the_crd_and_every_rendered_object() {
    let cp = k8s::ControlPlane::start();
    let crds = format!("{CHART}/crds");
    let out = cp.kubectl(&["apply", "-f", &crds]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cp.kubectl(&[
        "wait",
        "--for=condition=established",
        "--timeout=60s",
        "crd/concurrencygroups.jobgate.dev",
    ]);
    assert!(out.status.success(), "{}", text(&out));
    let out = cp.kubectl(&["create", "namespace", NAMESPACE]);
    assert!(out.status.success(), "{}", text(&out));

    for extra in [&[][..], &["--set", CUSTOM][..]] {
        let manifest = render(extra);
        let expected = documents(&manifest).len();
        let mut out = cp.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifest);
        for _ in 0..20 {
            if out.status.success() {
                break;
            }
            // A namespace just created can take a moment to be usable.
            std::thread::sleep(Duration::from_millis(500));
            out = cp.kubectl_stdin(&["apply", "--dry-run=server", "-f", "-"], &manifest);
        }
        let msg = text(&out);
        assert!(out.status.success(), "values {extra:?}: {msg}");
        let accepted = msg
            .lines()
            .filter(|l| l.contains("(server dry run)"))
            .count();
        assert_eq!(accepted, expected, "values {extra:?}: {msg}");
        assert!(msg.contains("deployment.apps/jobgate created"), "{msg}");
    }
}

/// The chart and the binary must agree: every flag the Deployment passes is
/// one `jobgate controller` accepts.
#[test]
fn every_rendered_flag_is_accepted_by_the_controller() {
    let help = std::process::Command::new(env!("CARGO_BIN_EXE_jobgate"))
        .args(["controller", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    for extra in [
        &[][..],
        &["--set", "clusterName=east,watchNamespace=batch"][..],
    ] {
        let docs = documents(&render(extra));
        let c = container(&docs);
        for arg in strings(&c["args"]) {
            let Some(flag) = arg.strip_prefix("--") else {
                continue;
            };
            let name = flag.split('=').next().unwrap();
            assert!(
                help.contains(&format!("--{name} "))
                    || help.contains(&format!("--{name}="))
                    || help.contains(&format!("--{name} <")),
                "the chart passes --{name}, which `jobgate controller` does not know:\n{help}"
            );
        }
    }
}
