#!/usr/bin/env bash
# Makes sure Redis (127.0.0.1:6379), the local Redis Cluster (3 masters + 3 replicas on 127.0.0.1:7001-7006,
# scripts/redis-cluster.sh) and PostgreSQL (127.0.0.1:5432, user postgres, trust) answer: installs them with
# apt-get when missing, starts them when stopped. Safe to run again and again.
set -euo pipefail

REDIS_PORT="${C2S_TEST_REDIS_PORT:-6379}"
PG_PORT="${C2S_TEST_PG_PORT:-5432}"

log() { echo "services: $*" >&2; }
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

wait_for() { # wait_for <what> <command…>
  local what=$1; shift
  for _ in $(seq 1 60); do "$@" >/dev/null 2>&1 && return 0; sleep 0.5; done
  log "$what did not come up"; return 1
}

# ---- Redis -------------------------------------------------------------------------------------------
redis_up() { [ "$(redis-cli -h 127.0.0.1 -p "$REDIS_PORT" ping 2>/dev/null)" = PONG ]; }
if ! command -v redis-server >/dev/null || ! command -v redis-cli >/dev/null; then
  log "installing redis-server"; apt_install redis-server
fi
if ! redis_up; then
  log "starting redis-server on $REDIS_PORT"
  mkdir -p /tmp/c2s-redis
  redis-server --daemonize yes --bind 127.0.0.1 --port "$REDIS_PORT" --save "" --appendonly no \
    --dir /tmp/c2s-redis --logfile /tmp/c2s-redis/redis.log
  wait_for redis redis_up
fi
log "redis ok"
bash "$(dirname "$0")/redis-cluster.sh" up

# ---- PostgreSQL --------------------------------------------------------------------------------------
pg_up() { psql -h 127.0.0.1 -p "$PG_PORT" -U postgres -d postgres -Atc 'select 1' 2>/dev/null | grep -qx 1; }
if ! command -v pg_ctlcluster >/dev/null; then
  log "installing postgresql"; apt_install postgresql postgresql-client
fi
if ! pg_up; then
  version=$(ls /etc/postgresql 2>/dev/null | sort -n | tail -1)
  if [ -z "$version" ]; then log "no PostgreSQL cluster found under /etc/postgresql"; exit 1; fi
  log "starting PostgreSQL $version"
  as_root pg_ctlcluster --skip-systemctl-redirect "$version" main start 2>/dev/null || true
  if ! wait_for postgresql pg_up; then
    # Running but refusing us: tests connect as postgres over TCP without a password, so trust loopback.
    hba="/etc/postgresql/$version/main/pg_hba.conf"
    log "allowing trust auth for postgres on loopback in $hba"
    as_root sed -i '1i host all postgres 127.0.0.1/32 trust\nhost all postgres ::1/128 trust' "$hba"
    as_root pg_ctlcluster --skip-systemctl-redirect "$version" main reload
    wait_for postgresql pg_up
  fi
fi
log "postgresql ok"
