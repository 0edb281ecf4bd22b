#!/usr/bin/env bash
# Measures delivered events/s through the RedisStreamBroker data plane (broker-ingress and
# broker-dispatcher processes on a real redis-server → a no-op sink) beside a bare net/http hello
# server under the same closed-loop load, in one run. Prints figures only.
#   C=32 D=15s SIZE=128 ./hack/bench-brokerclass.sh
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

: "${C:=32}"
: "${D:=15s}"
: "${SIZE:=128}"

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

command -v redis-server >/dev/null || { echo "redis-server missing" >&2; exit 1; }
go build -o "$work/broker-ingress" ./cmd/broker-ingress
go build -o "$work/broker-dispatcher" ./cmd/broker-dispatcher
go build -o "$work/bench" ./hack/bench-brokerclass

port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" --daemonize no >"$work/redis.log" 2>&1 &
pids+=($!)
for _ in $(seq 50); do redis-cli -p "$port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# BENCH_LOCK names a lock file shared with other measurements (the peers' benchmarks take one),
# so two measurements never overlap.
if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>"$BENCH_LOCK"
  flock 9
fi
"$work/bench" -ingress "$work/broker-ingress" -dispatcher "$work/broker-dispatcher" \
  -redis "redis://127.0.0.1:$port/0" -c "$C" -d "$D" -size "$SIZE"
