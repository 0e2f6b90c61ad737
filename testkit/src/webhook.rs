//! The Job webhook as tests register it: a configuration that calls a
//! `jobgate controller` process on loopback (the chart's Service-based one
//! is checked in tests/suite/helm_chart.rs), with the chart's rules and
//! match conditions.

use std::time::Duration;

use crate::k8s::ControlPlane;
use crate::operator::{ControllerProcess, eventually};

/// Where the webhook is registered and who it leaves alone.
pub struct Registration<'a> {
    /// The MutatingWebhookConfiguration's name.
    pub name: &'a str,
    /// The controller's webhook port on 127.0.0.1.
    pub port: u16,
    pub failure_policy: &'a str,
    /// Only Jobs of this namespace (the chart's `watchNamespace`); a test
    /// on a shared control plane names its own.
    pub namespace: Option<&'a str>,
    /// The controller's user name, whose updates the chart keeps from the
    /// webhook; `None` sends them too, so that the webhook's own check of
    /// who resumes is what is tested. (Creations are sent whoever makes
    /// them: here the test and kube-controller-manager use the same admin
    /// user as the controller.)
    pub controller_user: Option<&'a str>,
    /// Other kinds held back, as (API group, plural): a second webhook of
    /// the same configuration sends their creations and updates.
    pub kinds: &'a [(&'a str, &'a str)],
}

impl Registration<'_> {
    /// The configuration's YAML, for `kubectl apply`.
    pub fn yaml(&self) -> String {
        let Registration {
            name,
            port,
            failure_policy,
            ..
        } = self;
        let namespaces = self
            .namespace
            .map(|ns| {
                format!(
                    "    namespaceSelector:\n      matchExpressions:\n        - {{key: kubernetes.io/metadata.name, operator: In, values: [{ns}]}}\n"
                )
            })
            .unwrap_or_default();
        let not_controller = self
            .controller_user
            .map(|user| {
                format!(
                    "      - name: not-the-controllers-resume\n        expression: \"request.operation != 'UPDATE' || request.userInfo.username != '{user}'\"\n"
                )
            })
            .unwrap_or_default();
        format!(
            r#"apiVersion: admissionregistration.k8s.io/v1
kind: MutatingWebhookConfiguration
metadata:
  name: {name}
webhooks:
  - name: suspend.jobs.jobgate.dev
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: {failure_policy}
    timeoutSeconds: 5
    matchPolicy: Equivalent
    objectSelector:
      matchExpressions:
        - {{key: jobgate.dev/group, operator: Exists}}
{namespaces}    rules:
      - apiGroups: ["batch"]
        apiVersions: ["v1"]
        operations: ["CREATE", "UPDATE"]
        resources: ["jobs"]
        scope: Namespaced
    matchConditions:
      - name: create-or-resume
        expression: >-
          request.operation == 'CREATE' ||
          ((has(oldObject.spec.suspend) && oldObject.spec.suspend) &&
          !(has(object.spec.suspend) && object.spec.suspend))
{not_controller}    clientConfig:
      url: https://127.0.0.1:{port}/mutate-jobs
{kinds}"#,
            kinds = self.kinds_webhook(&namespaces),
        )
    }

    /// The webhook entry for the other kinds, if any: every creation and
    /// update of a labelled object of theirs but the controller's own.
    fn kinds_webhook(&self, namespaces: &str) -> String {
        if self.kinds.is_empty() {
            return String::new();
        }
        let (port, failure_policy) = (self.port, self.failure_policy);
        let rules: String = self
            .kinds
            .iter()
            .map(|(group, plural)| {
                format!(
                    "      - {{apiGroups: [\"{group}\"], apiVersions: [\"*\"], operations: [CREATE, UPDATE], resources: [{plural}], scope: Namespaced}}\n"
                )
            })
            .collect();
        let not_controller = self
            .controller_user
            .map(|user| {
                format!(
                    "    matchConditions:\n      - name: not-the-controllers-resume\n        expression: \"request.operation != 'UPDATE' || request.userInfo.username != '{user}'\"\n"
                )
            })
            .unwrap_or_default();
        format!(
            r#"  - name: suspend.workloads.jobgate.dev
    admissionReviewVersions: ["v1"]
    sideEffects: None
    failurePolicy: {failure_policy}
    timeoutSeconds: 5
    matchPolicy: Equivalent
    objectSelector:
      matchExpressions:
        - {{key: jobgate.dev/group, operator: Exists}}
        - {{key: batch.kubernetes.io/controller-uid, operator: DoesNotExist}}
{namespaces}    rules:
{rules}{not_controller}    clientConfig:
      url: https://127.0.0.1:{port}/mutate-jobs
"#
        )
    }

    /// Applies the configuration.
    pub fn apply(&self, cp: &ControlPlane) {
        let out = cp.kubectl_stdin(&["apply", "-f", "-"], &self.yaml());
        assert!(
            out.status.success(),
            "kubectl apply: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The controller's flags to serve this webhook with its own CA, kept
    /// in a Secret of `ns`.
    pub fn controller_flags(&self, ns: &str) -> Vec<String> {
        vec![
            format!("--webhook-listen=127.0.0.1:{}", self.port),
            "--webhook-host=127.0.0.1".into(),
            format!("--webhook-namespace={ns}"),
            "--webhook-secret=jobgate-webhook-tls".into(),
            format!("--webhook-configuration={}", self.name),
        ]
    }

    /// Waits until the controller has put its CA into the configuration
    /// and reports ready (which it does once the webhook serves).
    pub async fn ready(&self, cp: &ControlPlane, controller: &ControllerProcess) {
        eventually(
            Duration::from_secs(30),
            "the CA in the webhook configuration",
            || async {
                let out = cp.kubectl(&[
                    "get",
                    "mutatingwebhookconfiguration",
                    self.name,
                    "-o",
                    "jsonpath={.webhooks[0].clientConfig.caBundle}",
                ]);
                (!out.stdout.is_empty()).then_some(())
            },
        )
        .await;
        eventually(Duration::from_secs(30), "the controller ready", || async {
            use std::io::{Read, Write};
            let mut s =
                std::net::TcpStream::connect(("127.0.0.1", controller.metrics_port)).ok()?;
            s.write_all(b"GET /readyz HTTP/1.0\r\nHost: x\r\n\r\n")
                .ok()?;
            let mut out = String::new();
            s.read_to_string(&mut out).ok()?;
            (out.split_whitespace().nth(1) == Some("200")).then_some(())
        })
        .await;
    }
}

/// The user name the control plane's admin kubeconfig authenticates as
/// (what a controller started with it shows in admission requests).
pub fn admin_user(cp: &ControlPlane) -> String {
    cp.kubectl_ok(&[
        "auth",
        "whoami",
        "-o",
        "jsonpath={.status.userInfo.username}",
    ])
}
