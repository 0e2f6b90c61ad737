//! The Kubernetes side: the `ConcurrencyGroup` API, the pure admission
//! decision, and the controller that drives them.

pub mod admission;
pub mod controller;
pub mod crd;
pub mod deadline;
pub mod error;
pub mod http;
pub mod inspect;
pub mod leader;
pub mod ledgers;
pub mod metrics;
pub mod reconcile;
pub mod status;
pub mod webhook;

pub use error::{Error, Result};
