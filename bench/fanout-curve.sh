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
# shellcheck source=fanout-lib.sh
. bench/fanout-lib.sh

for n in $SIZES; do
  prefix="curve-$$-$n"
  start_gateway_pair "$prefix"
  echo "== $n participants"
  # A failed run still stops its gateways (else the next size finds its ports taken).
  "$BIN/loadgen" --pid "${pids[0]},${pids[1]}" fanout --gateways ws://127.0.0.1:18901,ws://127.0.0.1:18902 \
    --participants "$n" --sessions "$(( (n + 99) / 100 ))" --rate "$RATE" --seconds "$SECONDS_EACH" ${TIMELINE:+--timeline} \
    | grep -E "latency|delivered|second" || echo "loadgen failed (see above)"
  kill "${pids[@]}"; wait "${pids[@]}" 2>/dev/null || true
  drop_prefix "$prefix"
done
