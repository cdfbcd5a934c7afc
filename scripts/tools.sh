#!/usr/bin/env bash
# Installs the tools the deployment tests use, when missing (safe to run again and again):
# - nginx (Debian package): the load balancer of deploy/local-cluster.sh;
# - a Python venv with check-jsonschema (compose-spec schema), kubernetes-validate and PyYAML, under
#   $C2S_TOOLS_VENV (default ~/.cache/chat2sql-realtime/venv);
# - Node.js/npm (Debian packages) when missing, and each client's packages (`npm ci`, when its
#   package-lock.json changed since the last install);
# - Debian's Chromium for the browser test (playwright-core drives it; no browser download);
# - a kustomize renderer: `kubectl kustomize` or `kustomize` must be on PATH (reported, not installed:
#   neither is a Debian package).
# `scripts/tools.sh nginx` installs only nginx (what deploy/local-cluster.sh needs); no argument: all.
set -euo pipefail
ONLY="${1:-all}"

VENV="${C2S_TOOLS_VENV:-$HOME/.cache/chat2sql-realtime/venv}"
PY_TOOLS=(check-jsonschema==0.39.0 kubernetes-validate==1.37.0 PyYAML==6.0.3)

log() { echo "tools: $*" >&2; }
# shellcheck source=lib.sh
. "$(dirname "$0")/lib.sh"

if ! command -v nginx >/dev/null && [ ! -x /usr/sbin/nginx ]; then
  log "installing nginx"
  # The package's post-install starts a default site on :80; stop it, the cluster runs its own.
  apt_install nginx-light 2>/dev/null || apt_install nginx
  as_root nginx -s stop >/dev/null 2>&1 || true
fi
if [ "$ONLY" = nginx ]; then log "ok"; exit 0; fi

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  log "installing nodejs and npm"
  apt_install nodejs npm
fi
if [ ! -x /usr/bin/chromium ]; then
  log "installing chromium"
  apt_install chromium
fi
ROOT="$(cd "$(dirname "$0")/.." && pwd)"
for client in "$ROOT"/clients/*/; do
  [ -f "$client/package-lock.json" ] || continue
  lock_sum=$(md5sum "$client/package-lock.json" | cut -c1-12)
  if [ ! -f "$client/node_modules/.c2s-lock-$lock_sum" ]; then
    log "npm ci in ${client#"$ROOT"/}"
    (cd "$client" && npm ci --no-audit --no-fund --loglevel=error >/dev/null)
    touch "$client/node_modules/.c2s-lock-$lock_sum"
  fi
done

stamp="$VENV/.c2s-tools-$(printf '%s ' "${PY_TOOLS[@]}" | md5sum | cut -c1-12)"
if [ ! -e "$stamp" ]; then
  log "installing ${PY_TOOLS[*]} into $VENV"
  python3 -m venv "$VENV"
  "$VENV/bin/pip" install -q --disable-pip-version-check "${PY_TOOLS[@]}"
  touch "$stamp"
fi

if ! command -v kubectl >/dev/null && ! command -v kustomize >/dev/null; then
  log "warning: neither kubectl nor kustomize is on PATH: the Kubernetes render test will fail"
fi
log "ok"
