//! `make e2e`: what needs more than `make test` — real nodes (kubelet and
//! containerd, which need root and change the machine's sysctls), the
//! failure matrix counted on pods over whole clusters, `helm install` on real
//! nodes, the admission webhook against a real API server, the chart's RBAC
//! by use, and tenants. Not run by `cargo test` on its own (`test = false`
//! in Cargo.toml): `make e2e` or `cargo test --test e2e`.
//!
//! Each module was a test binary of its own before; its tests keep their
//! names under the module's (`k8s_pods::…`).

mod k8s_cluster;
mod k8s_helm_install;
mod k8s_pods;
mod k8s_rbac;
mod k8s_real_node;
mod k8s_stores;
mod k8s_tenants;
mod k8s_webhook;
