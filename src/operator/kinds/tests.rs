use super::*;

fn object(value: Value) -> DynamicObject {
    serde_json::from_value(value).unwrap()
}

fn jobset(spec: Value, status: Value) -> DynamicObject {
    object(json!({
        "apiVersion": "jobset.x-k8s.io/v1alpha2", "kind": "JobSet",
        "metadata": {"name": "train", "namespace": "team", "uid": "u1",
                     "creationTimestamp": "2026-12-01T00:00:00Z",
                     "annotations": {"jobgate.dev/priority": "4"}},
        "spec": spec, "status": status,
    }))
}

#[test]
fn a_jobset_is_held_by_spec_suspend_and_finished_by_its_conditions() {
    let kind = builtin("JobSet").unwrap();
    kind.validate().unwrap();
    let held = jobset(json!({"suspend": true}), json!({}));
    assert!(kind.is_suspended(&held));
    assert!(!kind.is_finished(&held));
    let view = kind.view(&held).unwrap();
    assert_eq!(
        (
            view.uid.as_str(),
            view.priority,
            view.slots,
            view.suspended,
            view.grace_seconds
        ),
        ("u1", 4, 1, true, 30)
    );
    let done = jobset(
        json!({"suspend": false}),
        json!({"conditions": [{"type": "Completed", "status": "True"}]}),
    );
    assert!(kind.is_finished(&done) && !kind.is_suspended(&done));
    let not_yet = jobset(
        json!({}),
        json!({"conditions": [{"type": "Completed", "status": "False"}]}),
    );
    assert!(!kind.is_finished(&not_yet));
    assert_eq!(
        kind.suspend_patch(false),
        json!({"spec": {"suspend": false}})
    );
    assert_eq!(kind.suspend_pointer(), "/spec/suspend");
    assert_eq!(
        kind.pod_keys(&held),
        [("jobset.sigs.k8s.io/jobset-uid", Some("u1".to_string()))]
    );
}

#[test]
fn a_workflow_is_finished_by_its_phase_and_its_pods_carry_its_name() {
    let kind = builtin("workflow").unwrap();
    let wf = |phase: &str| {
        object(json!({
            "apiVersion": "argoproj.io/v1alpha1", "kind": "Workflow",
            "metadata": {"name": "pipe", "uid": "w1"},
            "spec": {"suspend": true}, "status": {"phase": phase},
        }))
    };
    assert!(!kind.is_finished(&wf("Running")));
    for phase in ["Succeeded", "Failed", "Error"] {
        assert!(kind.is_finished(&wf(phase)), "{phase}");
    }
    assert_eq!(
        kind.pod_keys(&wf("Running")),
        [("workflows.argoproj.io/workflow", Some("pipe".to_string()))]
    );
}

#[test]
fn a_deleted_workload_is_finished_whatever_its_status() {
    let kind = builtin("rayjob").unwrap();
    let mut ray = object(json!({"metadata": {"name": "r", "uid": "r1"}, "spec": {}}));
    assert!(!kind.is_finished(&ray));
    ray.metadata.deletion_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        "2026-12-01T00:00:00Z".parse().unwrap(),
    ));
    assert!(kind.is_finished(&ray));
}

#[test]
fn a_pending_value_holds_it_and_removing_the_field_lets_it_run() {
    let yaml = r#"
- group: tekton.dev
  version: v1
  kind: PipelineRun
  plural: pipelineruns
  suspend: {path: spec.status, heldValue: PipelineRunPending}
  finished: {conditions: [Succeeded]}
  pods: {label: tekton.dev/pipelineRun, value: name}
  units: {constant: 2}
  gracePeriodPath: spec.taskRunTemplate.podTemplate.terminationGracePeriodSeconds
"#;
    let kinds = parse(&["kinds.yaml".into()], |_| Ok(yaml.into()))
        .unwrap()
        .kinds;
    let kind = &kinds[0];
    assert_eq!(kind.id(), "PipelineRun.tekton.dev");
    let run = |status: Value| {
        object(
            json!({"metadata": {"name": "p", "uid": "p1"}, "spec": {"status": status,
            "taskRunTemplate": {"podTemplate": {"terminationGracePeriodSeconds": 90}}}}),
        )
    };
    assert!(kind.is_suspended(&run(json!("PipelineRunPending"))));
    assert!(!kind.is_suspended(&run(Value::Null)));
    assert_eq!(
        kind.suspend_patch(true),
        json!({"spec": {"status": "PipelineRunPending"}})
    );
    assert_eq!(kind.suspend_patch(false), json!({"spec": {"status": null}}));
    assert_eq!(kind.held(), json!("PipelineRunPending"));
    let view = kind.view(&run(Value::Null)).unwrap();
    assert_eq!((view.slots, view.grace_seconds), (2, 90));
}

#[test]
fn units_come_from_a_path_and_a_bad_value_is_zero_which_the_plan_refuses() {
    let mut kind = builtin("jobset").unwrap();
    kind.units = Some(Units {
        constant: None,
        path: Some("spec.replicatedJobs.0.replicas".into()),
    });
    kind.validate().unwrap();
    let with = |replicas: Value| {
        object(json!({"metadata": {"name": "j", "uid": "j1"},
            "spec": {"replicatedJobs": [{"replicas": replicas}]}}))
    };
    assert_eq!(kind.view(&with(json!(3))).unwrap().slots, 3);
    assert_eq!(kind.view(&with(json!("three"))).unwrap().slots, 0);
    let annotated = object(json!({"metadata": {"name": "j", "uid": "j1",
        "annotations": {"jobgate.dev/slots": "x"}}}));
    assert_eq!(
        builtin("jobset").unwrap().view(&annotated).unwrap().slots,
        0
    );
}

#[test]
fn what_cannot_work_is_refused_in_one_sentence_naming_the_field() {
    let read = |text: &'static str| move |_: &str| Ok::<_, std::io::Error>(text.to_string());
    let base = "- {group: x.io, version: v1, kind: Thing, plural: things, suspend: {path: spec.suspend}, pods: {label: x.io/owner}";
    let cases = [
        (format!("{base}, finished: {{}}}}"), "finished needs either"),
        (
            format!("{base}, finished: {{conditions: [Done], path: status.phase, values: [Done]}}}}"),
            "finished needs either",
        ),
        (
            format!("{base}, finished: {{conditions: [Done]}}, units: {{constant: 0}}}}"),
            "units needs",
        ),
        (
            "- {group: batch, version: v1, kind: Job, plural: jobs, suspend: {path: spec.suspend}, finished: {conditions: [Complete]}, pods: {label: a}}".to_string(),
            "always gated",
        ),
        (
            "- {group: x.io, version: v1, kind: Thing, plural: things, suspend: {path: spec..suspend}, finished: {conditions: [Done]}, pods: {label: a}}".to_string(),
            "suspend.path",
        ),
        (format!("{base}, finished: {{conditions: [Done]}}, colour: red}}"), "unknown field"),
    ];
    for (text, want) in cases {
        let text: &'static str = Box::leak(text.into_boxed_str());
        let err = parse(&["k.yaml".into()], read(text)).unwrap_err();
        assert!(err.contains(want), "{err}");
        assert!(!err.contains('\n'), "{err}");
    }
    let err = parse(&["jobsets".into()], read("")).unwrap_err();
    assert!(err.contains("jobset, workflow, rayjob, pod"), "{err}");
    let err = parse(&["jobset,JobSet".into()], read("")).unwrap_err();
    assert!(err.contains("named twice"), "{err}");
    let err = parse(&["/nowhere/k.yaml".into()], |_| {
        Err(std::io::Error::other("gone"))
    })
    .unwrap_err();
    assert!(
        err.starts_with("cannot read the workload kinds file /nowhere/k.yaml"),
        "{err}"
    );
}

#[test]
fn built_in_names_and_files_combine() {
    let yaml = "- {group: x.io, version: v1, kind: Thing, plural: things, suspend: {path: spec.hold}, finished: {conditions: [Done]}, pods: {label: x.io/owner}}";
    let entries = ["jobset, workflow".into(), "./k.yaml".into(), "Pod".into()];
    let gated = parse(&entries, |_| Ok(yaml.into())).unwrap();
    assert!(gated.pods);
    let kinds = gated.kinds;
    let ids: Vec<String> = kinds.iter().map(KindSpec::id).collect();
    assert_eq!(
        ids,
        [
            "JobSet.jobset.x-k8s.io",
            "Workflow.argoproj.io",
            "Thing.x.io"
        ]
    );
    let ar = kinds[2].api_resource();
    assert_eq!(
        (ar.api_version.as_str(), ar.plural.as_str()),
        ("x.io/v1", "things")
    );
}

#[test]
fn a_jobsets_grace_period_is_the_longest_of_its_replicated_jobs_pods() {
    let kind = builtin("jobset").unwrap();
    let with = |graces: Value| {
        let jobs: Vec<Value> = graces
            .as_array()
            .unwrap()
            .iter()
            .map(|g| match g {
                Value::Null => json!({"template": {"spec": {"template": {"spec": {}}}}}),
                g => json!({"template": {"spec": {"template": {"spec": {"terminationGracePeriodSeconds": g}}}}}),
            })
            .collect();
        object(json!({"metadata": {"name": "s", "uid": "s1"}, "spec": {"replicatedJobs": jobs}}))
    };
    assert_eq!(
        kind.view(&with(json!([5, 90, 1]))).unwrap().grace_seconds,
        90
    );
    // One that sets none takes Kubernetes' 30.
    assert_eq!(
        kind.view(&with(json!([5, null]))).unwrap().grace_seconds,
        30
    );
    assert_eq!(kind.view(&with(json!([2]))).unwrap().grace_seconds, 2);
}

#[test]
fn a_rayjobs_pods_are_its_clusters_and_its_submitters() {
    let kind = builtin("rayjob").unwrap();
    kind.validate().unwrap();
    let ray = object(json!({
        "metadata": {"name": "train", "uid": "r1"},
        "spec": {"submitterPodTemplate": {"spec": {"terminationGracePeriodSeconds": 5}}, "rayClusterSpec": {
            "headGroupSpec": {"template": {"spec": {"terminationGracePeriodSeconds": 10}}},
            "workerGroupSpecs": [{"template": {"spec": {"terminationGracePeriodSeconds": 45}}},
                                 {"template": {"spec": {}}}]}},
        "status": {"rayClusterName": "train-x7k2p"},
    }));
    assert_eq!(
        kind.pod_keys(&ray),
        [
            ("ray.io/cluster", Some("train-x7k2p".to_string())),
            ("batch.kubernetes.io/job-name", Some("train".to_string())),
        ]
    );
    // The longest of the head's and the workers' (one of them unset: 30).
    assert_eq!(kind.view(&ray).unwrap().grace_seconds, 45);
    // Before it has a cluster, only its submitter's pods can be named.
    let fresh = object(json!({"metadata": {"name": "train", "uid": "r1"}, "spec": {}}));
    assert_eq!(kind.pod_keys(&fresh)[0], ("ray.io/cluster", None));
}

#[test]
fn one_pod_link_or_a_list_and_a_path_link_needs_its_path() {
    let one = "- {group: x.io, version: v1, kind: T, plural: ts, suspend: {path: spec.s}, finished: {conditions: [D]}, pods: {label: a}}";
    let many = "- {group: x.io, version: v1, kind: T, plural: ts, suspend: {path: spec.s}, finished: {conditions: [D]}, pods: [{label: a, value: name}, {label: b, value: path, path: status.c}]}";
    assert_eq!(
        parse(&["k.yaml".into()], |_| Ok(one.into())).unwrap().kinds[0]
            .pods
            .len(),
        1
    );
    assert_eq!(
        parse(&["k.yaml".into()], |_| Ok(many.into()))
            .unwrap()
            .kinds[0]
            .pods
            .len(),
        2
    );
    let pathless = "- {group: x.io, version: v1, kind: T, plural: ts, suspend: {path: spec.s}, finished: {conditions: [D]}, pods: {label: a, value: path}}";
    let err = parse(&["k.yaml".into()], |_| Ok(pathless.into())).unwrap_err();
    assert!(err.contains("value: path needs the path"), "{err}");
}
