//! The chart's alerts and dashboard: promtool checks the rules the chart
//! renders and runs their unit tests (tests/alerts/jobgate.test.yaml), and
//! every metric they name is one a live controller exports.

use std::collections::BTreeSet;
use std::process::Command;
use std::time::Duration;

use jobgate_testkit::operator::{Bed, ControllerProcess, create_held_job, eventually};
use serde_yaml::Value;

use crate::chart_support::*;

const ALERT_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/alerts/jobgate.test.yaml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/jobgate/dashboards/jobgate.json"
);

/// The PrometheusRule's rule groups, as a Prometheus rule file.
fn rendered_rules() -> Value {
    let docs = documents(&render(&["--set", "metrics.prometheusRule.enabled=true"]));
    let rule = only(&docs, "PrometheusRule");
    let mut file = serde_yaml::Mapping::new();
    file.insert("groups".into(), rule["spec"]["groups"].clone());
    Value::Mapping(file)
}

fn promtool(args: &[&str], dir: &std::path::Path) -> std::process::Output {
    let bin = jobgate_testkit::testbed::binary("promtool").unwrap_or_else(|e| panic!("{e}"));
    Command::new(&bin)
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| panic!("running {}: {e}", bin.display()))
}

#[test]
fn the_alerts_pass_promtool_and_their_unit_tests() {
    let dir = tempfile::tempdir().unwrap();
    let rules = serde_yaml::to_string(&rendered_rules()).unwrap();
    std::fs::write(dir.path().join("rules.yaml"), &rules).unwrap();
    std::fs::copy(ALERT_TESTS, dir.path().join("jobgate.test.yaml")).unwrap();

    let out = promtool(&["check", "rules", "rules.yaml"], dir.path());
    assert!(out.status.success(), "{}\n{rules}", text(&out));
    let msg = text(&out);
    assert!(msg.contains("SUCCESS: 5 rules found"), "{msg}");

    let out = promtool(&["test", "rules", "jobgate.test.yaml"], dir.path());
    assert!(out.status.success(), "{}\n{rules}", text(&out));
    // Every alert has a test that fires it.
    let tests = std::fs::read_to_string(ALERT_TESTS).unwrap();
    for alert in alert_names(&rendered_rules()) {
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no test in tests/alerts/jobgate.test.yaml"
        );
    }
}

/// The selector and threshold values reach the expressions.
#[test]
fn the_alerts_take_their_selector_and_threshold_from_values() {
    let docs = documents(&render(&[
        "--set",
        "metrics.prometheusRule.enabled=true,metrics.prometheusRule.waitingTooLongSeconds=600",
        "--set-string",
        r#"metrics.prometheusRule.selector=cluster="east"\,job="jg""#,
    ]));
    let rule = only(&docs, "PrometheusRule");
    let exprs = expressions(&rule["spec"]);
    assert!(
        exprs
            .iter()
            .all(|e| e.contains(r#"{cluster="east",job="jg"}"#)),
        "{exprs:#?}"
    );
    assert!(
        exprs
            .iter()
            .any(|e| e.starts_with("jobgate_oldest_waiting_job_seconds") && e.ends_with("> 600")),
        "{exprs:#?}"
    );
    // Off by default, like the ServiceMonitor.
    let docs = documents(&render(&[]));
    assert!(!kinds(&docs).contains(&"PrometheusRule"));
    assert!(!kinds(&docs).contains(&"ConfigMap"));
    let docs = documents(&render(&["--set", "metrics.grafanaDashboard.enabled=true"]));
    let cm = only(&docs, "ConfigMap");
    assert_eq!(cm["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: serde_json::Value =
        serde_json::from_str(cm["data"]["jobgate.json"].as_str().unwrap()).unwrap();
    let file: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    assert_eq!(shipped, file);
}

fn alert_names(rules: &Value) -> Vec<String> {
    rules["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["alert"].as_str().unwrap().to_string())
        .collect()
}

fn expressions(spec: &Value) -> Vec<String> {
    spec["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .map(|r| r["expr"].as_str().unwrap().to_string())
        .collect()
}

/// The dashboard's queries.
fn dashboard_queries() -> Vec<String> {
    let dash: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).unwrap();
    let mut out = Vec::new();
    for panel in dash["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            out.push(target["expr"].as_str().unwrap().to_string());
        }
    }
    for var in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = var["query"]["query"].as_str() {
            out.push(q.to_string());
        }
    }
    out
}

/// The metric names in PromQL expressions: identifiers that start with
/// jobgate_ or process_ (label names and functions never do).
fn metric_names(exprs: &[String]) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for e in exprs {
        let mut word = String::new();
        for c in e.chars().chain(std::iter::once(' ')) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                word.push(c);
                continue;
            }
            if word.starts_with("jobgate_") || word.starts_with("process_") {
                names.insert(word.clone());
            }
            word.clear();
        }
    }
    names
}

/// Whether `/metrics` has samples of `name`, or at least declares its family
/// (a counter family with no labels seen yet has only its `# TYPE` line).
fn exported(metrics: &str, name: &str) -> bool {
    let family = ["_total", "_bucket", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name);
    metrics.lines().any(|l| {
        l.strip_prefix(name)
            .is_some_and(|rest| rest.starts_with('{') || rest.starts_with(' '))
            || l.strip_prefix("# TYPE ")
                .and_then(|t| t.split_whitespace().next())
                == Some(family)
    })
}

/// The alerts and the dashboard name only metrics a live controller
/// exports. prometheus-client prints a family only once it has a series,
/// so the bed gives every one of them something to count: a group holding
/// its slot with a Job waiting (lease and wait gauges), a Job that ends (a
/// release), a Job naming no group, and a group whose ledger is not
/// allowed (a reconcile error).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_metric_the_alerts_and_dashboard_use_is_exported_by_a_live_controller() {
    let bed = Bed::shared_held("monitor").await;
    let ns = bed.ns.as_str();
    bed.group_with("watched", 1, serde_json::json!({}));
    bed.group_with(
        "elsewhere",
        1,
        serde_json::json!({"ledger": {
            "bucket": bed.bucket,
            "endpoint": bed.s3.endpoint,
            "forcePathStyle": true,
            "key": "not-jobgate/elsewhere.json",
        }}),
    );
    let ctl = ControllerProcess::start_with(
        &bed.cp,
        &bed.s3,
        "mon",
        ns,
        true,
        &["--leader-elect=false"],
        "",
    );
    // Admitted before the others exist (creation times have whole seconds),
    // so that it is the one that ends.
    create_held_job(
        &bed.kube,
        ns,
        "short",
        "watched",
        0,
        Some(Duration::from_secs(2)),
    )
    .await;
    let admitted = format!(r#"jobgate_admissions_total{{namespace="{ns}",group="watched"}} 1"#);
    eventually(Duration::from_secs(30), "short admitted", || async {
        ctl.metrics().contains(&admitted).then_some(())
    })
    .await;
    create_held_job(&bed.kube, ns, "long", "watched", 0, None).await;
    create_held_job(&bed.kube, ns, "waits", "watched", 0, None).await;
    create_held_job(&bed.kube, ns, "lost", "no-such-group", 0, None).await;
    let mut used: Vec<String> = expressions(&rendered_rules());
    used.extend(dashboard_queries());
    let names = metric_names(&used);
    assert!(names.len() > 15, "{names:?}");
    let labels = format!(r#"{{namespace="{ns}",group="watched"}}"#);
    let per_group = [
        "jobgate_lease_remaining_seconds",
        "jobgate_lease_last_renewal_age_seconds",
        "jobgate_oldest_waiting_job_seconds",
        "jobgate_group_ready",
    ];
    // Polled rather than `eventually`, to name what is missing at the end.
    let deadline = std::time::Instant::now() + Duration::from_secs(90);
    let metrics = loop {
        let m = ctl.metrics();
        let missing: Vec<String> = names
            .iter()
            .filter(|n| !exported(&m, n))
            .cloned()
            .chain(
                per_group
                    .iter()
                    .map(|name| format!("{name}{labels}"))
                    .filter(|series| !m.contains(series.as_str())),
            )
            .collect();
        if missing.is_empty() {
            break m;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "named by the alerts or the dashboard but not exported: {missing:?}\n{m}"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        metrics.contains(&format!("jobgate_group_ready{labels} 1")),
        "{metrics}"
    );
    assert!(metrics.contains("jobgate_leader 1"), "{metrics}");
    assert!(
        metrics.contains(r#"jobgate_s3_requests_total{op="put",outcome="ok"}"#),
        "{metrics}"
    );
}

/// The check itself: a misspelt name is caught.
#[test]
fn the_name_check_catches_a_name_that_is_not_exported() {
    let metrics = "# TYPE jobgate_releases counter\n\
                   jobgate_leader 1\n\
                   jobgate_s3_request_duration_seconds_bucket{op=\"get\",le=\"0.001\"} 3\n";
    for name in [
        "jobgate_releases_total",
        "jobgate_leader",
        "jobgate_s3_request_duration_seconds_bucket",
    ] {
        assert!(exported(metrics, name), "{name}");
    }
    for name in ["jobgate_leaders", "jobgate_release_total", "jobgate_lead"] {
        assert!(!exported(metrics, name), "{name}");
    }
    let names = metric_names(&[
        "sum by (namespace) (rate(jobgate_admissions_total{job=\"x\"}[5m])) / jobgate_limit".into(),
    ]);
    assert_eq!(
        names.into_iter().collect::<Vec<_>>(),
        ["jobgate_admissions_total", "jobgate_limit"]
    );
}
