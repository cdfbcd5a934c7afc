#!/usr/bin/env bash
# The fan-out curve of issue 17: p50/p99/p99.9 at 100, 1k, 4k and 10k participants (sessions of 100 over
# two gateways) at one delivery rate (RATE msg/s in all, default 200: 20k deliveries/s), each size on a
# fresh pair of gateways and its own key prefix. Release binaries from BIN (default target/release).
#   bash bench/fanout-curve.sh            SIZES="1000 4000" RATE=200 SECONDS_EACH=15 bash bench/fanout-curve.sh
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
SIZES="${SIZES:-100 1000 4000 10000}"
RATE="${RATE:-200}"
SECONDS_EACH="${SECONDS_EACH:-15}"
REDIS="${REDIS_URL:-redis://127.0.0.1:6379}"
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] \
  || cargo build --release --locked -p c2s-gateway -p c2s-worker -p c2s-loadgen >&2

for n in $SIZES; do
  prefix="curve-$$-$n"
  pids=()
  for port in 18901 18902; do
    "$BIN/gateway" --bind "127.0.0.1:$port" --node-id "$prefix-$port" --redis-url "$REDIS" \
      --key-prefix "$prefix" --insecure-no-auth --max-connections 60000 >"/tmp/$prefix-$port.log" 2>&1 &
    pids+=($!)
  done
  for port in 18901 18902; do
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  done
  echo "== $n participants"
  # A failed run still stops its gateways (else the next size finds its ports taken).
  "$BIN/loadgen" --pid "${pids[0]},${pids[1]}" fanout --gateways ws://127.0.0.1:18901,ws://127.0.0.1:18902 \
    --participants "$n" --sessions "$(( (n + 99) / 100 ))" --rate "$RATE" --seconds "$SECONDS_EACH" ${TIMELINE:+--timeline} \
    | grep -E "latency|delivered|second" || echo "loadgen failed (see above)"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  redis-cli -u "$REDIS" --scan --pattern "$prefix*" | xargs -r -n 500 redis-cli -u "$REDIS" del >/dev/null
done
