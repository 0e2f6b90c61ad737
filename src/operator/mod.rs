//! The Kubernetes side: the `ConcurrencyGroup` API, the pure admission
//! decision, and the controller that drives them.

pub mod admission;
pub mod allowlist;
pub mod controller;
pub mod crd;
pub mod deadline;
pub mod deletion;
pub mod effects;
pub mod error;
pub mod events;
pub mod explain;
pub mod gated_pods;
pub mod http;
pub mod inspect;
pub mod job_cache;
pub mod jobs;
pub mod kinds;
pub mod leader;
pub mod ledgers;
pub mod limits;
pub mod metrics;
pub mod orphans;
pub mod process_metrics;
pub mod reconcile;
pub mod requests;
pub mod status;
pub mod terms;
pub mod webhook;
pub mod workload;

pub use error::{Error, Result};
