#!/usr/bin/env bash
# The test command: starts (installing if needed) Redis and PostgreSQL, then runs every test of the
# workspace: unit tests and the cross-process suite in tests/ (real gateway and worker processes).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/services.sh
cargo test --workspace --locked "$@"
