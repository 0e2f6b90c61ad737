//! `make test`: everything a contributor runs after a change, in one test
//! binary so that the crate is linked once and its tests run side by side.
//! Needs no root and no real node: SeaweedFS, kube-apiserver and, for a few
//! tests, kube-controller-manager, kube-scheduler and kwok's fake nodes, all
//! from the test bed (`scripts/testbed.sh all`). Tests that can share a
//! server take it from `jobgate_testkit::shared`, with a bucket or a
//! namespace of their own.
//!
//! Each module was a test binary of its own before; its tests keep their
//! names under the module's (`cli::…`, `k8s_operate::…`).

mod chart_support;
mod cli;
mod cli_errors;
mod doctor_stores;
mod helm_chart;
mod helm_kinds;
mod helm_production;
mod k8s_clusters;
mod k8s_controller;
mod k8s_crd;
mod k8s_deadlines;
mod k8s_faults;
mod k8s_handover;
mod k8s_kinds;
mod k8s_leader;
mod k8s_operate;
mod k8s_resume;
mod k8s_status;
mod k8s_stores;
mod lease;
mod monitoring;
mod run_terminal;
mod run_tree;
mod s3_tls;
mod semaphore_faults;
mod store_conformance;
mod stress;
mod workload_controllers;
