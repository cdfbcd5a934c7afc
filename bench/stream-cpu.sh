#!/usr/bin/env bash
# One table stream against a gateway and a worker from <bindir>, with the CPU each process used:
#
#   bash bench/stream-cpu.sh <bindir> <label> [loadgen stream options…]
#   bash bench/stream-cpu.sh target/release after --row-format objects --chunk-size 500 --runs 3
#
# <bindir> holds `gateway`, `worker` and `loadgen` (copy a build aside to compare two in alternating
# runs). Needs the local Redis and the `c2s_bench` database that `bench/run.sh` creates. Prints
# loadgen's table, its baseline (psql COPY of the same query, same run), and CPU ticks (1/100 s) of the
# PostgreSQL backends of the reader role, Redis, the gateway and the worker over the runs.
set -euo pipefail
BIN=$1; LABEL=$2; shift 2
PREFIX="sc-$$"; REDIS=redis://127.0.0.1:6379; PG=postgres://postgres@127.0.0.1:5432
READER_URL=postgres://chat2sql_reader:chat2sql-reader-demo@127.0.0.1:5432/c2s_bench
PORT=$((18900 + RANDOM % 50))
LOGS=$(mktemp -d)
"$BIN/gateway" --bind 127.0.0.1:$PORT --node-id sc-a --redis-url $REDIS --key-prefix $PREFIX \
  --insecure-no-auth >"$LOGS/gateway.log" 2>&1 & GA=$!
"$BIN/worker" --redis-url $REDIS --key-prefix $PREFIX --database-url $READER_URL >"$LOGS/worker.log" 2>&1 & W=$!
trap 'kill $GA $W 2>/dev/null' EXIT
for _ in $(seq 1 100); do curl -fs http://127.0.0.1:$PORT/readyz >/dev/null && break; sleep 0.1; done; sleep 1
cpu() { awk '{print $14+$15}' "/proc/$1/stat"; }
pgcpu() {
  local s=0
  for p in $(pgrep -f "postgres: [0-9]+/main: chat2sql_reader|postgres: chat2sql_reader"); do s=$((s + $(cpu "$p"))); done
  echo $s
}
R=$(pgrep -x redis-server | head -1)
r0=$(cpu "$R"); g0=$(cpu $GA); w0=$(cpu $W); pg0=$(pgcpu)
"$BIN/loadgen" --url ws://127.0.0.1:$PORT stream --pg-url $PG/c2s_bench \
  --query "SELECT id, doubled, hash, bucket, at FROM stream_rows" "$@"
echo "$LABEL: postgres $(( $(pgcpu) - pg0 )) ticks, redis $(( $(cpu "$R") - r0 )) ticks, gateway $(( $(cpu $GA) - g0 )) ticks, worker $(( $(cpu $W) - w0 )) ticks (100/s); logs in $LOGS"
