#!/usr/bin/env bash
# The test command: starts (installing if needed) Redis and PostgreSQL, then runs every test of the
# workspace: unit tests and the cross-process suite in tests/ (real gateway and worker processes), then
# the TypeScript clients' suites (clients/*: vitest and the Playwright browser test, against the same
# freshly built binaries). scripts/tools.sh adds what those need (nginx, schema validators, Node
# packages, Chromium).
# Ends with one summary line over all suites: `tests: N passed, N failed`.
# Arguments go to `cargo test`; with arguments (a filter) the TypeScript suites are skipped.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
bash scripts/tools.sh
log=$(mktemp)
trap 'rm -f "$log"' EXIT
status=0
cargo test --workspace --locked "$@" 2>&1 | tee "$log" || status=$?

if [ "$#" = 0 ]; then
  target="${CARGO_TARGET_DIR:-target}"
  [[ "$target" = /* ]] || target="$PWD/$target"
  export C2S_GATEWAY_BIN="$target/debug/gateway" C2S_WORKER_BIN="$target/debug/worker"
  for client in clients/typescript clients/demo; do
    [ -f "$client/package.json" ] || continue
    echo "== $client: npm test"
    (cd "$client" && npm test 2>&1) | tee -a "$log" || status=$?
  done
fi

# cargo: `test result: ok. 5 passed; 0 failed; …`; vitest: `Tests  2 failed | 32 passed (34)`.
sed 's/\x1b\[[0-9;]*m//g' "$log" | awk '
  /^test result:/ { for (i = 1; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  /^ *Tests +[0-9]/ { for (i = 2; i <= NF; i++) { if ($(i+1) ~ /^passed/) p += $i; if ($(i+1) ~ /^failed/) f += $i } }
  END { printf "tests: %d passed, %d failed\n", p, f }'
exit "$status"
