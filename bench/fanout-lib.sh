# Shared by bench/fanout-curve.sh and bench/fanout-cpu.sh (sourced; the caller sets BIN and REDIS).

# start_gateway_pair <prefix>: two gateways on 18901 and 18902 under one key prefix, logs in
# /tmp/<prefix>-<port>.log; sets `pids` and returns once both answer /readyz.
start_gateway_pair() {
  local prefix=$1 port
  pids=()
  for port in 18901 18902; do
    "$BIN/gateway" --bind "127.0.0.1:$port" --node-id "$prefix-$port" --redis-url "$REDIS" \
      --key-prefix "$prefix" --insecure-no-auth --max-connections 60000 >"/tmp/$prefix-$port.log" 2>&1 &
    pids+=($!)
  done
  for port in 18901 18902; do
    for _ in $(seq 1 100); do curl -fs "http://127.0.0.1:$port/readyz" >/dev/null && break; sleep 0.1; done
  done
}

# drop_prefix <prefix>: deletes the run's keys.
drop_prefix() {
  redis-cli -u "$REDIS" --scan --pattern "$1*" | xargs -r -n 500 redis-cli -u "$REDIS" del >/dev/null
}
