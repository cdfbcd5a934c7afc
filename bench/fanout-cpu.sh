#!/usr/bin/env bash
# One `loadgen fanout` run over two fresh gateways, with the CPU seconds each process used during the
# sending (from /proc/<pid>/stat, the 4 s of joins excluded), and with PERF=<file> a `perf record -g` of
# gateway 1 for 5 s of it. Release binaries from BIN (default target/release).
#   BIN=target/release bash bench/fanout-cpu.sh 1000 1000 12      # participants, msg/s in all, seconds
#   PERF=/tmp/gw.data bash bench/fanout-cpu.sh 1000 400 12 && perf report -i /tmp/gw.data --no-children
set -euo pipefail
cd "$(dirname "$0")/.."
BIN="${BIN:-${CARGO_TARGET_DIR:-target}/release}"
N=${1:-1000}; RATE=${2:-200}; SECS=${3:-12}
REDIS="${REDIS_URL:-redis://127.0.0.1:6379}"
[ "$SECS" -ge 8 ] || { echo "seconds: at least 8" >&2; exit 2; }
prefix="cpu-$$-$N"
ticks() { awk '{print $14+$15}' "/proc/$1/stat"; }
# shellcheck source=fanout-lib.sh
. bench/fanout-lib.sh
pids=()
trap 'kill "${pids[@]}" 2>/dev/null || true' EXIT
start_gateway_pair "$prefix"
redis_pid=$(pgrep -f "redis-server.*:${REDIS##*:}" | head -1)
"$BIN/loadgen" fanout --gateways ws://127.0.0.1:18901,ws://127.0.0.1:18902 --participants "$N" \
  --sessions "$(( (N + 99) / 100 ))" --rate "$RATE" --seconds "$SECS" >"/tmp/$prefix.out" 2>&1 &
lg=$!
sleep 4   # the joins (1,000 participants: well under 4 s)
before=("$(ticks "${pids[0]}")" "$(ticks "${pids[1]}")" "$(ticks $lg)" "$(ticks "$redis_pid")")
t0=$(date +%s.%N)
if [ -n "${PERF:-}" ]; then
  perf record -F 499 -g -p "${pids[0]}" -o "$PERF" -- sleep 5 >/dev/null 2>&1
  sleep $((SECS - 7))
else
  sleep $((SECS - 2))
fi
after=("$(ticks "${pids[0]}")" "$(ticks "${pids[1]}")" "$(ticks $lg)" "$(ticks "$redis_pid")")
t1=$(date +%s.%N)
wait $lg || true
grep -E "latency|delivered" "/tmp/$prefix.out"
hz=$(getconf CLK_TCK)
cpu() { echo "scale=2; ($2 - $1) / $hz" | bc; }
echo "CPU seconds over $(echo "$t1 - $t0" | bc | cut -c1-5) s of sending: gateway 1 $(cpu "${before[0]}" "${after[0]}"), gateway 2 $(cpu "${before[1]}" "${after[1]}"), loadgen $(cpu "${before[2]}" "${after[2]}"), redis $(cpu "${before[3]}" "${after[3]}")"
drop_prefix "$prefix"
