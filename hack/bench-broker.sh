#!/usr/bin/env bash
# Measures broker → trigger → warm function throughput, cold start and idle memory beside a
# bare net/http hello server with the same load generator, in one run. Prints figures only.
#   C=32 N=30000 REDIS=real|embedded ./hack/bench-broker.sh
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

: "${C:=32}"
: "${N:=30000}"
: "${REDIS:=real}"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

go build -o "$work/knfaas" ./cmd/knfaas
go build -o "$work/bench" ./hack/bench/broker

redis_url=""
if [ "$REDIS" = real ]; then
  command -v redis-server >/dev/null || { echo "redis-server missing: run ./hack/test.sh once, or apt-get install redis-server" >&2; exit 1; }
  port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
  redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
  pids+=($!)
  for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done
  redis_url="redis://127.0.0.1:$port/0"
fi

# BENCH_LOCK names a lock file shared with other measurements (the peers' benchmarks take one),
# so two measurements never overlap.
if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>"$BENCH_LOCK"
  flock 9
fi
KNFAAS_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/bin" "$work/bench" -knfaas "$work/knfaas" -redis "$redis_url" -c "$C" -n "$N"
