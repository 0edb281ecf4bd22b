#!/usr/bin/env bash
# Measures broker → trigger → warm function throughput, cold start and idle memory beside a
# bare net/http hello server with the same load generator, in one run, then the delivery p99 at
# half the delivered rate beside hello's p99 at that rate. Prints figures only.
#   C=32 N=30000 REDIS=real|embedded ./hack/bench-broker.sh
# ARGS passes more flags to the bench program, e.g. ARGS="-cpuprofile cpu.pprof -cold 1" writes
# a CPU profile of the runtime taken during the saturating run.
# TRACING=1 measures instead the cost of tracing: delivered events/s with tracing off, 1 % and
# 100 % sampled (OTEL_TRACES_SAMPLER), ROUNDS times each, interleaved, and prints each sampled
# rate as a ratio of the untraced one of the same session.
#   TRACING=1 ROUNDS=3 N=20000 ./hack/bench-broker.sh
# RED=1 measures the cost of the Services' request metrics (KNFAAS_REQUEST_METRICS): delivered
# events/s with them off and on (tracing as `knfaas up` has it, so every request leaves an
# exemplar), ROUNDS times each, interleaved, and prints the ratio on/off of the same session.
#   RED=1 ROUNDS=3 N=20000 ./hack/bench-broker.sh
set -o errexit -o nounset -o pipefail
cd "$(dirname "$0")/.."

: "${C:=32}"
: "${N:=30000}"
: "${REDIS:=real}"
: "${TRACING:=0}"
: "${RED:=0}"
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
  redis_pid=${pids[0]}
fi

# BENCH_LOCK names a lock file shared with other measurements (the peers' benchmarks take one),
# so two measurements never overlap.
if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>"$BENCH_LOCK"
  flock 9
fi
export KNFAAS_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/bin"
if [ "$TRACING" != 1 ] && [ "$RED" != 1 ]; then
  # Tracing is sampled off unless the caller sets a sampler: the figures are the event path's.
  export OTEL_TRACES_SAMPLER="${OTEL_TRACES_SAMPLER:-always_off}"
  echo "tracing sampler: $OTEL_TRACES_SAMPLER; load average: $(cut -d' ' -f1-3 /proc/loadavg)"
  # shellcheck disable=SC2086 # ARGS is a list of flags
  "$work/bench" -knfaas "$work/knfaas" -redis "$redis_url" -redis-pid "${redis_pid:-0}" -c "$C" -n "$N" ${ARGS:-}
  exit
fi

# One run under a tracing setting: prints its delivered events/s. The stream is flushed between
# runs so each starts from an empty broker.
delivered_rate() {
  if [ -n "$redis_url" ]; then redis-cli -u "$redis_url" flushall >/dev/null; fi
  env "$@" "$work/bench" -knfaas "$work/knfaas" -redis "$redis_url" -c "$C" -n "$N" -hello-d 2s -cold 1 -half-rounds 0 \
    | sed -n 's/.* = \([0-9]*\) ev\/s delivered.*/\1/p'
}
if [ "$RED" = 1 ]; then
  rounds=()
  for round in $(seq "$ROUNDS"); do
    # Alternate which setting runs first.
    if [ $((round % 2)) = 1 ]; then
      off=$(delivered_rate KNFAAS_REQUEST_METRICS=off); on=$(delivered_rate KNFAAS_REQUEST_METRICS=on)
    else
      on=$(delivered_rate KNFAAS_REQUEST_METRICS=on); off=$(delivered_rate KNFAAS_REQUEST_METRICS=off)
    fi
    echo "round $round: request metrics off $off ev/s, on $on ev/s"
    rounds+=("$off $on")
  done
  python3 - "${rounds[@]}" <<'PY'
import statistics, sys
rs = [tuple(float(x) for x in r.split()) for r in sys.argv[1:]]
print(f"== request metrics cost over {len(rs)} interleaved rounds (mean ev/s: off {statistics.mean(r[0] for r in rs):.0f}, "
      f"on {statistics.mean(r[1] for r in rs):.0f}); median ratio on/off of the same round: {statistics.median(r[1] / r[0] for r in rs):.3f}")
PY
  exit
fi

rounds=()
for round in $(seq "$ROUNDS"); do
  # The order rotates from round to round, so no setting always runs first or last.
  for setting in $(printf 'off\none\nall\n' | tail -n +$(((round - 1) % 3 + 1)); printf 'off\none\nall\n' | head -n $(((round - 1) % 3))); do
    case $setting in
      off) off=$(delivered_rate OTEL_SDK_DISABLED=true) ;;
      one) one=$(delivered_rate OTEL_TRACES_SAMPLER=parentbased_traceidratio OTEL_TRACES_SAMPLER_ARG=0.01) ;;
      all) all=$(delivered_rate OTEL_TRACES_SAMPLER=parentbased_always_on) ;;
    esac
  done
  echo "round $round: off $off ev/s, 1% sampled $one ev/s, 100% sampled $all ev/s"
  rounds+=("$off $one $all")
done
# Each round's rates are divided by that round's untraced rate; the median of those ratios is
# printed (a busy machine makes single rounds swing), with the means of the rates.
python3 - "${rounds[@]}" <<'PY'
import statistics, sys
rs = [tuple(float(x) for x in r.split()) for r in sys.argv[1:]]
mean = [statistics.mean(r[i] for r in rs) for i in range(3)]
one = statistics.median(r[1] / r[0] for r in rs)
full = statistics.median(r[2] / r[0] for r in rs)
print(f"== tracing cost over {len(rs)} interleaved rounds (mean ev/s: off {mean[0]:.0f}, 1% {mean[1]:.0f}, 100% {mean[2]:.0f}); "
      f"median ratio to the untraced run of the same round: 1% sampled {one:.3f} (goal ≥ 0.95), 100% sampled {full:.3f}")
PY
