#!/usr/bin/env bash
# Five jobs, at most two at once, on a throwaway local ledger.
set -euo pipefail
cargo build --quiet
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
ledger="file://$dir/demo.json"
for i in 1 2 3 4 5; do
  target/debug/jobgate run --ledger "$ledger" --limit 2 --poll 100ms -- \
    sh -c "echo \"job $i starts (token \$JOBGATE_FENCING_TOKEN)\"; sleep 1; echo \"job $i done\"" &
done
sleep 0.5
target/debug/jobgate status --ledger "$ledger"
wait
echo
target/debug/jobgate status --ledger "$ledger"
