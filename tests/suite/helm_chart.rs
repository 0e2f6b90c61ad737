//! The Helm chart in charts/jobgate: it lints, its CRD is the
//! repository's, its schema refuses bad values, its README documents every
//! value, it turns values into the controller's flags in each webhook mode,
//! and a real kube-apiserver accepts every object it renders.

use jobgate_testkit::k8s;
use serde_yaml::Value;
use std::path::Path;
use std::time::Duration;

use crate::chart_support::*;

#[test]
fn helm_lint_passes() {
    for set in [None, Some(CUSTOM), Some(CERT_MANAGER), Some(HOST_NETWORK)] {
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
            "Lease",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "Role",
            "RoleBinding",
            "RoleBinding",
            "Secret",
            "Service",
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
            "--deletion-timeout",
            "10m",
            "--max-concurrent-passes",
            "0",
            "--listen",
            "0.0.0.0:8080",
            "--webhook-listen",
            "0.0.0.0:9443",
            "--webhook-secret",
            "jobgate-webhook-tls",
            "--webhook-service",
            "jobgate-webhook",
            "--webhook-configuration",
            "jobgate",
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
    let role = named(&docs, "Role", "jobgate-leader-election");
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
    let status = rule(&docs, "batch", "jobs/status").expect("a jobs/status rule");
    assert_eq!(strings(&status["verbs"]), ["patch"]);
    let pods = rule(&docs, "", "pods").expect("a pods rule");
    assert_eq!(pods["verbs"], serde_yaml::to_value(["list"]).unwrap());
    let secrets = rule(&docs, "", "secrets").expect("a secrets rule");
    assert_eq!(strings(&secrets["verbs"]), ["get"]);
    assert!(rule(&docs, "jobgate.dev", "concurrencygroups/status").is_some());
    // Events are created, and a repeat patches the first one's series;
    // nothing else, and no core-group rule.
    let events = rule(&docs, "events.k8s.io", "events").expect("an events rule");
    assert_eq!(strings(&events["verbs"]), ["create", "patch"]);
    assert!(rule(&docs, "", "events").is_none());

    let service = named(&docs, "Service", "jobgate-metrics");
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
    let value = |flag: &str| flag_value(&args, flag);
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
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "jobgate-leader-election"),
        "{:?}",
        kinds(&docs)
    );
    // The controller admits Jobs of its namespace only, so the webhook must
    // not suspend Jobs elsewhere: nothing would ever unsuspend them.
    let webhook = &only(&docs, "MutatingWebhookConfiguration")["webhooks"][0];
    let selector = &webhook["namespaceSelector"]["matchExpressions"][0];
    assert_eq!(selector["key"], "kubernetes.io/metadata.name");
    assert_eq!(selector["operator"], "In");
    assert_eq!(strings(&selector["values"]), ["batch"]);
    // A named cluster still reads the kube-system namespace's UID, and only
    // that: it tells it apart from another cluster given the same name.
    let namespaces = rule(&docs, "", "namespaces").expect("a rule for namespaces");
    assert_eq!(strings(&namespaces["resourceNames"]), ["kube-system"]);

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
        named(&docs, "Service", "jobgate-metrics")["spec"]["selector"]
    );
}

/// `allowedLedgers` becomes one `--allowed-ledger` per entry, in order,
/// with the `{namespace}` placeholder passed through untouched; none by
/// default (the controller's own default applies).
#[test]
fn allowed_ledgers_become_allowed_ledger_flags() {
    let flags = |docs: &[Value]| -> Vec<String> {
        let args = strings(&container(docs)["args"]);
        args.windows(2)
            .filter(|w| w[0] == "--allowed-ledger")
            .map(|w| w[1].to_string())
            .collect()
    };
    assert!(flags(&documents(&render(&[]))).is_empty());
    let entries = [
        "s3://jobgate-ledgers/jobgate/{namespace}/",
        "s3://shared-bucket/shared/",
    ];
    let set = format!("allowedLedgers={}", serde_json::json!(entries));
    let docs = documents(&render(&["--set-json", &set]));
    assert_eq!(flags(&docs), entries);
    let msg = render_error(&["--set-json", r#"allowedLedgers=["jobgate/{namespace}/"]"#]);
    assert!(
        msg.contains("/allowedLedgers/0") && msg.contains("pattern"),
        "{msg}"
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
    let out = cp.kubectl_stdin(&["apply", "-f", "-"], CERT_MANAGER_CRDS);
    assert!(out.status.success(), "{}", text(&out));
    for crd in [
        "crd/certificates.cert-manager.io",
        "crd/issuers.cert-manager.io",
    ] {
        let out = cp.kubectl(&["wait", "--for=condition=established", "--timeout=60s", crd]);
        assert!(out.status.success(), "{}", text(&out));
    }
    for ns in std::iter::once(NAMESPACE).chain(PRODUCTION_NAMESPACES) {
        let out = cp.kubectl(&["create", "namespace", ns]);
        assert!(out.status.success(), "{}", text(&out));
    }

    for extra in [
        &[][..],
        PRODUCTION,
        &["--set", CUSTOM][..],
        &["--set", CERT_MANAGER][..],
        &[
            "--set",
            CERT_MANAGER,
            "--set",
            "webhook.certManager.issuerRef.name=ca,webhook.certManager.issuerRef.kind=ClusterIssuer",
        ][..],
        &["--set", HOST_NETWORK][..],
        &[
            "--set",
            HOST_NETWORK,
            "--set",
            "webhook.url=https://127.0.0.2:9443/mutate-jobs",
        ][..],
        &["--set", "webhook.enabled=false"][..],
    ] {
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
        &["--set", CERT_MANAGER][..],
        &["--set", HOST_NETWORK][..],
        &["--set", "webhook.url=https://127.0.0.2:9443/mutate-jobs"][..],
        &["--set-json", r#"allowedLedgers=["s3://b-1/x/"]"#][..],
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

/// The webhook by default: labelled Jobs created suspended, TLS from the
/// controller itself, which may touch only its own Secret and webhook
/// configuration.
#[test]
fn the_webhook_suspends_labelled_jobs_with_the_controllers_own_tls() {
    let docs = documents(&render(&[]));
    let config = only(&docs, "MutatingWebhookConfiguration");
    assert_eq!(config["metadata"]["name"], "jobgate");
    // cert-manager's cainjector would fight the controller over caBundle.
    assert!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"].is_null(),
        "{config:?}"
    );
    let webhooks = config["webhooks"].as_sequence().unwrap();
    assert_eq!(webhooks.len(), 1);
    let w = &webhooks[0];
    assert_eq!(w["name"], "suspend.jobs.jobgate.dev");
    assert_eq!(strings(&w["admissionReviewVersions"]), ["v1"]);
    assert_eq!(w["sideEffects"], "None");
    assert_eq!(w["failurePolicy"], "Fail");
    assert_eq!(w["timeoutSeconds"], 5);
    assert_eq!(w["matchPolicy"], "Equivalent");
    // Only labelled Jobs reach jobgate: with Fail, jobgate being down must
    // not block anyone else's Jobs.
    let selector = &w["objectSelector"]["matchExpressions"][0];
    assert_eq!(selector["key"], "jobgate.dev/group");
    assert_eq!(selector["operator"], "Exists");
    assert!(w["namespaceSelector"].is_null(), "{w:?}");
    let on = &w["rules"][0];
    assert_eq!(strings(&on["apiGroups"]), ["batch"]);
    assert_eq!(strings(&on["apiVersions"]), ["v1"]);
    assert_eq!(strings(&on["operations"]), ["CREATE", "UPDATE"]);
    assert_eq!(strings(&on["resources"]), ["jobs"]);
    // Updates reach it only when they would resume a Job, and never from
    // the controller itself (the API server compiles these: see
    // the_api_server_accepts_the_crd_and_every_rendered_object).
    let conditions = w["matchConditions"].as_sequence().unwrap();
    assert_eq!(conditions.len(), 2, "{conditions:?}");
    assert_eq!(conditions[0]["name"], "create-or-resume");
    assert_eq!(conditions[1]["name"], "not-the-controllers-resume");
    assert_eq!(
        conditions[1]["expression"],
        format!(
            "request.operation != 'UPDATE' || request.userInfo.username != 'system:serviceaccount:{NAMESPACE}:jobgate'"
        )
    );
    let service = &w["clientConfig"]["service"];
    assert_eq!(service["name"], "jobgate-webhook");
    assert_eq!(service["namespace"], NAMESPACE);
    assert_eq!(service["path"], "/mutate-jobs");
    assert_eq!(service["port"], 443);
    // The controller fills caBundle; the chart must not set it, or every
    // upgrade would reset it.
    assert!(w["clientConfig"]["caBundle"].is_null(), "{w:?}");

    // The Service sends 443 to the container's webhook port, on the pods
    // of this release.
    let svc = named(&docs, "Service", "jobgate-webhook");
    assert_eq!(svc["spec"]["ports"][0]["port"], 443);
    assert_eq!(svc["spec"]["ports"][0]["targetPort"], "webhook");
    assert_eq!(
        svc["spec"]["selector"],
        only(&docs, "Deployment")["spec"]["selector"]["matchLabels"]
    );
    let c = container(&docs);
    let port = c["ports"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|p| p["name"] == "webhook")
        .expect("a webhook container port");
    assert_eq!(port["containerPort"], 9443);
    assert!(c["volumeMounts"].is_null(), "{c:?}");

    // The Secret exists empty, so Helm owns it (uninstall deletes it) and
    // no upgrade overwrites what the controller wrote.
    let secret = named(&docs, "Secret", "jobgate-webhook-tls");
    assert_eq!(secret["type"], "Opaque");
    assert!(secret["data"].is_null() && secret["stringData"].is_null());
    let args = strings(&c["args"]);
    assert_eq!(
        flag_value(&args, "--webhook-secret"),
        Some("jobgate-webhook-tls")
    );
    assert_eq!(
        flag_value(&args, "--webhook-service"),
        Some("jobgate-webhook")
    );
    assert_eq!(
        flag_value(&args, "--webhook-configuration"),
        Some("jobgate")
    );
    assert!(!args.contains(&"--webhook-cert-dir"), "{args:?}");

    // RBAC for exactly those two objects.
    let role = named(&docs, "Role", "jobgate-webhook");
    assert_eq!(role["metadata"]["namespace"], NAMESPACE);
    let rules = role["rules"].as_sequence().unwrap();
    assert_eq!(rules.len(), 1);
    assert_eq!(strings(&rules[0]["resources"]), ["secrets"]);
    assert_eq!(strings(&rules[0]["resourceNames"]), ["jobgate-webhook-tls"]);
    assert_eq!(strings(&rules[0]["verbs"]), ["get", "update"]);
    let binding = named(&docs, "RoleBinding", "jobgate-webhook");
    assert_eq!(binding["roleRef"]["name"], "jobgate-webhook");
    assert_eq!(binding["subjects"][0]["name"], "jobgate");
    let configs = rule(
        &docs,
        "admissionregistration.k8s.io",
        "mutatingwebhookconfigurations",
    )
    .expect("a mutatingwebhookconfigurations rule");
    assert_eq!(strings(&configs["resourceNames"]), ["jobgate"]);
    assert_eq!(strings(&configs["verbs"]), ["get", "patch"]);

    // Values reach the webhook.
    let docs = documents(&render(&[
        "--set",
        "webhook.failurePolicy=Ignore,webhook.timeoutSeconds=10,webhook.port=10443",
    ]));
    let w = &only(&docs, "MutatingWebhookConfiguration")["webhooks"][0];
    assert_eq!(w["failurePolicy"], "Ignore");
    assert_eq!(w["timeoutSeconds"], 10);
    let args = strings(&container(&docs)["args"]);
    assert_eq!(flag_value(&args, "--webhook-listen"), Some("0.0.0.0:10443"));
}

#[test]
fn cert_manager_mode_issues_the_certificate_and_mounts_it() {
    let docs = documents(&render(&["--set", CERT_MANAGER]));
    let mut got = kinds(&docs);
    got.sort();
    assert_eq!(
        got,
        [
            "Certificate",
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Issuer",
            "Lease",
            "MutatingWebhookConfiguration",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "Service",
            "ServiceAccount"
        ]
    );
    // No self-managed TLS: no empty Secret, no rights on it or on the
    // webhook configuration (the cainjector keeps caBundle).
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "jobgate-webhook"
                && (d["kind"] == "Role" || d["kind"] == "RoleBinding")),
        "{got:?}"
    );
    assert!(
        rule(
            &docs,
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations"
        )
        .is_none()
    );

    let issuer = only(&docs, "Issuer");
    assert_eq!(issuer["metadata"]["name"], "jobgate-selfsigned");
    assert!(issuer["spec"]["selfSigned"].is_mapping(), "{issuer:?}");
    let cert = only(&docs, "Certificate");
    assert_eq!(cert["metadata"]["name"], "jobgate-webhook");
    assert_eq!(cert["metadata"]["namespace"], NAMESPACE);
    assert_eq!(cert["spec"]["secretName"], "jobgate-webhook-cert");
    assert_eq!(
        strings(&cert["spec"]["dnsNames"]),
        [
            "jobgate-webhook",
            "jobgate-webhook.jobgate",
            "jobgate-webhook.jobgate.svc",
            "jobgate-webhook.jobgate.svc.cluster.local"
        ]
    );
    assert_eq!(cert["spec"]["issuerRef"]["name"], "jobgate-selfsigned");
    assert_eq!(cert["spec"]["issuerRef"]["kind"], "Issuer");
    let config = only(&docs, "MutatingWebhookConfiguration");
    assert_eq!(
        config["metadata"]["annotations"]["cert-manager.io/inject-ca-from"],
        "jobgate/jobgate-webhook"
    );

    // The Certificate's Secret is mounted where --webhook-cert-dir points,
    // as a whole directory so renewals reach the files.
    let c = container(&docs);
    let args = strings(&c["args"]);
    let dir = flag_value(&args, "--webhook-cert-dir").expect("--webhook-cert-dir");
    assert!(
        !args.iter().any(|a| [
            "--webhook-secret",
            "--webhook-service",
            "--webhook-configuration"
        ]
        .contains(a)),
        "{args:?}"
    );
    let mount = &c["volumeMounts"][0];
    assert_eq!(mount["mountPath"], dir);
    assert_eq!(mount["readOnly"], true);
    assert!(mount["subPath"].is_null(), "{mount:?}");
    let volume = &pod(&docs)["volumes"][0];
    assert_eq!(volume["name"], mount["name"]);
    assert_eq!(volume["secret"]["secretName"], "jobgate-webhook-cert");

    // A given issuer replaces the chart's self-signed one.
    let docs = documents(&render(&[
        "--set",
        CERT_MANAGER,
        "--set",
        "webhook.certManager.issuerRef.name=ca,webhook.certManager.issuerRef.kind=ClusterIssuer",
    ]));
    assert!(!kinds(&docs).contains(&"Issuer"), "{:?}", kinds(&docs));
    let issuer_ref = &only(&docs, "Certificate")["spec"]["issuerRef"];
    assert_eq!(issuer_ref["name"], "ca");
    assert_eq!(issuer_ref["kind"], "ClusterIssuer");
}

#[test]
fn host_network_listens_on_the_pod_ip() {
    let docs = documents(&render(&["--set", HOST_NETWORK]));
    let spec = pod(&docs);
    assert_eq!(spec["hostNetwork"], true);
    assert_eq!(spec["dnsPolicy"], "ClusterFirstWithHostNet");
    let c = container(&docs);
    assert_eq!(
        env_var(c, "POD_IP")["valueFrom"]["fieldRef"]["fieldPath"],
        "status.podIP"
    );
    let args = strings(&c["args"]);
    assert_eq!(flag_value(&args, "--listen"), Some("$(POD_IP):8080"));
    assert_eq!(
        flag_value(&args, "--webhook-listen"),
        Some("$(POD_IP):9443")
    );

    // Not by default: 0.0.0.0 and no POD_IP.
    let docs = documents(&render(&[]));
    assert!(pod(&docs)["hostNetwork"].is_null());
    let c = container(&docs);
    assert!(
        c["env"]
            .as_sequence()
            .unwrap()
            .iter()
            .all(|e| e["name"] != "POD_IP")
    );
}

/// With `webhook.url` the API server checks the controller's certificate
/// against the URL's host, so the chart passes that host (without port or
/// IPv6 brackets) as a certificate name; `extraHosts` add names beyond it.
#[test]
fn webhook_url_puts_its_host_into_the_controllers_certificate() {
    for (url, host) in [
        ("https://127.0.0.2:9443/mutate-jobs", "127.0.0.2"),
        (
            "https://jobgate.example.com/mutate-jobs",
            "jobgate.example.com",
        ),
        ("https://[fd00::5]:9443/mutate-jobs", "fd00::5"),
        ("https://[::1]/mutate-jobs", "::1"),
    ] {
        let docs = documents(&render(&[
            "--set",
            &format!("webhook.url={url}"),
            "--set",
            "webhook.extraHosts={10.0.0.9}",
        ]));
        let args = strings(&container(&docs)["args"]);
        let hosts: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "--webhook-host")
            .map(|w| w[1])
            .collect();
        assert_eq!(hosts, [host, "10.0.0.9"], "{url}: {args:?}");
        let w = &only(&docs, "MutatingWebhookConfiguration")["webhooks"][0];
        assert_eq!(w["clientConfig"]["url"], url);
        assert!(w["clientConfig"]["service"].is_null(), "{w:?}");
    }
    // Without a URL only the listed names.
    let docs = documents(&render(&["--set", "webhook.extraHosts={10.0.0.9}"]));
    let args = strings(&container(&docs)["args"]);
    assert_eq!(flag_value(&args, "--webhook-host"), Some("10.0.0.9"));
    assert_eq!(args.iter().filter(|a| **a == "--webhook-host").count(), 1);
    let docs = documents(&render(&[]));
    let args = strings(&container(&docs)["args"]);
    assert!(!args.contains(&"--webhook-host"), "{args:?}");
}

/// cert-manager's Certificate carries only the Service's names, so with a
/// URL the API server would refuse the certificate: the chart says so
/// instead of rendering a webhook that cannot work.
#[test]
fn cert_manager_with_a_webhook_url_is_refused() {
    let msg = render_error(&[
        "--set",
        CERT_MANAGER,
        "--set",
        "webhook.url=https://127.0.0.2:9443/mutate-jobs",
    ]);
    assert!(
        msg.contains(
            "webhook.url cannot be combined with webhook.certManager.enabled=true: \
             cert-manager's Certificate carries only the webhook Service's names"
        ),
        "{msg}"
    );
    assert!(
        !msg.contains("values don't meet the specifications of the schema"),
        "{msg}"
    );
}

#[test]
fn webhook_disabled_renders_no_webhook() {
    let docs = documents(&render(&["--set", "webhook.enabled=false"]));
    let mut got = kinds(&docs);
    got.sort();
    assert_eq!(
        got,
        [
            "ClusterRole",
            "ClusterRoleBinding",
            "Deployment",
            "Lease",
            "PodDisruptionBudget",
            "Role",
            "RoleBinding",
            "Service",
            "ServiceAccount"
        ]
    );
    let c = container(&docs);
    let args = strings(&c["args"]);
    assert!(
        !args.iter().any(|a| a.starts_with("--webhook-")),
        "{args:?}"
    );
    assert_eq!(c["ports"].as_sequence().unwrap().len(), 1);
    assert!(
        rule(
            &docs,
            "admissionregistration.k8s.io",
            "mutatingwebhookconfigurations"
        )
        .is_none()
    );
}

#[test]
fn the_schema_refuses_bad_values_and_accepts_the_defaults() {
    for (set, path, why) in [
        ("replicaCount=two", "/replicaCount", "want integer"),
        (
            "webhook.failurePolicy=Maybe",
            "/webhook/failurePolicy",
            "'Fail', 'Ignore'",
        ),
        ("logFormat=xml", "/logFormat", "'json', 'text'"),
        (
            "webhook.timeoutSeconds=60",
            "/webhook/timeoutSeconds",
            "maximum",
        ),
        ("pollWaiting=soon", "/pollWaiting", "pattern"),
        ("image.pullPolicy=Sometimes", "/image/pullPolicy", "one of"),
        // Misspelt keys would otherwise be ignored in silence.
        ("replicaCuont=3", "additional properties 'replicaCuont'", ""),
        ("webhook.timeoutSecond=5", "/webhook", "'timeoutSecond'"),
        (
            "webhook.certManager.enabeld=true",
            "/webhook/certManager",
            "'enabeld'",
        ),
        (
            "webhook.certManager.issuerRef.kind=ClusterIssuer",
            "/webhook/certManager/issuerRef",
            "'name' required",
        ),
    ] {
        let msg = render_error(&["--set", set]);
        assert!(
            msg.contains("values don't meet the specifications of the schema"),
            "{set}: {msg}"
        );
        assert!(msg.contains(path) && msg.contains(why), "{set}: {msg}");
    }
    // The defaults, and each mode, pass (render panics otherwise).
    for extra in [
        &[][..],
        &["--set", CUSTOM][..],
        &["--set", CERT_MANAGER][..],
        &["--set", HOST_NETWORK][..],
    ] {
        render(extra);
    }
}

/// Every key in values.yaml is in values.schema.json, so none escapes
/// validation; objects the schema leaves open (Kubernetes objects passed
/// through whole) end the walk.
#[test]
fn the_schema_describes_every_value() {
    let schema: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(format!("{CHART}/values.schema.json")).unwrap(),
    )
    .unwrap();
    let resolve = |node: &serde_json::Value| -> serde_json::Value {
        match node["$ref"].as_str() {
            Some(r) => {
                let name = r.strip_prefix("#/definitions/").expect("local $ref");
                schema["definitions"][name].clone()
            }
            None => node.clone(),
        }
    };
    fn walk(
        value: &Value,
        node: &serde_json::Value,
        path: &str,
        resolve: &dyn Fn(&serde_json::Value) -> serde_json::Value,
    ) {
        let Some(map) = value.as_mapping() else {
            return;
        };
        let Some(props) = node["properties"].as_object() else {
            assert!(
                node["additionalProperties"] != false,
                "{path}: closed schema object without properties"
            );
            return;
        };
        for (k, v) in map {
            let k = k.as_str().unwrap();
            let child = props
                .get(k)
                .unwrap_or_else(|| panic!("values.schema.json lacks {path}{k}"));
            walk(v, &resolve(child), &format!("{path}{k}."), resolve);
        }
    }
    assert_eq!(schema["additionalProperties"], false);
    walk(&values_yaml(), &schema, "", &resolve);
}

fn values_yaml() -> Value {
    serde_yaml::from_str(&std::fs::read_to_string(format!("{CHART}/values.yaml")).unwrap()).unwrap()
}

/// Every key path of `value` with its value, and whether it is a leaf:
/// mappings are descended into, everything else (scalars, lists, empty
/// mappings) is a leaf.
fn key_paths(value: &Value, prefix: &str, out: &mut Vec<(String, Value, bool)>) {
    let Some(map) = value.as_mapping() else {
        return;
    };
    for (k, v) in map {
        let path = format!("{prefix}{}", k.as_str().unwrap());
        let leaf = v.as_mapping().is_none_or(|m| m.is_empty());
        out.push((path.clone(), v.clone(), leaf));
        key_paths(v, &format!("{path}."), out);
    }
}

/// The first `code span` of a Markdown table cell.
fn code_span(cell: &str) -> Option<&str> {
    let start = cell.find('`')? + 1;
    let len = cell[start..].find('`')?;
    Some(&cell[start..start + len])
}

/// The Values table of charts/jobgate/README.md and values.yaml agree:
/// each leaf of values.yaml has a row (its own, or its parent's for a
/// Kubernetes object passed through whole, like `resources`), each row is a
/// key of values.yaml, and a scalar or empty default is the one in the file.
#[test]
fn the_readme_table_lists_every_value_with_its_default() {
    let readme = std::fs::read_to_string(format!("{CHART}/README.md")).unwrap();
    let section = readme
        .split("\n## Values\n")
        .nth(1)
        .expect("a ## Values section in charts/jobgate/README.md");
    let section = section.split("\n## ").next().unwrap();
    let mut rows: Vec<(String, String)> = Vec::new();
    for line in section.lines().filter(|l| l.starts_with("| `")) {
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        assert!(cells.len() >= 4, "a row with key, default, meaning: {line}");
        let key = code_span(cells[1]).unwrap_or_else(|| panic!("no key in {line}"));
        assert_eq!(
            cells[1],
            format!("`{key}`"),
            "one key per row, for the check to see it: {line}"
        );
        assert!(
            !rows.iter().any(|(k, _)| k == key),
            "{key} has two rows in the README"
        );
        rows.push((key.to_string(), cells[2].to_string()));
    }
    assert!(!rows.is_empty(), "no rows in the README's Values table");

    let mut paths = Vec::new();
    key_paths(&values_yaml(), "", &mut paths);
    for (path, _, leaf) in &paths {
        if !leaf {
            continue;
        }
        let documented = rows
            .iter()
            .any(|(k, _)| path == k || path.starts_with(&format!("{k}.")));
        assert!(
            documented,
            "values.yaml has {path}, which the README's Values table lacks"
        );
    }
    for (key, default) in &rows {
        let Some((_, value, _)) = paths.iter().find(|(p, _, _)| p == key) else {
            panic!("the README's Values table has {key}, which values.yaml lacks");
        };
        let want = match value {
            Value::String(s) => s.clone(),
            Value::Bool(b) => b.to_string(),
            Value::Number(n) => n.to_string(),
            Value::Sequence(s) if s.is_empty() => "[]".to_string(),
            Value::Mapping(m) if m.is_empty() => "{}".to_string(),
            // Whole objects are described in words.
            _ => continue,
        };
        let got = code_span(default)
            .unwrap_or_else(|| panic!("{key}: no `default` in the README: {default}"));
        let got = got
            .strip_prefix('"')
            .and_then(|g| g.strip_suffix('"'))
            .unwrap_or(got);
        assert_eq!(got, want, "{key}: README default vs values.yaml");
    }
}
