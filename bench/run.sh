#!/usr/bin/env bash
# Runs every loadgen scenario against a fresh local cluster of release binaries (2 gateways, 1 worker,
# the local Redis and PostgreSQL) plus the same-run baselines, and writes each scenario's JSON figures
# to bench/results/. The figures in bench/README.md come from this script on the development machine.
#
#   bash bench/run.sh                 # everything (about 3 minutes after the build)
#   BENCH_ONLY="stream fanout" bash bench/run.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/results"
mkdir -p "$OUT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release --locked -p c2s-gateway -p c2s-worker -p c2s-loadgen >&2
BIN="$CARGO_TARGET_DIR/release"
REDIS=redis://127.0.0.1:6379
PG=postgres://postgres@127.0.0.1:5432
PREFIX="bench-$$"
ONLY="${BENCH_ONLY:-stream fanout connections failover redis}"
LOGS=$(mktemp -d)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; }
trap cleanup EXIT
wants() { [[ " $ONLY " == *" $1 "* ]]; }

# A 1M-row, 5-column table beside the generate_series query: a plain scan streams from the first row,
# the set-returning function is materialised by PostgreSQL before its first row.
psql "$PG/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'c2s_bench'" | grep -q 1 \
  || psql "$PG/postgres" -qc "CREATE DATABASE c2s_bench"
psql "$PG/c2s_bench" -qc "CREATE TABLE IF NOT EXISTS stream_rows AS SELECT g AS id, g * 2 AS doubled,
  md5(g::text) AS hash, g % 7 AS bucket, now() AS at FROM generate_series(1, 1000000) g"
psql "$PG/c2s_bench" -qc "VACUUM ANALYZE stream_rows"
# The worker runs as the least-privilege role, as every deployment does.
psql "$PG/c2s_bench" -q -v ON_ERROR_STOP=1 -f deploy/postgres/reader-role.sql >/dev/null
READER_URL=postgres://chat2sql_reader:chat2sql-reader-demo@127.0.0.1:5432/c2s_bench

gateway() { # gateway <port> <name> [args…]: starts a gateway, prints its pid
  local port=$1 name=$2; shift 2
  "$BIN/gateway" --bind "127.0.0.1:$port" --node-id "$name" --redis-url "$REDIS" --key-prefix "$PREFIX" \
    --insecure-no-auth --max-connections 60000 "$@" >"$LOGS/$name.log" 2>&1 &
  echo $!
}
wait_port() { for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done; exit 1; }

GA=$(gateway 18701 bench-a); GB=$(gateway 18702 bench-b); PIDS+=("$GA" "$GB")
"$BIN/worker" --redis-url "$REDIS" --key-prefix "$PREFIX" --database-url "$READER_URL" \
  >"$LOGS/worker.log" 2>&1 &
W=$!; PIDS+=("$W")
wait_port 18701; wait_port 18702; sleep 1

if wants stream; then
  "$BIN/loadgen" --url ws://127.0.0.1:18701 --json "$OUT/stream-generate-series.json" --pid "$GA,$W" \
    stream --runs 3 --pg-url "$PG/c2s_bench"
  "$BIN/loadgen" --url ws://127.0.0.1:18701 --json "$OUT/stream-table.json" --pid "$GA,$W" \
    stream --runs 3 --query "SELECT id, doubled, hash, bucket, at FROM stream_rows" --pg-url "$PG/c2s_bench"
fi
if wants fanout; then
  for rate in 10 100 200; do
    "$BIN/loadgen" --json "$OUT/fanout-1000-rate$rate.json" --pid "$GA,$GB" fanout \
      --gateways ws://127.0.0.1:18701,ws://127.0.0.1:18702 --participants 1000 --sessions 10 \
      --rate "$rate" --seconds 10
  done
fi
if wants connections; then
  # 18 000: this sandbox's hard limit on open files is 20 000 per process (loadgen holds one per socket).
  "$BIN/loadgen" --url ws://127.0.0.1:18702 --json "$OUT/connections-18000.json" \
    connections --count 18000 --gateway-pid "$GB" --hold-secs 3
fi
if wants redis; then
  redis-benchmark -h 127.0.0.1 -p 6379 -n 200000 -c 50 -q publish c2s-bench-ceiling hello \
    | tr '\r' '\n' | tail -n 1 | tee "$OUT/redis-benchmark-publish.txt"
  redis-benchmark -h 127.0.0.1 -p 6379 -n 1000000 -c 50 -P 16 -q publish c2s-bench-ceiling hello \
    | tr '\r' '\n' | tail -n 1 | tee -a "$OUT/redis-benchmark-publish.txt"
fi
if wants failover; then
  # Last: it kills gateway A.
  "$BIN/loadgen" --json "$OUT/failover-5000.json" --pid "$GB" failover \
    --from ws://127.0.0.1:18701 --to ws://127.0.0.1:18702 --kill-pid "$GA" --clients 5000 --sessions 100
fi
echo "figures in $OUT; logs in $LOGS"
