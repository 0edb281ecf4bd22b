#!/usr/bin/env bash
# Measures broker → trigger → warm function throughput, cold start and idle memory beside a
# bare net/http hello server with the same load generator, in one run. Prints figures only.
#   C=32 N=30000 REDIS=real|embedded ./hack/bench-broker.sh
# TRACING=1 measures instead the cost of tracing: delivered events/s with tracing off, 1 % and
# 100 % sampled (OTEL_TRACES_SAMPLER), ROUNDS times each, interleaved, and prints each sampled
# rate as a ratio of the untraced one of the same session.
#   TRACING=1 ROUNDS=3 N=20000 ./hack/bench-broker.sh
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

: "${C:=32}"
: "${N:=30000}"
: "${REDIS:=real}"
: "${TRACING:=0}"
: "${ROUNDS:=3}"

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
export KNFAAS_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/bin"
if [ "$TRACING" != 1 ]; then
  "$work/bench" -knfaas "$work/knfaas" -redis "$redis_url" -c "$C" -n "$N"
  exit
fi

# One run under a tracing setting: prints its delivered events/s. The stream is flushed between
# runs so each starts from an empty broker.
delivered_rate() {
  if [ -n "$redis_url" ]; then redis-cli -u "$redis_url" flushall >/dev/null; fi
  env "$@" "$work/bench" -knfaas "$work/knfaas" -redis "$redis_url" -c "$C" -n "$N" -hello-d 2s -cold 1 \
    | sed -n 's/.* = \([0-9]*\) ev\/s delivered.*/\1/p'
}
declare -A sum=([off]=0 [1%]=0 [100%]=0)
for round in $(seq "$ROUNDS"); do
  off=$(delivered_rate OTEL_SDK_DISABLED=true)
  one=$(delivered_rate OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01)
  all=$(delivered_rate OTEL_TRACES_SAMPLER=parentbased_always_on)
  echo "round $round: off $off ev/s, 1% sampled $one ev/s, 100% sampled $all ev/s"
  sum[off]=$((sum[off] + off)); sum[1%]=$((sum[1%] + one)); sum[100%]=$((sum[100%] + all))
done
python3 - "${sum[off]}" "${sum[1%]}" "${sum[100%]}" "$ROUNDS" <<'PY'
import sys
off, one, full, rounds = (float(x) for x in sys.argv[1:])
print(f"== tracing cost, mean of {rounds:.0f} interleaved rounds: off {off/rounds:.0f} ev/s; "
      f"1% sampled {one/rounds:.0f} ev/s = {one/off:.3f} of off (goal ≥ 0.95); 100% sampled {full/rounds:.0f} ev/s = {full/off:.3f} of off")
PY
