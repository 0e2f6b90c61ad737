//! What the chart tests share: helm from the test bed, rendering the chart
//! as release "jobgate", and finding objects and fields in what it renders.

use serde::Deserialize;
use serde_yaml::Value;
use std::process::{Command, Output};

pub(crate) const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/jobgate");
pub(crate) const REPO_CRDS: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/crds");
/// The Kubernetes the test bed's kube-apiserver is (scripts/testbed.sh).
pub(crate) const KUBE_VERSION: &str = "1.35.0";
pub(crate) const NAMESPACE: &str = "jobgate";
/// The values the brief's second example sets: a named cluster, one
/// namespace, no leader election.
pub(crate) const CUSTOM: &str =
    "clusterName=east,watchNamespace=batch,leaderElection.enabled=false";
/// The webhook's TLS from cert-manager instead of the controller.
pub(crate) const CERT_MANAGER: &str = "webhook.certManager.enabled=true";
/// For clusters without a pod network.
pub(crate) const HOST_NETWORK: &str = "hostNetwork=true";

/// Every production value set at once (`--set-json` arguments), for lint
/// and for the API server's dry run. The Secret Roles go to two namespaces
/// that must exist: PRODUCTION_NAMESPACES.
pub(crate) const PRODUCTION: &[&str] = &[
    "--set-json",
    r#"podDisruptionBudget={"enabled":true,"minAvailable":1}"#,
    "--set-json",
    r#"priorityClassName="system-cluster-critical""#,
    "--set-json",
    r#"topologySpreadConstraints=[{"maxSkew":1,"topologyKey":"topology.kubernetes.io/zone","whenUnsatisfiable":"DoNotSchedule"}]"#,
    "--set-json",
    r#"affinity={"nodeAffinity":{"requiredDuringSchedulingIgnoredDuringExecution":{"nodeSelectorTerms":[{"matchExpressions":[{"key":"kubernetes.io/os","operator":"In","values":["linux"]}]}]}}}"#,
    "--set-json",
    r#"tolerations=[{"key":"dedicated","operator":"Equal","value":"control","effect":"NoSchedule"}]"#,
    "--set-json",
    r#"nodeSelector={"kubernetes.io/os":"linux"}"#,
    "--set-json",
    r#"extraArgs=["--poll-idle","30s"]"#,
    "--set-json",
    r#"extraEnv=[{"name":"AWS_STS_REGIONAL_ENDPOINTS","value":"regional"}]"#,
    "--set-json",
    r#"extraVolumes=[{"name":"scratch","emptyDir":{}}]"#,
    "--set-json",
    r#"extraVolumeMounts=[{"name":"scratch","mountPath":"/tmp"}]"#,
    "--set-json",
    r#"s3={"caBundle":{"configMap":"s3-ca","key":"ca.pem"}}"#,
    "--set-json",
    r#"credentialsSecrets={"access":"namespaces","namespaces":["team-a","team-b"]}"#,
];
pub(crate) const PRODUCTION_NAMESPACES: [&str; 2] = ["team-a", "team-b"];

/// Stand-ins for cert-manager's CRDs (the test bed has no cert-manager),
/// with the part of the real v1 schema the chart uses. kubectl's strict
/// field validation then refuses a misspelt field in the chart's
/// Certificate or Issuer, as the real CRDs would.
pub(crate) const CERT_MANAGER_CRDS: &str = r#"
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: certificates.cert-manager.io
spec:
  group: cert-manager.io
  names: {kind: Certificate, listKind: CertificateList, plural: certificates, singular: certificate}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              required: [issuerRef, secretName]
              properties:
                secretName: {type: string}
                dnsNames: {type: array, items: {type: string}}
                issuerRef:
                  type: object
                  required: [name]
                  properties:
                    name: {type: string}
                    kind: {type: string}
                    group: {type: string}
---
apiVersion: apiextensions.k8s.io/v1
kind: CustomResourceDefinition
metadata:
  name: issuers.cert-manager.io
spec:
  group: cert-manager.io
  names: {kind: Issuer, listKind: IssuerList, plural: issuers, singular: issuer}
  scope: Namespaced
  versions:
    - name: v1
      served: true
      storage: true
      schema:
        openAPIV3Schema:
          type: object
          properties:
            spec:
              type: object
              properties:
                selfSigned:
                  type: object
                  properties:
                    crlDistributionPoints: {type: array, items: {type: string}}
"#;

pub(crate) fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Runs the test bed's helm with its config, cache and data in a fresh
/// directory, so nothing from the machine's own helm setup leaks in.
pub(crate) fn helm(args: &[&str]) -> Output {
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
pub(crate) fn render(extra: &[&str]) -> String {
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

/// The error of a `helm template` that must fail.
pub(crate) fn render_error(extra: &[&str]) -> String {
    let mut args = vec!["template", "jobgate", CHART, "--namespace", NAMESPACE];
    args.extend_from_slice(extra);
    let out = helm(&args);
    assert!(
        !out.status.success(),
        "helm {args:?} should have failed:\n{}",
        text(&out)
    );
    text(&out)
}

pub(crate) fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).unwrap_or_else(|e| panic!("{e}:\n{yaml}")))
        .filter(|v| !v.is_null())
        .collect()
}

pub(crate) fn kinds(docs: &[Value]) -> Vec<&str> {
    docs.iter().filter_map(|d| d["kind"].as_str()).collect()
}

/// The object of `kind` named `name`.
pub(crate) fn named<'a>(docs: &'a [Value], kind: &str, name: &str) -> &'a Value {
    docs.iter()
        .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
        .unwrap_or_else(|| panic!("no {kind} {name}, kinds: {:?}", kinds(docs)))
}

pub(crate) fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found: Vec<&Value> = docs.iter().filter(|d| d["kind"] == kind).collect();
    assert_eq!(
        found.len(),
        1,
        "one {kind} expected, kinds: {:?}",
        kinds(docs)
    );
    found[0]
}

pub(crate) fn strings(v: &Value) -> Vec<&str> {
    v.as_sequence()
        .unwrap_or_else(|| panic!("not a list: {v:?}"))
        .iter()
        .map(|s| s.as_str().unwrap_or_else(|| panic!("not a string: {s:?}")))
        .collect()
}

pub(crate) fn pod(docs: &[Value]) -> &Value {
    &only(docs, "Deployment")["spec"]["template"]["spec"]
}

pub(crate) fn container(docs: &[Value]) -> &Value {
    &pod(docs)["containers"][0]
}

/// The value following `flag` in the container's arguments.
pub(crate) fn flag_value<'a>(args: &[&'a str], flag: &str) -> Option<&'a str> {
    let at = args.iter().position(|a| *a == flag)?;
    args.get(at + 1).copied()
}

pub(crate) fn env_var<'a>(container: &'a Value, name: &str) -> &'a Value {
    container["env"]
        .as_sequence()
        .and_then(|env| env.iter().find(|e| e["name"] == name))
        .unwrap_or_else(|| panic!("no env {name}: {:?}", container["env"]))
}

/// The ClusterRole rule for `resource` in `group`.
pub(crate) fn rule<'a>(docs: &'a [Value], group: &str, resource: &str) -> Option<&'a Value> {
    only(docs, "ClusterRole")["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|r| strings(&r["apiGroups"]).contains(&group) && r["resources"][0] == resource)
}
