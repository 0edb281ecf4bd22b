#!/usr/bin/env bash
# Measures a new user's first run: a fresh clone of REF (default HEAD; committed work only)
# with an EMPTY Go build cache, `go run ./cmd/knfaas up` until /healthz answers. Prints the CLI
# build (go run until up's first line), the function builds (up's "built N functions in …"), the
# time to ready (until /healthz answers) and the CPU time of the whole process tree (user+sys),
# with the load average beside them: the figures mean little on a busy machine.
#
# The module cache (GOMODCACHE) is kept, so no module is downloaded: the figures are compile,
# link and start-up only. The build cache, the function binary cache and the state directory
# live under one temporary directory that is removed at exit (the build cache alone is GBs).
#
# Usage: hack/bench-firstrun.sh [REF]
#   BENCH_FIRSTRUN_TIMEOUT  seconds to wait for /healthz (default 3600)
#   BENCH_LOCK              a lock file shared with other measurements, so two never overlap
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

ref=$(git rev-parse "${1:-HEAD}")
timeout_s=${BENCH_FIRSTRUN_TIMEOUT:-3600}

if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>"$BENCH_LOCK"
  flock 9
fi

tmp=$(mktemp -d "${TMPDIR:-/tmp}/knfaas-firstrun.XXXXXX")
pgid=""
cleanup() {
  if [ -n "$pgid" ] && kill -0 -- "-$pgid" 2>/dev/null; then
    kill -INT -- "-$pgid" 2>/dev/null || true
    sleep 5
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  chmod -R u+w "$tmp" 2>/dev/null || true # the module cache is read-only; the build cache is not, but be sure
  rm -rf "$tmp"
}
trap cleanup EXIT

modcache=$(go env GOMODCACHE)
git clone --quiet --no-checkout "$PWD" "$tmp/src"
git -C "$tmp/src" checkout --quiet "$ref"

echo "ref:        $(git -C "$tmp/src" log -1 --format='%h %s' | cut -c1-100)"
echo "go:         $(go env GOVERSION), $(nproc) cores"
echo "GOCACHE:    empty, under the temporary directory (removed at exit)"
echo "GOMODCACHE: kept ($modcache): no downloads are measured"
echo "load avg:   $(cut -d' ' -f1-3 /proc/loadavg) (before)"

export GOCACHE="$tmp/gocache" GOMODCACHE="$modcache" XDG_CACHE_HOME="$tmp/cache" XDG_STATE_HOME="$tmp/state"
mkdir -p "$GOCACHE"

now() { date +%s.%N; }
started=$(now)
(
  cd "$tmp/src"
  # setsid: its own process group, so one SIGINT reaches knfaas (go run and time let the
  # child handle it) and everything it started is stopped with it.
  exec setsid /usr/bin/time -f '%U %S' -o "$tmp/cpu" \
    go run ./cmd/knfaas up --addr 127.0.0.1:0 --cache-dir "$tmp/bin" --state-dir "$tmp/state/knfaas" </dev/null
) >"$tmp/up.out" 2>"$tmp/up.err" &
pid=$!
pgid=$pid

secs() { printf '%.1fs' "$(echo "$1 - $started" | bc)"; }

# partial prints what was reached when up did not get ready: on a loaded machine a first run
# can outlast the timeout, and the CLI build alone is a figure.
partial() {
  echo "$1 after $(secs "$(now)"); its output:" >&2
  grep -v ' so far (' "$tmp/up.out" "$tmp/up.err" >&2 || true
  tail -n 1 "$tmp/up.out" >&2
  if [ -n "$first_line" ]; then
    echo "CLI build:       $(secs "$first_line") (go run until up's first line)"
  else
    echo "CLI build:       not finished"
  fi
  echo "function builds: ${built:-not finished}"
  echo "time to ready:   not ready"
  echo "load avg:        $(cut -d' ' -f1-3 /proc/loadavg) (at the end)"
}

first_line="" built="" ready="" addr=""
while :; do
  if ! kill -0 "$pid" 2>/dev/null; then
    partial "knfaas up exited before it was ready"
    exit 1
  fi
  if [ -z "$first_line" ] && [ -s "$tmp/up.out" ]; then
    first_line=$(now)
  fi
  if [ -z "$built" ]; then
    built=$(sed -n 's/^built [0-9]* functions in \(.*\)$/\1/p' "$tmp/up.out" | head -1)
  fi
  if [ -z "$addr" ]; then
    addr=$(sed -n 's|^listening on http://\([^ ]*\) .*|\1|p' "$tmp/up.out" | head -1)
  fi
  if [ -n "$addr" ] && curl -fsS -o /dev/null --max-time 2 "http://$addr/healthz"; then
    ready=$(now)
    break
  fi
  if [ "$(echo "$(now) - $started > $timeout_s" | bc)" = 1 ]; then
    partial "not ready within BENCH_FIRSTRUN_TIMEOUT=${timeout_s}s"
    exit 1
  fi
  sleep 0.5
done
load_ready=$(cut -d' ' -f1-3 /proc/loadavg)

kill -INT -- "-$pgid"
wait "$pid" || true
pgid=""

read -r user sys < <(tail -1 "$tmp/cpu") # time notes a non-zero exit on a line before
echo "CLI build:       $(secs "$first_line") (go run until up's first line)"
echo "function builds: ${built:-none} (up's own figure)"
echo "time to ready:   $(secs "$ready") (until /healthz answers)"
echo "CPU time:        $(echo "$user + $sys" | bc)s (user ${user}s, sys ${sys}s; go run, compilers, knfaas and its functions)"
echo "load avg:        $load_ready (at ready)"
