//! The chart's `workloads` values: each kind turned on gets its flag, its
//! RBAC and its webhook rule, and nothing else does; the descriptions of
//! custom kinds reach the controller as it parses them.

use serde_yaml::Value;

use crate::chart_support::{container, documents, named, only, render, render_error, strings};

/// Every ClusterRole rule on `resource` in `group`, as (verbs).
fn verbs_on<'a>(docs: &'a [Value], group: &str, resource: &str) -> Vec<&'a str> {
    only(docs, "ClusterRole")["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .filter(|r| {
            strings(&r["apiGroups"]).contains(&group)
                && strings(&r["resources"]).contains(&resource)
        })
        .flat_map(|r| strings(&r["verbs"]))
        .collect()
}

fn workload_webhook(docs: &[Value]) -> Option<&Value> {
    only(docs, "MutatingWebhookConfiguration")["webhooks"]
        .as_sequence()
        .unwrap()
        .iter()
        .find(|w| w["name"] == "suspend.workloads.jobgate.dev")
}

#[test]
fn only_jobs_are_gated_by_default() {
    let docs = documents(&render(&[]));
    let args = strings(&container(&docs)["args"]);
    assert!(!args.contains(&"--workload-kinds"), "{args:?}");
    assert!(workload_webhook(&docs).is_none());
    assert!(verbs_on(&docs, "jobset.x-k8s.io", "jobsets").is_empty());
    // Pods are only listed, to count a Job's.
    assert_eq!(verbs_on(&docs, "", "pods"), ["list"]);
}

#[test]
fn each_kind_turned_on_gets_its_flag_rbac_and_webhook_rule() {
    let custom = "workloads.custom[0].group=example.jobgate.dev,workloads.custom[0].version=v1,\
workloads.custom[0].kind=BatchRun,workloads.custom[0].plural=batchruns,\
workloads.custom[0].suspend.path=spec.control.hold,workloads.custom[0].finished.path=status.phase,\
workloads.custom[0].finished.values[0]=Done,workloads.custom[0].pods.label=example.jobgate.dev/run,\
workloads.custom[0].pods.value=name";
    let docs = documents(&render(&[
        "--set",
        "workloads.jobSet=true,workloads.pods=true",
        "--set",
        custom,
    ]));
    let args = strings(&container(&docs)["args"]);
    let at = args
        .iter()
        .position(|a| *a == "--workload-kinds")
        .expect("--workload-kinds");
    assert_eq!(args[at + 1], "jobset,pod,/etc/jobgate/kinds/kinds.yaml");
    assert_eq!(
        verbs_on(&docs, "jobset.x-k8s.io", "jobsets"),
        ["get", "list", "watch", "patch"]
    );
    assert_eq!(
        verbs_on(&docs, "example.jobgate.dev", "batchruns"),
        ["get", "list", "watch", "patch"]
    );
    assert_eq!(
        verbs_on(&docs, "", "pods"),
        ["get", "watch", "patch", "delete", "list"]
    );
    // Kinds not turned on get nothing.
    assert!(verbs_on(&docs, "argoproj.io", "workflows").is_empty());
    assert!(verbs_on(&docs, "ray.io", "rayjobs").is_empty());

    let webhook = workload_webhook(&docs).expect("the workloads webhook");
    let resources: Vec<&str> = webhook["rules"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|r| strings(&r["resources"]))
        .collect();
    assert_eq!(resources, ["jobsets", "pods", "batchruns"]);
    // A Job's pods carry the group label too: never sent here.
    let selector = serde_yaml::to_string(&webhook["objectSelector"]).unwrap();
    assert!(
        selector.contains("batch.kubernetes.io/controller-uid")
            && selector.contains("DoesNotExist"),
        "{selector}"
    );

    // The descriptions reach the controller as it parses them.
    let config = named(&docs, "ConfigMap", "jobgate-kinds");
    let text = config["data"]["kinds.yaml"].as_str().unwrap().to_string();
    let gated = jobgate::operator::kinds::parse(&["/etc/jobgate/kinds/kinds.yaml".into()], |_| {
        Ok(text.clone())
    })
    .unwrap_or_else(|e| panic!("{e}\n{text}"));
    assert_eq!(gated.kinds[0].id(), "BatchRun.example.jobgate.dev");
}

#[test]
fn a_description_with_a_bad_path_is_refused_by_the_schema() {
    let err = render_error(&[
        "--set",
        "workloads.custom[0].group=x.io,workloads.custom[0].version=v1,workloads.custom[0].kind=T,\
workloads.custom[0].plural=ts,workloads.custom[0].suspend.path=spec..hold,\
workloads.custom[0].finished.conditions[0]=Done,workloads.custom[0].pods.label=x.io/owner",
    ]);
    assert!(err.contains("suspend/path"), "{err}");
}
