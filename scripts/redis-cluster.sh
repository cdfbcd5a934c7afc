#!/usr/bin/env bash
# A local Redis Cluster for the tests and benchmarks: 3 masters + 3 replicas on loopback ports
# (C2S_CLUSTER_PORT_BASE+1 … +6, default 7001-7006), data and logs under /tmp/c2s-redis-cluster/<port>.
#   redis-cluster.sh up       start the six nodes and create the cluster if needed; waits for cluster_state:ok
#   redis-cluster.sh down     stop them (SHUTDOWN NOSAVE) and remove their data
#   redis-cluster.sh status   cluster_state and the node table
#   redis-cluster.sh start N  start the node on port N again (after a test killed it); it rejoins the cluster
#   redis-cluster.sh wait     wait for cluster_state:ok with every replica linked (after a failover drill)
#   redis-cluster.sh pid N    the pid of the node on port N
# Safe to run `up` again and again: a healthy cluster is left alone, stopped nodes are started again and
# rejoin; only a cluster that does not heal within 20 s is rebuilt from scratch.
set -euo pipefail

BASE="${C2S_CLUSTER_PORT_BASE:-7000}"
DIR="${C2S_CLUSTER_DIR:-/tmp/c2s-redis-cluster}"
PORTS=()
for i in 1 2 3 4 5 6; do PORTS+=("$((BASE + i))"); done

log() { echo "redis-cluster: $*" >&2; }

node_up() { [ "$(redis-cli -h 127.0.0.1 -p "$1" ping 2>/dev/null)" = PONG ]; }

# ok: every slot served, six connected nodes of which three are replicas with a live link to their
# master (a replica still syncing would make the first failover of a test lose its shard).
cluster_ok() {
  local p nodes
  redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info 2>/dev/null | grep -q '^cluster_state:ok' || return 1
  nodes=$(redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster nodes 2>/dev/null) || return 1
  [ "$(grep -c ' connected' <<<"$nodes")" -ge 6 ] || return 1
  [ "$(grep -c 'slave' <<<"$nodes")" -ge 3 ] || return 1
  for p in "${PORTS[@]}"; do
    if redis-cli -h 127.0.0.1 -p "$p" role 2>/dev/null | head -1 | grep -q slave; then
      redis-cli -h 127.0.0.1 -p "$p" info replication | grep -q 'master_link_status:up' || return 1
    fi
  done
}

start_node() { # start_node <port>
  local port=$1
  mkdir -p "$DIR/$port"
  node_up "$port" && return 0
  redis-server --daemonize yes --bind 127.0.0.1 --port "$port" --dir "$DIR/$port" \
    --logfile "$DIR/$port/redis.log" --pidfile "$DIR/$port/redis.pid" \
    --cluster-enabled yes --cluster-config-file "$DIR/$port/nodes.conf" --cluster-node-timeout 2000 \
    --save "" --appendonly no
  for _ in $(seq 1 50); do node_up "$port" && return 0; sleep 0.1; done
  log "node $port did not start (see $DIR/$port/redis.log)"; return 1
}

wait_ok() {
  for _ in $(seq 1 100); do cluster_ok && return 0; sleep 0.2; done
  log "cluster_state did not become ok"; return 1
}

up() {
  if cluster_ok; then log "cluster ok on ${PORTS[*]}"; return 0; fi
  if [ -f "$DIR/created" ]; then
    # A cluster of ours with nodes down (a test killed them): start them, they rejoin as replicas.
    for p in "${PORTS[@]}"; do start_node "$p" || true; done
    for _ in $(seq 1 100); do cluster_ok && { log "cluster ok on ${PORTS[*]}"; return 0; }; sleep 0.2; done
    log "cluster did not heal; rebuilding it"
  fi
  # Nodes that do not form a healthy cluster (e.g. a half-created one): start from scratch.
  if [ -d "$DIR" ]; then down quiet; fi
  for p in "${PORTS[@]}"; do start_node "$p"; done
  local addrs=()
  for p in "${PORTS[@]}"; do addrs+=("127.0.0.1:$p"); done
  redis-cli --cluster create "${addrs[@]}" --cluster-replicas 1 --cluster-yes >"$DIR/create.log" 2>&1 \
    || { log "cluster create failed:"; cat "$DIR/create.log" >&2; return 1; }
  wait_ok
  touch "$DIR/created"
  log "cluster ok on ${PORTS[*]}"
}

down() {
  for p in "${PORTS[@]}"; do
    redis-cli -h 127.0.0.1 -p "$p" shutdown nosave >/dev/null 2>&1 || true
  done
  for p in "${PORTS[@]}"; do
    for _ in $(seq 1 30); do node_up "$p" || break; sleep 0.1; done
  done
  rm -rf "$DIR"
  [ "${1:-}" = quiet ] || log "stopped"
}

case "${1:-up}" in
  up) up ;;
  down) down ;;
  start) start_node "$2" ;;
  wait) wait_ok ;;
  pid) cat "$DIR/$2/redis.pid" ;;
  status)
    redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster info | grep cluster_state || true
    redis-cli -h 127.0.0.1 -p "${PORTS[0]}" cluster nodes || true ;;
  *) echo "usage: $0 up|down|status|start PORT" >&2; exit 2 ;;
esac
