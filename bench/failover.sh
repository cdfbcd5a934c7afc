#!/usr/bin/env bash
# Issue 19's rejoin storm with the default limits: two release gateways with default flags on the local
# Redis, `loadgen failover` (participants on A, chat from B, kill -9 of A), then when A died (polled)
# and when B reaped its participants. Extra gateway flags go in GW_ARGS (e.g. to compare
# `--presence-link-grace-ms 0`).
#   bash bench/failover.sh              # 5000 participants in 50 sessions
#   bash bench/failover.sh 2000 20      GW_ARGS="--presence-link-grace-ms 0" bash bench/failover.sh
set -u
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
export CARGO_TARGET_DIR="${CARGO_TARGET_DIR:-$ROOT/target}"
BIN="$CARGO_TARGET_DIR/release"
[ -x "$BIN/gateway" ] && [ -x "$BIN/loadgen" ] \
  || (cd "$ROOT" && cargo build --release --locked -p c2s-gateway -p c2s-worker -p c2s-loadgen >&2)
REDIS=redis://127.0.0.1:6379
P="failover-$$"
L=$(mktemp -d)
read -r -a EXTRA <<< "${GW_ARGS:-}"
gateway() { # gateway <port> <name>: prints its pid
  "$BIN/gateway" --bind "127.0.0.1:$1" --node-id "$P-$2" --redis-url "$REDIS" --key-prefix "$P" \
    --insecure-no-auth --max-connections 60000 "${EXTRA[@]}" >"$L/$2.log" 2>&1 &
  echo $!
}
A=$(gateway 18901 a)
B=$(gateway 18902 b)
cleanup() {
  kill "$A" "$B" 2>/dev/null || true
  redis-cli -u "$REDIS" --scan --pattern "$P*" | xargs -r -n 500 redis-cli -u "$REDIS" del >/dev/null
}
trap cleanup EXIT
for port in 18901 18902; do
  for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
done
sleep 2.5 # past the presence TTL: the nodes judge each other's links
(while kill -0 "$A" 2>/dev/null; do sleep 0.01; done; date -u +%H:%M:%S.%N >"$L/a-died") &
"$BIN/loadgen" failover --from ws://127.0.0.1:18901 --to ws://127.0.0.1:18902 --kill-pid "$A" \
  --clients "${1:-5000}" --sessions "${2:-50}"
sleep 0.5
echo "gateway A died at $(cat "$L/a-died" 2>/dev/null) (UTC)"
echo "gateway B: $(grep -m1 -o '"timestamp":"[^"]*".*reaped its participants[^}]*' "$L/b.log" || echo 'reaped nothing')"
