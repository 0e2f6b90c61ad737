//! The chart's values for a production install: disruption budget, spread,
//! scheduling, priority, extra arguments, environment and volumes, name
//! overrides, and how far the controller may read Secrets. Rendered here;
//! the API server's dry run of all of them at once is in
//! `helm_chart::the_api_server_accepts_the_crd_and_every_rendered_object`.

use serde_yaml::Value;

use crate::chart_support::*;

#[test]
fn helm_lint_passes_with_every_production_value() {
    let mut args = vec!["lint", "--strict", CHART];
    args.extend_from_slice(PRODUCTION);
    let out = helm(&args);
    let msg = text(&out);
    assert!(out.status.success(), "helm {args:?}: {msg}");
    assert!(msg.contains("0 chart(s) failed"), "{msg}");
}

/// Scheduling, priority and the extras land in the pod as given, after the
/// chart's own arguments, environment and volumes.
#[test]
fn production_values_reach_the_pod() {
    let docs = documents(&render(PRODUCTION));
    let spec = pod(&docs);
    let c = container(&docs);
    assert_eq!(spec["priorityClassName"], "system-cluster-critical");
    assert_eq!(spec["nodeSelector"]["kubernetes.io/os"], "linux");
    assert_eq!(spec["tolerations"][0]["key"], "dedicated");
    assert_eq!(
        spec["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
            [0]["matchExpressions"][0]["key"],
        "kubernetes.io/os"
    );
    let args = strings(&c["args"]);
    assert_eq!(args[0], "controller");
    assert_eq!(&args[args.len() - 2..], ["--poll-idle", "30s"]);
    assert_eq!(
        env_var(c, "AWS_STS_REGIONAL_ENDPOINTS")["value"],
        "regional"
    );
    assert_eq!(
        env_var(c, "AWS_CA_BUNDLE")["value"],
        "/etc/jobgate/s3-ca/ca.pem"
    );
    // The chart's own environment is still there.
    assert_eq!(
        env_var(c, "POD_NAME")["valueFrom"]["fieldRef"]["fieldPath"],
        "metadata.name"
    );
    // The CA bundle's mount, then the extras.
    assert_eq!(c["volumeMounts"][0]["mountPath"], "/etc/jobgate/s3-ca");
    assert_eq!(c["volumeMounts"][0]["readOnly"], true);
    assert_eq!(spec["volumes"][0]["configMap"]["name"], "s3-ca");
    assert_eq!(c["volumeMounts"][1]["mountPath"], "/tmp");
    assert_eq!(spec["volumes"][1]["name"], "scratch");

    // With cert-manager's mount the extras come after it.
    let mut extra = PRODUCTION.to_vec();
    extra.extend(["--set", CERT_MANAGER]);
    let docs = documents(&render(&extra));
    let mounts: Vec<&Value> = container(&docs)["volumeMounts"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|m| &m["name"])
        .collect();
    assert_eq!(mounts, ["webhook-cert", "s3-ca", "scratch"]);
    let volumes: Vec<&Value> = pod(&docs)["volumes"]
        .as_sequence()
        .unwrap()
        .iter()
        .map(|v| &v["name"])
        .collect();
    assert_eq!(volumes, ["webhook-cert", "s3-ca", "scratch"]);
}

/// By default replicas spread over nodes, selecting the controller's own
/// pods; an entry with its own selector keeps it; [] turns spreading off.
#[test]
fn replicas_spread_across_nodes_by_default() {
    let docs = documents(&render(&[]));
    let spread = &pod(&docs)["topologySpreadConstraints"];
    assert_eq!(spread.as_sequence().unwrap().len(), 1, "{spread:?}");
    assert_eq!(spread[0]["topologyKey"], "kubernetes.io/hostname");
    assert_eq!(spread[0]["whenUnsatisfiable"], "ScheduleAnyway");
    let selector = &spread[0]["labelSelector"]["matchLabels"];
    let pod_labels = &only(&docs, "Deployment")["spec"]["selector"]["matchLabels"];
    assert_eq!(selector, pod_labels);

    let own = r#"topologySpreadConstraints=[{"maxSkew":2,"topologyKey":"zone","whenUnsatisfiable":"DoNotSchedule","labelSelector":{"matchLabels":{"team":"a"}}}]"#;
    let docs = documents(&render(&["--set-json", own]));
    let spread = &pod(&docs)["topologySpreadConstraints"];
    assert_eq!(spread[0]["labelSelector"]["matchLabels"]["team"], "a");
    assert!(
        spread[0]["labelSelector"]["matchLabels"]
            .get("app.kubernetes.io/name")
            .is_none()
    );

    let docs = documents(&render(&["--set-json", "topologySpreadConstraints=[]"]));
    assert!(pod(&docs).get("topologySpreadConstraints").is_none());
}

/// A PodDisruptionBudget keeps one replica through drains, but only where
/// there is more than one: with one replica it would block every drain.
#[test]
fn the_disruption_budget_follows_the_replicas() {
    let docs = documents(&render(&[]));
    let pdb = only(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["minAvailable"], 1);
    assert!(pdb["spec"].get("maxUnavailable").is_none());
    assert_eq!(
        pdb["spec"]["selector"]["matchLabels"],
        only(&docs, "Deployment")["spec"]["selector"]["matchLabels"]
    );

    let docs = documents(&render(&[
        "--set",
        "podDisruptionBudget.maxUnavailable=50%",
    ]));
    let pdb = only(&docs, "PodDisruptionBudget");
    assert_eq!(pdb["spec"]["maxUnavailable"], "50%");
    assert!(pdb["spec"].get("minAvailable").is_none());

    for set in [
        "replicaCount=1",
        "leaderElection.enabled=false",
        "podDisruptionBudget.enabled=false",
    ] {
        let docs = documents(&render(&["--set", set]));
        assert!(
            !kinds(&docs).contains(&"PodDisruptionBudget"),
            "{set}: {:?}",
            kinds(&docs)
        );
    }
}

/// `credentialsSecrets.access`: every namespace (the ClusterRole), only
/// the listed ones (a Role and RoleBinding in each), or none.
#[test]
fn secret_reads_can_be_narrowed_or_switched_off() {
    let secret_rule = |docs: &[Value]| rule(docs, "", "secrets").is_some();
    let credential_roles = |docs: &[Value]| -> Vec<String> {
        docs.iter()
            .filter(|d| d["kind"] == "Role" && d["metadata"]["name"] == "jobgate-credentials")
            .map(|d| d["metadata"]["namespace"].as_str().unwrap().to_string())
            .collect()
    };

    let docs = documents(&render(&[]));
    assert!(secret_rule(&docs));
    assert!(credential_roles(&docs).is_empty());

    let docs = documents(&render(PRODUCTION));
    assert!(
        !secret_rule(&docs),
        "a namespaced install reads no Secret cluster-wide"
    );
    assert_eq!(credential_roles(&docs), ["team-a", "team-b"]);
    for ns in PRODUCTION_NAMESPACES {
        let role = docs
            .iter()
            .find(|d| d["kind"] == "Role" && d["metadata"]["namespace"] == ns)
            .unwrap();
        assert_eq!(strings(&role["rules"][0]["verbs"]), ["get"]);
        assert_eq!(strings(&role["rules"][0]["resources"]), ["secrets"]);
        let binding = docs
            .iter()
            .find(|d| d["kind"] == "RoleBinding" && d["metadata"]["namespace"] == ns)
            .unwrap();
        assert_eq!(binding["roleRef"]["name"], "jobgate-credentials");
        assert_eq!(binding["subjects"][0]["name"], "jobgate");
        assert_eq!(binding["subjects"][0]["namespace"], NAMESPACE);
    }

    let docs = documents(&render(&["--set", "credentialsSecrets.access=none"]));
    assert!(!secret_rule(&docs));
    assert!(credential_roles(&docs).is_empty());

    let msg = render_error(&["--set", "credentialsSecrets.access=namespaces"]);
    assert!(
        msg.contains("credentialsSecrets.access=namespaces needs credentialsSecrets.namespaces"),
        "{msg}"
    );
}

/// nameOverride changes the name label and the object names built from it;
/// fullnameOverride replaces the object names whole.
#[test]
fn name_overrides_rename_every_object() {
    let docs = documents(&render(&["--set", "fullnameOverride=gate"]));
    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "gate");
    assert_eq!(only(&docs, "ClusterRole")["metadata"]["name"], "gate");
    assert_eq!(only(&docs, "ServiceAccount")["metadata"]["name"], "gate");
    assert_eq!(
        only(&docs, "MutatingWebhookConfiguration")["metadata"]["name"],
        "gate"
    );
    let args = strings(&container(&docs)["args"]);
    assert_eq!(
        flag_value(&args, "--leader-election-name"),
        Some("gate-controller")
    );
    assert_eq!(
        flag_value(&args, "--webhook-secret"),
        Some("gate-webhook-tls")
    );

    let docs = documents(&render(&["--set", "nameOverride=ctl"]));
    let deployment = only(&docs, "Deployment");
    assert_eq!(deployment["metadata"]["name"], "jobgate-ctl");
    assert_eq!(
        deployment["spec"]["selector"]["matchLabels"]["app.kubernetes.io/name"],
        "ctl"
    );
}

/// The values that crash-looped the controller are refused before anything
/// is rendered, and the new values' types are checked.
#[test]
fn the_schema_refuses_what_the_controller_cannot_run() {
    for (args, path) in [
        (&["--set", "pollWaiting=0s"][..], "/pollWaiting"),
        (&["--set", "pollIdle=0m"][..], "/pollIdle"),
        (
            &[
                "--set-json",
                r#"allowedLedgers=["s3://b/jobgate/../other/"]"#,
            ][..],
            "/allowedLedgers/0",
        ),
        (
            &["--set-json", r#"allowedLedgers=["s3://b/.."]"#][..],
            "/allowedLedgers/0",
        ),
        (
            &["--set", "credentialsSecrets.access=some"][..],
            "/credentialsSecrets/access",
        ),
        (
            &["--set", "podDisruptionBudget.minAvailable=half"][..],
            "/podDisruptionBudget/minAvailable",
        ),
        (
            &["--set-json", r#"extraVolumeMounts=[{"name":"ca"}]"#][..],
            "/extraVolumeMounts/0",
        ),
        (
            &["--set-json", r#"topologySpreadConstraints=[{"maxSkew":1}]"#][..],
            "/topologySpreadConstraints/0",
        ),
    ] {
        let msg = render_error(args);
        assert!(
            msg.contains("values don't meet the specifications of the schema"),
            "{args:?}: {msg}"
        );
        assert!(msg.contains(path), "{args:?}: {msg}");
    }
    // Durations and prefixes that only look alike pass.
    for args in [
        &["--set", "pollWaiting=500ms"][..],
        &["--set", "pollWaiting=10s"][..],
        &["--set-json", r#"allowedLedgers=["s3://b/jobgate..x/"]"#][..],
    ] {
        render(args);
    }
}

/// `s3.caBundle` from a Secret; from both a ConfigMap and a Secret is
/// refused; unset, nothing is mounted.
#[test]
fn an_s3_ca_bundle_is_mounted_and_named_by_aws_ca_bundle() {
    let docs = documents(&render(&["--set", "s3.caBundle.secret=s3-tls"]));
    let c = container(&docs);
    assert_eq!(
        env_var(c, "AWS_CA_BUNDLE")["value"],
        "/etc/jobgate/s3-ca/ca.crt"
    );
    assert_eq!(pod(&docs)["volumes"][0]["secret"]["secretName"], "s3-tls");

    let msg = render_error(&["--set", "s3.caBundle.secret=a,s3.caBundle.configMap=b"]);
    assert!(msg.contains("/s3/caBundle"), "{msg}");

    let docs = documents(&render(&[]));
    let c = container(&docs);
    assert!(
        !c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .any(|e| e["name"] == "AWS_CA_BUNDLE")
    );
    assert!(pod(&docs).get("volumes").is_none());
}
