#!/usr/bin/env bash
# The test command: starts (installing if needed) Redis and PostgreSQL, then runs every test of the
# workspace: unit tests and the cross-process suite in tests/ (real gateway and worker processes).
# scripts/tools.sh adds what the deployment tests need (nginx, schema validators).
# Ends with one summary line over all test binaries: `tests: N passed, N failed`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/tools.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?
awk '/^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
     END { printf "tests: %d passed, %d failed\n", p, f }' "$log"
exit "$status"
