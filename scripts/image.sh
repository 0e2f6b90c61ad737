#!/usr/bin/env bash
# Builds OCI image archives without Docker or a registry, for a containerd
# that imports them (`ctr -n k8s.io images import FILE`). The same inputs give
# the same bytes: layers are tarred with fixed order, times and owners.
#
# Usage:
#   scripts/image.sh base OUTDIR
#       OUTDIR/pause.tar    jobgate.local/pause:3     pod sandbox: waits until SIGTERM
#       OUTDIR/busybox.tar  jobgate.local/busybox:1   static busybox, applets on PATH
#   scripts/image.sh jobgate OUTDIR BINARY [REF]
#       OUTDIR/jobgate.tar  REF (default jobgate.local/jobgate:test): BINARY as
#       /usr/local/bin/jobgate with the shared libraries it links, CA
#       certificates and user nonroot (65532)
# Needs: busybox-static for `base` (scripts/testbed.sh node installs it).
# Prints the path of each archive written.
set -euo pipefail

PAUSE_REF="jobgate.local/pause:3"
BUSYBOX_REF="jobgate.local/busybox:1"
JOBGATE_REF="jobgate.local/jobgate:test"
BUSYBOX="${JOBGATE_BUSYBOX:-/bin/busybox}"
PATH_ENV="PATH=/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin"

die() { printf 'image: %s\n' "$*" >&2; exit 1; }
sha() { sha256sum "$1" | cut -d' ' -f1; }
size() { stat -c %s "$1"; }

# json_array WORD... -> ["WORD", ...] (words here never hold quotes or
# backslashes, so no escaping is needed)
json_array() {
  local out="" w
  for w in "$@"; do out="$out${out:+,}\"$w\""; done
  printf '[%s]' "$out"
}

# layer ROOTDIR OUT.tar: a reproducible layer. Top-level names are listed
# rather than `.` so the archive has no entry for the root directory itself.
layer() {
  local names
  mapfile -t names < <(cd "$1" && ls -A | LC_ALL=C sort)
  LC_ALL=C tar --sort=name --mtime=@0 --owner=0 --group=0 --numeric-owner \
    --format=posix --pax-option=exthdr.name=%d/PaxHeaders/%f,delete=atime,delete=ctime \
    -C "$1" -cf "$2" "${names[@]}"
}

# image_arch: this machine's architecture in OCI's names. The images hold
# this machine's binaries (the build's, the host's busybox and libraries),
# and containerd refuses to run an image made for another platform.
image_arch() {
  case "$(uname -m)" in
    x86_64) echo amd64 ;;
    aarch64) echo arm64 ;;
    *) die "no OCI architecture known for this machine's $(uname -m); only x86_64 and aarch64 are." ;;
  esac
}

# oci_archive OUT.tar REF LAYER.tar CONFIG_JSON_BODY: writes an OCI image
# layout with one manifest, named REF, as a tar archive. CONFIG_JSON_BODY is
# the image's "config" object (entrypoint, user, env).
oci_archive() {
  local out="$1" ref="$2" layer_tar="$3" config_body="$4"
  local arch; arch="$(image_arch)"
  local work; work="$(mktemp -d)"
  mkdir -p "$work/blobs/sha256"
  local ldigest lsize
  ldigest="$(sha "$layer_tar")"; lsize="$(size "$layer_tar")"
  cp "$layer_tar" "$work/blobs/sha256/$ldigest"
  # The layer is stored uncompressed, so its digest is also its diff_id.
  printf '{"architecture":"%s","os":"linux","config":%s,"rootfs":{"type":"layers","diff_ids":["sha256:%s"]}}' \
    "$arch" "$config_body" "$ldigest" > "$work/config.json"
  local cdigest csize
  cdigest="$(sha "$work/config.json")"; csize="$(size "$work/config.json")"
  mv "$work/config.json" "$work/blobs/sha256/$cdigest"
  printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%s},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%s}]}' \
    "$cdigest" "$csize" "$ldigest" "$lsize" > "$work/manifest.json"
  local mdigest msize
  mdigest="$(sha "$work/manifest.json")"; msize="$(size "$work/manifest.json")"
  mv "$work/manifest.json" "$work/blobs/sha256/$mdigest"
  # containerd names the image after io.containerd.image.name; other tools
  # read the tag from org.opencontainers.image.ref.name.
  printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%s,"annotations":{"io.containerd.image.name":"%s","org.opencontainers.image.ref.name":"%s"}}]}' \
    "$mdigest" "$msize" "$ref" "${ref##*:}" > "$work/index.json"
  printf '{"imageLayoutVersion":"1.0.0"}' > "$work/oci-layout"
  chmod -R a+rX,go-w "$work"
  layer "$work" "$out.partial"
  mv "$out.partial" "$out"
  rm -rf "$work"
  printf '%s\n' "$out"
}

# busybox_root DIR: static busybox in /bin with a link per applet.
busybox_root() {
  [ -x "$BUSYBOX" ] || die "$BUSYBOX not found: install it with \`scripts/testbed.sh node\` (apt-get install busybox-static)"
  file_is_static "$BUSYBOX" || die "$BUSYBOX is not statically linked (install busybox-static)"
  mkdir -p "$1/bin" "$1/tmp" "$1/etc"
  install -m 0755 "$BUSYBOX" "$1/bin/busybox"
  local applet
  for applet in $("$BUSYBOX" --list); do
    [ "$applet" = busybox ] || ln -s busybox "$1/bin/$applet"
  done
  chmod 1777 "$1/tmp"
  passwd_files "$1"
}

file_is_static() { ! ldd "$1" >/dev/null 2>&1; }

passwd_files() {
  printf 'root:x:0:0:root:/root:/bin/sh\nnonroot:x:65532:65532:nonroot:/home/nonroot:/sbin/nologin\n' > "$1/etc/passwd"
  printf 'root:x:0:\nnonroot:x:65532:\n' > "$1/etc/group"
  chmod 0644 "$1/etc/passwd" "$1/etc/group"
}

build_base() {
  local out="$1" tmp
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  busybox_root "$tmp/root"
  layer "$tmp/root" "$tmp/layer.tar"
  # The sandbox only holds the pod's namespaces; as PID 1 a plain sleep
  # would ignore SIGTERM, so it traps it and exits at once on stop.
  oci_archive "$out/pause.tar" "$PAUSE_REF" "$tmp/layer.tar" \
    "{\"Env\":[\"$PATH_ENV\"],\"Entrypoint\":$(json_array /bin/sh -c "trap 'exit 0' TERM INT; while :; do sleep 3600 & wait; done")}"
  oci_archive "$out/busybox.tar" "$BUSYBOX_REF" "$tmp/layer.tar" \
    "{\"Env\":[\"$PATH_ENV\"],\"Cmd\":[\"sh\"]}"
}

build_jobgate() {
  local out="$1" bin="$2" ref="${3:-$JOBGATE_REF}" tmp
  [ -x "$bin" ] || die "$bin not found: build it with \`cargo build\` (or \`cargo build --release\`)"
  tmp="$(mktemp -d)"
  trap 'rm -rf "$tmp"' RETURN
  local root="$tmp/root"
  mkdir -p "$root/usr/local/bin" "$root/etc/ssl/certs" "$root/tmp"
  install -m 0755 "$bin" "$root/usr/local/bin/jobgate"
  # Exactly the libraries the dynamic linker would load, at the paths it
  # looks for them (copied through symlinks).
  local lib
  for lib in $(ldd "$bin" | awk '/=> \// { print $3 } /^\t\// { print $1 }'); do
    mkdir -p "$root$(dirname "$lib")"
    cp -L "$lib" "$root$lib"
    chmod 0755 "$root$lib"
  done
  install -m 0644 /etc/ssl/certs/ca-certificates.crt "$root/etc/ssl/certs/ca-certificates.crt"
  passwd_files "$root"
  chmod 1777 "$root/tmp"
  layer "$root" "$tmp/layer.tar"
  oci_archive "$out/jobgate.tar" "$ref" "$tmp/layer.tar" \
    "{\"Env\":[\"$PATH_ENV\",\"SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt\"],\"Entrypoint\":[\"/usr/local/bin/jobgate\"],\"User\":\"65532:65532\",\"WorkingDir\":\"/\"}"
}

what="${1:-}"
case "$what" in
  base)
    [ $# -eq 2 ] || die "usage: $0 base OUTDIR"
    mkdir -p "$2"; build_base "$2" ;;
  jobgate)
    [ $# -ge 3 ] && [ $# -le 4 ] || die "usage: $0 jobgate OUTDIR BINARY [REF]"
    mkdir -p "$2"; build_jobgate "$2" "$3" "${4:-}" ;;
  *) die "usage: $0 base OUTDIR | $0 jobgate OUTDIR BINARY [REF]" ;;
esac
