#!/usr/bin/env bash
# A local multi-node cluster without Docker: the topology of docker-compose.yml (2 gateways behind nginx,
# 2 workers) as plain processes on this machine, against the local Redis and PostgreSQL, with the same
# nginx config (deploy/nginx/nginx.conf) run by Debian's nginx.
#
#   deploy/local-cluster.sh up        build (unless LC_BIN_DIR is set), start everything, wait until ready
#   deploy/local-cluster.sh status    what runs, with pids and addresses
#   deploy/local-cluster.sh kill gateway-1 [SIGNAL]   signal one process (default KILL): failover drills
#   deploy/local-cluster.sh start gateway-1           start one stopped process again
#   deploy/local-cluster.sh down      stop everything (SIGTERM, then SIGKILL after the drain grace)
#
# Settings (environment, all optional):
#   LC_DIR            state directory: pids, logs, nginx config   (default: target/local-cluster)
#   LC_LB_PORT        load balancer port: demo page and WebSockets (default: 8080)
#   LC_GATEWAY_PORTS  the two gateways' ports                      (default: "8081 8082")
#   LC_METRICS_PORTS  the two workers' metrics ports               (default: "9191 9192")
#   LC_REDIS_URL      (default: redis://127.0.0.1:6379)     LC_KEY_PREFIX (default: c2s-local)
#   LC_PG_URL         PostgreSQL server, no database (default: postgres://postgres@127.0.0.1:5432)
#   LC_DB             demo database, created and loaded on `up` (default: chat2sql_demo)
#   LC_BIN_DIR        directory holding prebuilt `gateway` and `worker` (skips the build)
#   LC_PROFILE        cargo profile to build with: release or dev   (default: release)
#   LC_JWT_SECRET     HS256 secret the gateways require; unset: gateways run --insecure-no-auth
#   LC_OTEL_ENDPOINT  OTLP/HTTP endpoint for traces (default: none)
#   LC_SKIP_SERVICES  1: do not check/start Redis, PostgreSQL and nginx (scripts/services.sh, tools.sh)
set -euo pipefail

ROOT="$(cd "$(dirname "$0")/.." && pwd)"
DIR="${LC_DIR:-$ROOT/target/local-cluster}"
LB_PORT="${LC_LB_PORT:-8080}"
read -r -a GATEWAY_PORTS <<<"${LC_GATEWAY_PORTS:-8081 8082}"
read -r -a METRICS_PORTS <<<"${LC_METRICS_PORTS:-9191 9192}"
REDIS_URL="${LC_REDIS_URL:-redis://127.0.0.1:6379}"
KEY_PREFIX="${LC_KEY_PREFIX:-c2s-local}"
PG_URL="${LC_PG_URL:-postgres://postgres@127.0.0.1:5432}"
DB="${LC_DB:-chat2sql_demo}"
READER=chat2sql_reader:chat2sql-reader-demo  # user:password of deploy/postgres/reader-role.sql
# What `down` waits for before SIGKILL: the gateways' drain (C2S_SHUTDOWN_GRACE_SECS, 10) plus margin.
STOP_WAIT_SECS=15
PROCESSES=(gateway-1 gateway-2 worker-1 worker-2 lb)

log() { echo "local-cluster: $*" >&2; }
die() { log "$*"; exit 1; }

pid_of() { # pid_of <name>: the pid if that process is alive
  local f="$DIR/$1.pid"
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  kill -0 "$pid" 2>/dev/null || return 1
  echo "$pid"
}

nginx_bin() {
  command -v nginx 2>/dev/null || { [ -x /usr/sbin/nginx ] && echo /usr/sbin/nginx; } || die "nginx is not installed (scripts/tools.sh installs it)"
}

binaries() {
  if [ -n "${LC_BIN_DIR:-}" ]; then BIN="$LC_BIN_DIR"; else
    local profile="${LC_PROFILE:-release}"
    log "building gateway and worker ($profile)"
    (cd "$ROOT" && cargo build --locked --profile "$profile" -p c2s-gateway -p c2s-worker >&2)
    local target="${CARGO_TARGET_DIR:-$ROOT/target}"
    BIN="$target/$([ "$profile" = dev ] && echo debug || echo "$profile")"
  fi
  [ -x "$BIN/gateway" ] && [ -x "$BIN/worker" ] || die "no gateway/worker binaries in $BIN"
}

load_demo_data() {
  if [ "$(psql "$PG_URL/postgres" -Atc "SELECT 1 FROM pg_database WHERE datname = '$DB'")" != 1 ]; then
    psql "$PG_URL/postgres" -qc "CREATE DATABASE \"$DB\"" >/dev/null
  fi
  psql "$PG_URL/$DB" -q -v ON_ERROR_STOP=1 -f "$ROOT/deploy/postgres/demo.sql" >/dev/null 2>&1 \
    || psql "$PG_URL/$DB" -q -v ON_ERROR_STOP=1 -f "$ROOT/deploy/postgres/demo.sql"
  # Workers connect as the least-privilege role of the project's one set-up script.
  psql "$PG_URL/$DB" -q -v ON_ERROR_STOP=1 -f "$ROOT/deploy/postgres/reader-role.sql" >/dev/null
}

pg_host_port() { local h=${PG_URL#*://}; echo "${h#*@}"; }

spawn() { # spawn <name> <command…>: starts a process in the background, its pid in <name>.pid
  local name=$1; shift
  if pid_of "$name" >/dev/null; then log "$name already runs"; return; fi
  nohup "$@" >>"$DIR/$name.log" 2>&1 </dev/null &
  echo $! >"$DIR/$name.pid"
}

start_one() {
  local name=$1 i
  case "$name" in
    gateway-1|gateway-2)
      i=$(( ${name#gateway-} - 1 ))
      local auth=(--insecure-no-auth)
      [ -n "${LC_JWT_SECRET:-}" ] && auth=(--jwt-secret "$LC_JWT_SECRET")
      spawn "$name" env C2S_LOG_FORMAT=text "$BIN/gateway" --bind "127.0.0.1:${GATEWAY_PORTS[$i]}" \
        --node-id "$name" --redis-url "$REDIS_URL" --key-prefix "$KEY_PREFIX" "${auth[@]}" \
        ${LC_OTEL_ENDPOINT:+--otel-endpoint "$LC_OTEL_ENDPOINT"} ;;
    worker-1|worker-2)
      i=$(( ${name#worker-} - 1 ))
      spawn "$name" env C2S_LOG_FORMAT=text "$BIN/worker" --worker-id "$name" \
        --redis-url "$REDIS_URL" --key-prefix "$KEY_PREFIX" \
        --database-url "postgres://$READER@$(pg_host_port)/$DB" \
        --metrics-bind "127.0.0.1:${METRICS_PORTS[$i]}" \
        ${LC_OTEL_ENDPOINT:+--otel-endpoint "$LC_OTEL_ENDPOINT"} ;;
    lb)
      write_nginx_config
      spawn lb "$(nginx_bin)" -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -e stderr \
        -g "daemon off; pid $DIR/nginx/nginx.pid;" ;;
    *) die "unknown process $name (one of: ${PROCESSES[*]})" ;;
  esac
}

# The shared nginx.conf, with a topology for this machine: loopback ports instead of compose hostnames.
write_nginx_config() {
  mkdir -p "$DIR/nginx/tmp"
  cp "$ROOT/deploy/nginx/nginx.conf" "$DIR/nginx/nginx.conf"
  {
    echo "# Written by deploy/local-cluster.sh: the compose topology (topology.compose.conf) on loopback."
    echo "upstream gateways {"
    echo "  least_conn;"
    for p in "${GATEWAY_PORTS[@]}"; do echo "  server 127.0.0.1:$p max_fails=1 fail_timeout=5s;"; done
    echo "  keepalive 16;"
    echo "}"
    # Debian's defaults live under /var/lib/nginx (root only): keep temp files in the state directory.
    for t in client_body proxy fastcgi uwsgi scgi; do echo "${t}_temp_path $DIR/nginx/tmp/$t;"; done
  } >"$DIR/nginx/topology.conf"
  echo "listen 127.0.0.1:$LB_PORT;" >"$DIR/nginx/topology.listen.conf"
  "$(nginx_bin)" -t -q -p "$DIR/nginx" -c "$DIR/nginx/nginx.conf" -e stderr -g "pid $DIR/nginx/nginx.pid;" \
    || die "nginx rejected the generated config in $DIR/nginx"
}

http_ok() { curl -fsS -o /dev/null --max-time 2 "$1" 2>/dev/null; }

wait_ready() { # wait_ready <name> <check…>
  local name=$1; shift
  for _ in $(seq 1 120); do
    "$@" && return 0
    pid_of "$name" >/dev/null || { tail -n 20 "$DIR/$name.log" >&2; die "$name exited during start-up"; }
    sleep 0.25
  done
  tail -n 20 "$DIR/$name.log" >&2; die "$name not ready after 30 s"
}

worker_ready() { grep -q "^READY " "$DIR/$1.log" 2>/dev/null; }

up() {
  mkdir -p "$DIR"
  command -v curl >/dev/null || die "curl is needed"
  if [ "${LC_SKIP_SERVICES:-0}" != 1 ]; then
    bash "$ROOT/scripts/services.sh"
    bash "$ROOT/scripts/tools.sh" nginx
  fi
  binaries
  load_demo_data
  [ -n "${LC_JWT_SECRET:-}" ] || log "warning: no LC_JWT_SECRET: the gateways accept anyone (?user=…)"
  for name in "${PROCESSES[@]}"; do start_one "$name"; done
  wait_ready gateway-1 http_ok "http://127.0.0.1:${GATEWAY_PORTS[0]}/readyz"
  wait_ready gateway-2 http_ok "http://127.0.0.1:${GATEWAY_PORTS[1]}/readyz"
  wait_ready worker-1 worker_ready worker-1
  wait_ready worker-2 worker_ready worker-2
  wait_ready lb http_ok "http://127.0.0.1:$LB_PORT/readyz"
  status
  log "up: demo page http://127.0.0.1:$LB_PORT/ (WebSockets ws://127.0.0.1:$LB_PORT/ws/…)"
}

status() {
  local name pid any=0
  for name in "${PROCESSES[@]}"; do
    if pid=$(pid_of "$name"); then any=1; echo "$name running pid $pid (log $DIR/$name.log)"
    else echo "$name stopped"; fi
  done
  echo "lb http://127.0.0.1:$LB_PORT  gateways ${GATEWAY_PORTS[*]}  worker metrics ${METRICS_PORTS[*]}"
  echo "redis $REDIS_URL prefix $KEY_PREFIX  database $PG_URL/$DB"
  [ "$any" = 1 ]
}

down() {
  local name pid pids=()
  for name in "${PROCESSES[@]}"; do
    if pid=$(pid_of "$name"); then kill -TERM "$pid" 2>/dev/null || true; pids+=("$pid"); fi
  done
  for _ in $(seq 1 $((STOP_WAIT_SECS * 4))); do
    local alive=0
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ "$alive" = 0 ] && break
    sleep 0.25
  done
  for pid in "${pids[@]}"; do kill -KILL "$pid" 2>/dev/null || true; done
  for name in "${PROCESSES[@]}"; do rm -f "$DIR/$name.pid"; done
  log "down (logs kept in $DIR)"
}

signal_one() { # signal_one <name> [SIGNAL]
  local pid; pid=$(pid_of "$1") || die "$1 is not running"
  kill -s "${2:-KILL}" "$pid"
  log "sent SIG${2:-KILL} to $1 (pid $pid)"
}

case "${1:-}" in
  up) up ;;
  down) down ;;
  status) status ;;
  kill) [ -n "${2:-}" ] || die "usage: $0 kill <name> [SIGNAL]"; signal_one "$2" "${3:-KILL}" ;;
  start) [ -n "${2:-}" ] || die "usage: $0 start <name>"; mkdir -p "$DIR"; binaries; start_one "$2" ;;
  *) echo "usage: $0 up|down|status|kill <name> [SIGNAL]|start <name>" >&2; exit 2 ;;
esac
