#!/usr/bin/env bash
# Measures how the cost of the broker path grows, each dimension as a table beside a bare
# net/http hello server loaded by the same closed-loop generator in the same run: fan-out
# (1, 10, 100 Triggers; 100 Triggers matching 1 % each), payload (128 B to 1 MiB), concurrency
# (c = 8 to 512, with back-pressure), warm instances (1, 10, 50) and backlog (1 M events queued
# while the subscriber is down, then drained). Real redis-server; knfaas is built once. Prints
# figures only.
#   ./hack/bench-scale.sh                      # every dimension, full counts
#   ONLY=fanout,backlog QUICK=1 ./hack/bench-scale.sh
#   BACKLOG=200000 ONLY=backlog ./hack/bench-scale.sh
# BENCH_LOCK names a lock file shared with other measurements (the peers' benchmarks take one),
# so two measurements never overlap.
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

: "${ONLY:=}"
: "${QUICK:=0}"
: "${BACKLOG:=}"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

command -v redis-server >/dev/null || { echo "redis-server missing: run ./hack/test.sh once, or apt-get install redis-server" >&2; exit 1; }
go build -o "$work/knfaas" ./cmd/knfaas
go build -o "$work/bench" ./hack/bench/scale

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>"$BENCH_LOCK"
  flock 9
fi
export KNFAAS_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/bin"
args=(-knfaas "$work/knfaas" -redis "redis://127.0.0.1:$port/0" -only "$ONLY")
if [ "$QUICK" = 1 ]; then args+=(-quick); fi
if [ -n "$BACKLOG" ]; then args+=(-backlog "$BACKLOG"); fi
"$work/bench" "${args[@]}"
