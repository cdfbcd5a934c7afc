#!/usr/bin/env bash
# Single Redis against the local 3-master Redis Cluster (scripts/redis-cluster.sh), on the same box in one
# run, with the same release binaries (2 gateways, 1 worker) and the same loadgen scenarios:
#   - loadgen stream: 1M rows x 5 columns from a table, rows/s (3 runs);
#   - loadgen fanout: 1000 participants in 10 sessions on 2 gateways, p99 and deliveries/s (rate 100, 200);
#   - the cost of WAIT: the streams again on the cluster with C2S_REDIS_WAIT_REPLICAS=0, and a stream of
#     many small events (100k rows in 1000 chunks of 100) whose time per event shows WAIT's round trip;
#   - per-master INFO commandstats around one execution: its traffic stays on its shard.
# Figures (JSON) go to bench/results/cluster/; bench/README.md quotes them.
#
#   bash bench/cluster.sh
set -euo pipefail
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
cd "$ROOT"
OUT="$ROOT/bench/results/cluster"
mkdir -p "$OUT"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
cargo build --release --locked -p c2s-gateway -p c2s-worker -p c2s-loadgen >&2
bash scripts/services.sh >&2
BIN="$CARGO_TARGET_DIR/release"
PG=postgres://postgres@127.0.0.1:5432
SINGLE=redis://127.0.0.1:6379
SEEDS=redis://127.0.0.1:7001,redis://127.0.0.1:7002,redis://127.0.0.1:7003
PORTS="7001 7002 7003 7004 7005 7006"
LOGS=$(mktemp -d)
PIDS=()
stop_all() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done; PIDS=(); }
trap stop_all EXIT

psql "$PG/postgres" -qAtc "SELECT 1 FROM pg_database WHERE datname = 'c2s_bench'" | grep -q 1 \
  || psql "$PG/postgres" -qc "CREATE DATABASE c2s_bench"
psql "$PG/c2s_bench" -qc "CREATE TABLE IF NOT EXISTS stream_rows AS SELECT g AS id, g * 2 AS doubled,
  md5(g::text) AS hash, g % 7 AS bucket, now() AS at FROM generate_series(1, 1000000) g"
# The workers run as the least-privilege role (a superuser is refused), as in bench/run.sh.
psql "$PG/c2s_bench" -q -v ON_ERROR_STOP=1 -f deploy/postgres/reader-role.sql >/dev/null
READER_URL=postgres://chat2sql_reader:chat2sql-reader-demo@127.0.0.1:5432/c2s_bench
TABLE_QUERY="SELECT id, doubled, hash, bucket, at FROM stream_rows"
SMALL_QUERY="SELECT id, doubled, hash, bucket, at FROM stream_rows WHERE id <= 100000"

wait_port() { for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$1/readyz" >/dev/null && return; sleep 0.1; done; echo "gateway :$1 not ready" >&2; exit 1; }

# start <label> <redis args…>: 2 gateways (18711, 18712) and 1 worker on that Redis.
start() {
  local label=$1; shift
  local prefix="bench-$label-$$"
  "$BIN/gateway" --bind 127.0.0.1:18711 --node-id "$label-a" --key-prefix "$prefix" --insecure-no-auth \
    --max-connections 60000 --max-participants 500 "$@" >"$LOGS/$label-a.log" 2>&1 & PIDS+=($!); GA=$!
  "$BIN/gateway" --bind 127.0.0.1:18712 --node-id "$label-b" --key-prefix "$prefix" --insecure-no-auth \
    --max-connections 60000 --max-participants 500 "$@" >"$LOGS/$label-b.log" 2>&1 & PIDS+=($!); GB=$!
  "$BIN/worker" --key-prefix "$prefix" --database-url "$READER_URL" "$@" >"$LOGS/$label-w.log" 2>&1 &
  PIDS+=($!); W=$!
  wait_port 18711; wait_port 18712; sleep 1
}

small_events() { # small_events <label>: 1000 events of 100 rows (plus progress events)
  "$BIN/loadgen" --url ws://127.0.0.1:18711 --json "$OUT/stream-small-$1.json" --pid "$GA,$W" \
    stream --runs 3 --query "$SMALL_QUERY" --chunk-size 100
}

scenarios() { # scenarios <label>
  local label=$1
  small_events "$label"
  "$BIN/loadgen" --url ws://127.0.0.1:18711 --json "$OUT/stream-$label.json" --pid "$GA,$W" \
    stream --runs 3 --query "$TABLE_QUERY"
  for rate in 100 200; do
    "$BIN/loadgen" --json "$OUT/fanout-$label-rate$rate.json" --pid "$GA,$GB" fanout \
      --gateways ws://127.0.0.1:18711,ws://127.0.0.1:18712 --participants 1000 --sessions 10 \
      --rate "$rate" --seconds 10
  done
}

echo "== single Redis" >&2
start single --redis-url "$SINGLE"
scenarios single
stop_all

echo "== Redis Cluster (WAIT 1 replica, the default)" >&2
start cluster --redis-url "$SEEDS" --redis-cluster
scenarios cluster
# One execution, with the command counters of every node reset before it.
for p in $PORTS; do redis-cli -p "$p" config resetstat >/dev/null; done
"$BIN/loadgen" --url ws://127.0.0.1:18711 --json "$OUT/stream-cluster-commandstats.json" \
  stream --runs 1 --query "$TABLE_QUERY"
{
  for p in $PORTS; do
    role=$(redis-cli -p "$p" role | head -1)
    echo "## 127.0.0.1:$p ($role)"
    redis-cli -p "$p" info commandstats | tr -d '\r' | grep -E '^cmdstat_(evalsha|eval|xadd|spublish|xrange|xrevrange|hmget|hget|xreadgroup|xack|xdel|xclaim|xautoclaim|zadd|wait|publish|ssubscribe)[:]' \
      | sed -E 's/^cmdstat_([a-z]+):calls=([0-9]+),usec=([0-9]+).*/\1 calls=\2 usec=\3/'
  done
} | tee "$OUT/commandstats-one-execution.txt"
stop_all

echo "== Redis Cluster without WAIT" >&2
start cluster-nowait --redis-url "$SEEDS" --redis-cluster --redis-wait-replicas 0
small_events cluster-nowait
"$BIN/loadgen" --url ws://127.0.0.1:18711 --json "$OUT/stream-cluster-nowait.json" --pid "$GA,$W" \
  stream --runs 3 --query "$TABLE_QUERY"
stop_all
echo "figures in $OUT; logs in $LOGS" >&2
