//! The end-to-end tests that need real nodes (kubelet and containerd, which
//! need root), whole clusters counted on pods, the webhook, RBAC and
//! tenants, in one test binary. Each module was a test binary of its own
//! before; its tests keep their names under the module's (`k8s_pods::…`).

mod k8s_cluster;
mod k8s_helm_install;
mod k8s_pods;
mod k8s_rbac;
mod k8s_real_node;
mod k8s_tenants;
mod k8s_webhook;
