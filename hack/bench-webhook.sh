#!/usr/bin/env bash
# Benchmarks the webhook intake (signed 1 KiB GitHub deliveries -> verify -> dedup claim on a
# real redis-server -> publish to a broker stand-in -> 202) beside a bare net/http hello
# handler, with the same Go load generator in the same run, and prints the throughputs, their
# ratio and p50/p99 latencies. Knobs: WEBHOOK_BENCH_SECONDS (per target and phase, default 5),
# WEBHOOK_BENCH_WORKERS (concurrent connections, default 32). BENCH_LOCK names a lock file
# shared with other measurements (as hack/bench-broker.sh takes), so two never overlap.
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

command -v redis-server >/dev/null || { echo "hack/bench-webhook.sh: redis-server not found (hack/test.sh installs it)" >&2; exit 1; }

if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>"$BENCH_LOCK"
  flock 9
fi

go test -run '^$' -bench '^BenchmarkIntakeVsHello$' -benchtime 1x -timeout 30m ./functions/webhook
