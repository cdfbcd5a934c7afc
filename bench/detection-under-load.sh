#!/usr/bin/env bash
# Issue 19's false-positive check: failure detection with its default timings must never fire on nodes
# that are alive and busy. Two gateways and two workers (release binaries, default limits) carry the
# fan-out load of the issue (1000 participants in 10 sessions of 100, 50 msg/s per session: 50k
# deliveries/s) for DURATION seconds (default 60), while slow queries stream through the same workers for the
# whole time. Prints the participant_left (node_lost) frames the participants saw (every node is alive:
# any is false), whether the query completed (a worker_lost would end it), and what the nodes' logs
# say about reaped nodes and taken-over jobs.
#   bash bench/detection-under-load.sh          DURATION=30 bash bench/detection-under-load.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
[ -x "$BIN/gateway" ] && [ -x "$BIN/worker" ] && [ -x "$BIN/loadgen" ] \
  || cargo build --release --locked -p c2s-gateway -p c2s-worker -p c2s-loadgen >&2
DURATION="${DURATION:-60}"
REDIS=redis://127.0.0.1:6379
PG=postgres://postgres@127.0.0.1:5432
PREFIX="detect-$$"
LOGS=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  redis-cli -u "$REDIS" --scan --pattern "$PREFIX*" | xargs -r -n 500 redis-cli -u "$REDIS" del >/dev/null
}
trap cleanup EXIT

psql "$PG/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'c2s_bench'" | grep -q 1 \
  || psql "$PG/postgres" -qc "CREATE DATABASE c2s_bench"
psql "$PG/c2s_bench" -q -v ON_ERROR_STOP=1 -f deploy/postgres/reader-role.sql >/dev/null
READER_URL=postgres://chat2sql_reader:chat2sql-reader-demo@127.0.0.1:5432/c2s_bench

for port in 18801 18802; do
  "$BIN/gateway" --bind "127.0.0.1:$port" --node-id "$PREFIX-$port" --redis-url "$REDIS" \
    --key-prefix "$PREFIX" --insecure-no-auth >"$LOGS/gw-$port.log" 2>&1 &
  PIDS+=($!)
done
for w in 1 2; do
  "$BIN/worker" --redis-url "$REDIS" --key-prefix "$PREFIX" --database-url "$READER_URL" \
    --worker-id "$PREFIX-w$w" >"$LOGS/worker-$w.log" 2>&1 &
  PIDS+=($!)
done
for port in 18801 18802; do
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done

# Queries of one row every 10 ms (20 s each, within the default statement timeout of 30 s), one after
# the other for the whole run: the workers stay busy streaming.
runs=$(( DURATION / 20 + 1 ))
"$BIN/loadgen" --url ws://127.0.0.1:18802 stream --runs "$runs" --chunk-size 10 --max-rows 2000 \
  --query "SELECT g, md5(g::text) FROM generate_series(1, 2000) g WHERE pg_sleep(0.01) IS NOT NULL" \
  >"$LOGS/stream.log" 2>&1 &
STREAM=$!
"$BIN/loadgen" fanout --gateways ws://127.0.0.1:18801,ws://127.0.0.1:18802 --participants 1000 \
  --sessions 10 --rate 500 --seconds "$DURATION" | grep -E "latency|delivered|sent"
if wait "$STREAM"; then
  echo "slow queries: all $runs completed: no worker_lost"
else
  echo "slow queries: FAILED: $(grep -m1 -E 'Error|failed' "$LOGS/stream.log")"
fi
echo "gateway logs, nodes reaped: $(cat "$LOGS"/gw-*.log | grep -c 'gateway node lost' || true)"
echo "worker logs, jobs taken over or ended worker_lost: $(cat "$LOGS"/worker-*.log | grep -ciE 'take.?over|worker_lost|WorkerLost' || true)"
