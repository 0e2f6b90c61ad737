#!/usr/bin/env bash
# Builds the pinned test-bed binaries into a cache directory, once.
# Usage: scripts/testbed.sh [seaweedfs|all]   (default: all)
# Cache: $JOBGATE_TESTBED_DIR, default ~/.cache/jobgate/testbed
set -euo pipefail

SEAWEEDFS_VERSION="v0.0.0-20261109003541-7506e5f91cd6"

CACHE="${JOBGATE_TESTBED_DIR:-$HOME/.cache/jobgate/testbed}"
BIN="$CACHE/bin"
mkdir -p "$BIN" "$CACHE/src"

export GOFLAGS="${GOFLAGS:-} -mod=mod"
export CGO_ENABLED=0

log() { printf 'testbed: %s\n' "$*" >&2; }

# stamp NAME VERSION -> true when NAME is already built at VERSION
built() { [ -x "$BIN/$1" ] && [ "$(cat "$BIN/$1.version" 2>/dev/null)" = "$2" ]; }
mark() { printf '%s\n' "$2" > "$BIN/$1.version"; }

build_seaweedfs() {
  if built weed "$SEAWEEDFS_VERSION"; then log "weed $SEAWEEDFS_VERSION already built"; return; fi
  log "building weed (SeaweedFS) $SEAWEEDFS_VERSION ..."
  local w="$CACHE/src/seaweedfs"
  rm -rf "$w"; mkdir -p "$w"; cd "$w"
  go mod init jobgate.testbed/seaweedfs >/dev/null 2>&1
  go get "github.com/seaweedfs/seaweedfs@$SEAWEEDFS_VERSION"
  go build -trimpath -ldflags "-s -w" -o "$BIN/weed" github.com/seaweedfs/seaweedfs/weed
  mark weed "$SEAWEEDFS_VERSION"
  log "built $BIN/weed"
}

what="${1:-all}"
case "$what" in
  seaweedfs) build_seaweedfs ;;
  all) build_seaweedfs ;;
  *) echo "usage: $0 [seaweedfs|all]" >&2; exit 2 ;;
esac
log "done; binaries in $BIN"
