//! The Kubernetes side: the `ConcurrencyGroup` API and the pure admission
//! decision. (The controller that drives them is being built.)

pub mod admission;
pub mod crd;
