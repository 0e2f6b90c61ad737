//! The integration tests that need no root, in one test binary so that the
//! crate is linked once. Each module was a test binary of its own before;
//! its tests keep their names under the module's (`cli::…`,
//! `k8s_operate::…`).

mod cli;
mod cli_errors;
mod helm_chart;
mod k8s_controller;
mod k8s_crd;
mod k8s_faults;
mod k8s_leader;
mod k8s_operate;
mod k8s_status;
mod lease;
mod run_tree;
mod semaphore_faults;
mod store_conformance;
mod stress;
