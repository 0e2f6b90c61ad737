#!/usr/bin/env bash
# Builds the pinned test-bed binaries into a cache directory, once.
# Usage: scripts/testbed.sh [seaweedfs|stores|fake-gcs|azurite|moto|kubernetes|kubelet|etcd|kwok|k8s|node|helm|promtool|workloads|jobset|argo|kuberay|kueue|all]
#        (default: seaweedfs)
#   seaweedfs   the S3 server (weed) the tests use
#   stores      fake-gcs + azurite + moto: the other stores' emulators, which
#               the conformance suite and doctor run against (cold: about 5 minutes)
#   fake-gcs    fake-gcs-server, the GCS emulator (Go module proxy)
#   azurite     Azurite's blob service, the Azure Storage emulator (npm)
#   moto        moto's server mode, an S3 that answers as AWS does (PyPI)
#   k8s         kubernetes + etcd + kwok: the control plane for operator tests
#   kubelet     the kubelet, for tests that run real containers
#   node        kubelet plus the Debian packages a real node needs (containerd,
#               runc, CNI plugins, static busybox for the test images); root only
#   helm        helm: lints and renders the chart in charts/jobgate
#   promtool    Prometheus's promtool: checks and unit-tests the chart's alerts
#   workloads   jobset + argo + kuberay: workload controllers that run beside
#               the test control plane (testkit/src/workloads.rs), with their CRDs
#               (cold, with empty Go caches on 2 cores: about 9 minutes)
#   jobset      JobSet's controller (sigs.k8s.io/jobset)
#   argo        Argo Workflows' workflow-controller; loopback test beds only
#               (security advisories are open against the pinned release)
#   kuberay     KubeRay's ray-operator (RayCluster, RayJob, RayService)
#   kueue       Kueue's manager and CRDs, for the side-by-side benchmark only
#               (make bench-operator); not part of `all`
# Cache: $JOBGATE_TESTBED_DIR, default ~/.cache/jobgate/testbed
set -euo pipefail

SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"
KUBERNETES_VERSION="v1.35.4"
KUBERNETES_STAGING_VERSION="v0.35.4"
ETCD_VERSION="v3.6.16"
KWOK_VERSION="v0.8.0"
HELM_VERSION="v3.22.0"
KUEUE_VERSION="v0.17.0"
JOBSET_VERSION="v0.11.1"
# v3 is not on the module proxy. Advisories are open against v4.0.5: it only
# ever runs against a loopback control plane here, never in anything shipped.
ARGO_VERSION="v4.0.5"
KUBERAY_VERSION="v1.6.0"
FAKE_GCS_VERSION="v1.56.1"
AZURITE_VERSION="3.37.0"
MOTO_VERSION="5.2.6"
# Prometheus 3.x's Go module version (v0.3XX.Y is Prometheus 3.XX.Y).
PROMETHEUS_VERSION="v0.316.0"
# Parallel Go compile jobs; the machine has two cores.
GO_JOBS="${JOBGATE_GO_JOBS:-2}"

CACHE="${JOBGATE_TESTBED_DIR:-$HOME/.cache/jobgate/testbed}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/src"

export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED=0

log() { printf 'testbed: %s\n' "$*" >&2; }

# stamp NAME VERSION -> true when NAME is already built at VERSION
built() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/$1.version" 2>/dev/null)" = "$2" ]; }
mark() { printf '%s\n' "$2" > "$BIN/$1.version"; }

# wrapper NAME MODULE@VERSION: a fresh throwaway module that requires MODULE,
# so the dependency's own replace directives (which break `go install`) are ignored.
wrapper() {
  local w="$CACHE/src/$1"
  rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init "jobgate.testbed/$1" >/dev/null 2>&1
  go get "$2"
}

build_seaweedfs() {
  if built weed "$SEAWEEDFS_VERSION"; then log "weed $SEAWEEDFS_VERSION already built"; return; fi
  log "building weed (SeaweedFS) $SEAWEEDFS_VERSION ..."
  wrapper seaweedfs "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/weed" github.com/seaweedfs/seaweedfs/weed
  mark weed "$SEAWEEDFS_VERSION"
  log "built $BIN/weed"
}

STAGING="api apiextensions-apiserver apimachinery apiserver cli-runtime client-go cloud-provider
cluster-bootstrap code-generator component-base component-helpers controller-manager cri-api
cri-client csi-translation-lib dynamic-resource-allocation endpointslice externaljwt kms
kube-aggregator kube-controller-manager kube-proxy kube-scheduler kubectl kubelet metrics
mount-utils pod-security-admission sample-apiserver sample-cli-plugin sample-controller"

# build_k8s_cmds NAME...: the commands under k8s.io/kubernetes/cmd, pinned
# and stamped with the version, each skipped when already built at it.
build_k8s_cmds() {
  local names="" n
  for n in "$@"; do built "$n" "$KUBERNETES_VERSION" || names="$names $n"; done
  names="${names# }"
  if [ -z "$names" ]; then log "$* $KUBERNETES_VERSION already built"; return; fi
  log "building $names $KUBERNETES_VERSION (cold: about 20 minutes on 2 cores) ..."
  local w="$CACHE/src/kubernetes"
  rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init jobgate.testbed/kubernetes >/dev/null 2>&1
  go mod edit -require="k8s.io/kubernetes@$KUBERNETES_VERSION"
  for m in $STAGING; do
    go mod edit -replace="k8s.io/$m=k8s.io/$m@$KUBERNETES_STAGING_VERSION"
  done
  go mod edit -godebug=default=go1.24
  local minor="${KUBERNETES_VERSION#v1.}"; minor="${minor%%.*}"
  local ld="-s -w"
  for pkg in k8s.io/component-base/version k8s.io/client-go/pkg/version; do
    ld="$ld -X $pkg.gitVersion=$KUBERNETES_VERSION -X $pkg.gitMajor=1 -X $pkg.gitMinor=$minor -X $pkg.gitTreeState=clean"
  done
  for n in $names; do
    go build -p "$GO_JOBS" -trimpath -tags selinux,notest,grpcnotrace -ldflags "$ld" \
      -o "$BIN/$n" "k8s.io/kubernetes/cmd/$n"
    mark "$n" "$KUBERNETES_VERSION"
    log "built $BIN/$n"
  done
}

build_kubernetes() { build_k8s_cmds kube-apiserver kube-controller-manager kube-scheduler kubectl; }
build_kubelet() { build_k8s_cmds kubelet; }

# The packages a real node needs, installed only when missing: containerd and
# runc run the containers, the CNI loopback plugin makes containerd's network
# ready, and the static busybox is the base of the test images.
NODE_PACKAGES="containerd runc containernetworking-plugins busybox-static"
install_node_packages() {
  local missing="" p
  for p in $NODE_PACKAGES; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q 'install ok installed' || missing="$missing $p"
  done
  if [ -z "$missing" ]; then log "node packages installed"; return; fi
  log "installing$missing ..."
  # The package lists may be stale or absent (fresh containers ship none).
  apt-get install -y --no-install-recommends $missing \
    || { apt-get update && apt-get install -y --no-install-recommends $missing; }
}

build_etcd() {
  if built etcd "$ETCD_VERSION"; then log "etcd $ETCD_VERSION already built"; return; fi
  log "building etcd $ETCD_VERSION ..."
  wrapper etcd "go.etcd.io/etcd/server/v3@$ETCD_VERSION"
  go build -p "$GO_JOBS" -trimpath -ldflags "-s -w" -o "$BIN/etcd" go.etcd.io/etcd/server/v3
  mark etcd "$ETCD_VERSION"
  log "built $BIN/etcd"
}

build_kwok() {
  if built kwok "$KWOK_VERSION"; then log "kwok $KWOK_VERSION already built"; return; fi
  log "building kwok $KWOK_VERSION ..."
  GOBIN="$BIN" go install -p "$GO_JOBS" -trimpath -ldflags "-s -w" "sigs.k8s.io/kwok/cmd/kwok@$KWOK_VERSION"
  # kwok needs its stage definitions (which pods run, complete, ...).
  local stages
  stages="$(go env GOMODCACHE)/sigs.k8s.io/kwok@$KWOK_VERSION/kustomize/stage"
  rm -rf "$CACHE/kwok-stages"; mkdir -p "$CACHE/kwok-stages"
  cp -r "$stages/." "$CACHE/kwok-stages/"
  chmod -R u+w "$CACHE/kwok-stages"
  mark kwok "$KWOK_VERSION"
  log "built $BIN/kwok (stages in $CACHE/kwok-stages)"
}

build_kueue() {
  if built kueue "$KUEUE_VERSION"; then log "kueue $KUEUE_VERSION already built"; return; fi
  log "building kueue $KUEUE_VERSION ..."
  GOBIN="$BIN" go install -p "$GO_JOBS" -trimpath -ldflags "-s -w" "sigs.k8s.io/kueue/cmd/kueue@$KUEUE_VERSION"
  # Its CRDs as the module ships them (the kustomize output adds conversion
  # webhooks that only a Kueue running in the cluster can serve).
  local crds
  crds="$(go env GOMODCACHE)/sigs.k8s.io/kueue@$KUEUE_VERSION/config/components/crd/bases"
  rm -rf "$CACHE/kueue-crds"; mkdir -p "$CACHE/kueue-crds"
  cp "$crds"/*.yaml "$CACHE/kueue-crds/"
  chmod -R u+w "$CACHE/kueue-crds"
  mark kueue "$KUEUE_VERSION"
  log "built $BIN/kueue"
}

# copy_crds NAME DIR: the CRD files in DIR (of a module in the module cache)
# into $CACHE/NAME-crds, writable so the next copy can replace them.
copy_crds() {
  [ -d "$2" ] || { log "no CRDs at $2"; exit 1; }
  rm -rf "$CACHE/$1-crds"; mkdir -p "$CACHE/$1-crds"
  cp "$2"/*.yaml "$CACHE/$1-crds/"
  rm -f "$CACHE/$1-crds/kustomization.yaml"
  chmod -R u+w "$CACHE/$1-crds"
}

# wrapped_build NAME MODULE VERSION PACKAGE [LDFLAGS]: PACKAGE of MODULE at
# VERSION as $BIN/NAME, built in a wrapper module (`go install module@version`
# asks the proxy for the module's version list to look for deprecations, and
# the proxy refuses to list these modules). The wrapper requires only MODULE,
# so the build uses the versions MODULE's release pinned, and it takes the
# GODEBUG defaults of MODULE's own go line, as MODULE's own build would.
wrapped_build() {
  wrapper "$1" "$2@$3"
  local gov
  gov="$(go list -m -f '{{.GoVersion}}' "$2")"
  go mod edit -godebug="default=go${gov%.*}"
  go build -p "$GO_JOBS" -trimpath -ldflags "-s -w ${5:-}" -o "$BIN/$1" "$4"
}

build_jobset() {
  if built jobset "$JOBSET_VERSION"; then log "jobset $JOBSET_VERSION already built"; return; fi
  log "building jobset $JOBSET_VERSION ..."
  # The controller is the module's root package. The version stamp as
  # upstream's Makefile sets it (it logs it at start).
  wrapped_build jobset sigs.k8s.io/jobset "$JOBSET_VERSION" sigs.k8s.io/jobset \
    "-X sigs.k8s.io/jobset/pkg/version.GitVersion=$JOBSET_VERSION"
  copy_crds jobset "$(go env GOMODCACHE)/sigs.k8s.io/jobset@$JOBSET_VERSION/config/components/crd/bases"
  mark jobset "$JOBSET_VERSION"
  log "built $BIN/jobset (CRDs in $CACHE/jobset-crds)"
}

build_argo() {
  if built workflow-controller "$ARGO_VERSION"; then log "workflow-controller $ARGO_VERSION already built"; return; fi
  log "building Argo Workflows' workflow-controller $ARGO_VERSION ..."
  # The version stamp as upstream's Makefile sets it: without it the
  # controller calls itself v0.0.0 and puts argoexec:v0.0.0 as the image of
  # the containers it adds to each pod.
  wrapped_build workflow-controller github.com/argoproj/argo-workflows/v4 "$ARGO_VERSION" \
    github.com/argoproj/argo-workflows/v4/cmd/workflow-controller \
    "-X github.com/argoproj/argo-workflows/v4.version=$ARGO_VERSION"
  # The full CRDs (with their schemas, so the API server validates and
  # prunes as in a real installation); they need a server-side apply.
  copy_crds argo "$(go env GOMODCACHE)/github.com/argoproj/argo-workflows/v4@$ARGO_VERSION/manifests/base/crds/full"
  mark workflow-controller "$ARGO_VERSION"
  log "built $BIN/workflow-controller (CRDs in $CACHE/argo-crds)"
}

build_kuberay() {
  if built ray-operator "$KUBERAY_VERSION"; then log "ray-operator $KUBERAY_VERSION already built"; return; fi
  log "building KubeRay's ray-operator $KUBERAY_VERSION ..."
  # The operator is the module's root package.
  wrapped_build ray-operator github.com/ray-project/kuberay/ray-operator "$KUBERAY_VERSION" \
    github.com/ray-project/kuberay/ray-operator
  copy_crds kuberay "$(go env GOMODCACHE)/github.com/ray-project/kuberay/ray-operator@$KUBERAY_VERSION/config/crd/bases"
  mark ray-operator "$KUBERAY_VERSION"
  log "built $BIN/ray-operator (CRDs in $CACHE/kuberay-crds)"
}

build_workloads() { build_jobset; build_argo; build_kuberay; }

build_fake_gcs() {
  if built fake-gcs-server "$FAKE_GCS_VERSION"; then log "fake-gcs-server $FAKE_GCS_VERSION already built"; return; fi
  log "building fake-gcs-server $FAKE_GCS_VERSION ..."
  wrapped_build fake-gcs-server github.com/fsouza/fake-gcs-server "$FAKE_GCS_VERSION" \
    github.com/fsouza/fake-gcs-server
  mark fake-gcs-server "$FAKE_GCS_VERSION"
  log "built $BIN/fake-gcs-server"
}

# launcher NAME TARGET: an executable in $BIN that runs TARGET with the
# arguments it is given (the emulators that are scripts, not binaries).
launcher() {
  printf '#!/bin/sh\nexec %s "$@"\n' "$2" > "$BIN/$1"
  chmod +x "$BIN/$1"
}

build_azurite() {
  if built azurite-blob "$AZURITE_VERSION"; then log "azurite-blob $AZURITE_VERSION already installed"; return; fi
  log "installing azurite $AZURITE_VERSION (npm) ..."
  local d="$CACHE/azurite"
  rm -rf "$d"; mkdir -p "$d"
  npm install --prefix "$d" --no-audit --no-fund --loglevel=error "azurite@$AZURITE_VERSION" >&2
  launcher azurite-blob "$d/node_modules/.bin/azurite-blob"
  mark azurite-blob "$AZURITE_VERSION"
  log "installed $BIN/azurite-blob"
}

build_moto() {
  if built moto_server "$MOTO_VERSION"; then log "moto_server $MOTO_VERSION already installed"; return; fi
  log "installing moto $MOTO_VERSION (PyPI) ..."
  local d="$CACHE/moto"
  rm -rf "$d"
  python3 -m venv "$d"
  "$d/bin/pip" install --quiet --disable-pip-version-check "moto[server]==$MOTO_VERSION" >&2
  launcher moto_server "$d/bin/moto_server"
  mark moto_server "$MOTO_VERSION"
  log "installed $BIN/moto_server"
}

build_stores() { build_fake_gcs; build_azurite; build_moto; }

build_helm() {
  if built helm "$HELM_VERSION"; then log "helm $HELM_VERSION already built"; return; fi
  log "building helm $HELM_VERSION ..."
  go mod download "helm.sh/helm/v3@$HELM_VERSION"
  # Helm's Makefile stamps the Kubernetes version of its client-go into the
  # default capabilities; without it `helm template`/`helm lint` assume
  # v1.20.0 and reject charts that declare a newer kubeVersion.
  local gomod kminor
  gomod="$(go env GOMODCACHE)/helm.sh/helm/v3@$HELM_VERSION/go.mod"
  kminor="$(awk '$1 == "k8s.io/client-go" { split($2, v, "."); print v[2]; exit }' "$gomod")"
  [ -n "$kminor" ] || { log "no k8s.io/client-go version in $gomod"; exit 1; }
  local ld="-s -w -X helm.sh/helm/v3/internal/version.version=$HELM_VERSION"
  local pkg
  for pkg in helm.sh/helm/v3/pkg/chartutil helm.sh/helm/v3/pkg/lint/rules; do
    ld="$ld -X $pkg.k8sVersionMajor=1 -X $pkg.k8sVersionMinor=$kminor"
  done
  GOBIN="$BIN" go install -p "$GO_JOBS" -trimpath -ldflags "$ld" "helm.sh/helm/v3/cmd/helm@$HELM_VERSION"
  mark helm "$HELM_VERSION"
  log "built $BIN/helm (default Kubernetes version v1.$kminor.0)"
}

build_promtool() {
  if built promtool "$PROMETHEUS_VERSION"; then log "promtool $PROMETHEUS_VERSION already built"; return; fi
  log "building promtool (Prometheus) $PROMETHEUS_VERSION ..."
  wrapper promtool "github.com/prometheus/prometheus@$PROMETHEUS_VERSION"
  # remove_all_sd leaves out the service-discovery plugins (every cloud's
  # SDK): rule checks and unit tests need none, and they are most of the
  # build.
  go build -p "$GO_JOBS" -tags remove_all_sd -trimpath -ldflags "-s -w" -o "$BIN/promtool" github.com/prometheus/prometheus/cmd/promtool
  mark promtool "$PROMETHEUS_VERSION"
  log "built $BIN/promtool"
}

what="${1:-seaweedfs}"
case "$what" in
  seaweedfs) build_seaweedfs ;;
  stores) build_stores ;;
  fake-gcs) build_fake_gcs ;;
  azurite) build_azurite ;;
  moto) build_moto ;;
  kubernetes) build_kubernetes ;;
  etcd) build_etcd ;;
  kwok) build_kwok ;;
  kubelet) build_kubelet ;;
  k8s) build_etcd; build_kwok; build_kubernetes ;;
  node) install_node_packages; build_kubelet ;;
  helm) build_helm ;;
  promtool) build_promtool ;;
  workloads) build_workloads ;;
  jobset) build_jobset ;;
  argo) build_argo ;;
  kuberay) build_kuberay ;;
  kueue) build_kueue ;;
  all) build_seaweedfs; build_stores; build_etcd; build_kwok; build_kubernetes; build_kubelet; build_helm; build_promtool; build_workloads ;;
  *) echo "usage: $0 [seaweedfs|stores|fake-gcs|azurite|moto|kubernetes|kubelet|etcd|kwok|k8s|node|helm|promtool|workloads|jobset|argo|kuberay|kueue|all]" >&2; exit 2 ;;
esac
log "done; binaries in $BIN"
