#!/usr/bin/env bash
# Measures a new user's first run: for each REF in turn, a fresh clone (committed work only)
# with an EMPTY Go build cache of its own, `go run ./cmd/knfaas up` (default manifests, a free
# port) until /healthz answers 200 (up answers only once everything is printed), then SIGINT.
# Figures, never a verdict: it prints them and asserts no time.
#
# Per REF it prints the CLI build (go run until up's first line) and the packages go run
# compiled (go run -v), the function builds (up's own "compiled dependencies (N packages)" and
# "built N functions in …"), the time to ready (wall, until /healthz answers), the CPU time
# (user+sys of the whole process tree: go run, the compilers, knfaas, its builds and what it
# started, as getrusage of waited-for children counts them) and the load average before and
# at ready. Then, from the now warm cache, the sizes of the CLI binary (go build) and of the
# function binaries up built, and whether they are statically linked.
#
# CPU time is the figure to compare on a shared machine: wall time grows with whatever else
# runs; CPU time hardly does. Measure the refs to compare in one run, one after the other.
#
# The module cache (GOMODCACHE) is shared with the caller's, so no module is downloaded: the
# figures are compile, link and start-up only. Each REF's build cache (GBs), function binary
# cache and state directory live under a temporary directory removed before the next REF.
#
# Usage: hack/bench-firstrun.sh [REF...]     (default: HEAD)
#   e.g. hack/bench-firstrun.sh "$(git merge-base main HEAD)" HEAD
#   BENCH_FIRSTRUN_TIMEOUT  seconds to wait for /healthz, per REF (default 3600)
#   BENCH_LOCK              a lock file shared with other measurements, so two never overlap
#   BENCH_MIN_FREE_GB       refuse to start with less free disk than this (default 5)
#   BENCH_GOCACHE_SEED      start each REF from a copy (hard links) of this build cache instead of
#                           an empty one: to measure only what follows a phase captured earlier,
#                           e.g. a cache holding just the CLI's packages. The figures then exclude
#                           that phase; the output says so.
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

timeout_s=${BENCH_FIRSTRUN_TIMEOUT:-3600}
min_free_gb=${BENCH_MIN_FREE_GB:-5}
refs=("$@")
[ ${#refs[@]} -gt 0 ] || refs=(HEAD)
shas=()
for r in "${refs[@]}"; do
  shas+=("$(git rev-parse --verify "$r^{commit}")")
done

if [ -n "${BENCH_LOCK:-}" ]; then
  exec 9>"$BENCH_LOCK"
  flock 9
fi

modcache=$(go env GOMODCACHE)
echo "go:         $(go env GOVERSION), $(nproc) cores, CGO_ENABLED=$(go env CGO_ENABLED), GOFLAGS=$(go env GOFLAGS)"
seed=${BENCH_GOCACHE_SEED:-}
if [ -n "$seed" ]; then
  echo "GOCACHE:    for each ref a copy (hard links) of $seed, NOT empty: what it holds is not measured"
else
  echo "GOCACHE:    empty for each ref, under a temporary directory removed after it"
fi
echo "GOMODCACHE: shared with the caller's: no downloads are measured"

tmp="" pgid=""
cleanup() {
  if [ -n "$pgid" ] && kill -0 -- "-$pgid" 2>/dev/null; then
    kill -INT -- "-$pgid" 2>/dev/null || true
    sleep 5
    kill -KILL -- "-$pgid" 2>/dev/null || true
  fi
  pgid=""
  if [ -n "$tmp" ]; then
    chmod -R u+w "$tmp" 2>/dev/null || true
    rm -rf "$tmp"
  fi
  tmp=""
}
trap cleanup EXIT

now() { date +%s.%N; }
loadavg() { cut -d' ' -f1-3 /proc/loadavg; }

# measure SHA: one first run; prints its figures and returns non-zero when up was not ready.
measure() {
  local sha=$1 started first_line="" built="" deps="" ready="" addr="" pid load_before load_ready
  local free_gb
  free_gb=$(df -P -BG "${TMPDIR:-/tmp}" | awk 'NR==2 {sub("G", "", $4); print $4}')
  echo
  echo "== $(git log -1 --format='%h %s' "$sha" | cut -c1-100)"
  if [ "$free_gb" -lt "$min_free_gb" ]; then
    echo "not measured: ${free_gb} GB free, under BENCH_MIN_FREE_GB=$min_free_gb (a cold build cache takes GBs)"
    return 1
  fi
  tmp=$(mktemp -d "${TMPDIR:-/tmp}/knfaas-firstrun.XXXXXX")
  git clone --quiet --no-checkout "$PWD" "$tmp/src"
  git -C "$tmp/src" checkout --quiet "$sha"
  if [ -n "$seed" ]; then
    cp -al "$seed" "$tmp/gocache"
  else
    mkdir -p "$tmp/gocache"
  fi
  load_before=$(loadavg)

  started=$(now)
  (
    cd "$tmp/src"
    export GOCACHE="$tmp/gocache" GOMODCACHE="$modcache" XDG_CACHE_HOME="$tmp/cache" XDG_STATE_HOME="$tmp/state"
    # setsid: its own process group, so one SIGINT reaches knfaas (go run and time let the
    # child handle it) and everything it started is stopped with it. -v: go run names each
    # package it compiles on stderr.
    exec setsid /usr/bin/time -f '%U %S' -o "$tmp/cpu" \
      go run -v ./cmd/knfaas up --addr 127.0.0.1:0 --cache-dir "$tmp/bin" --state-dir "$tmp/state/knfaas" </dev/null
  ) >"$tmp/up.out" 2>"$tmp/up.err" &
  pid=$!
  pgid=$pid

  secs() { printf '%.1fs' "$(echo "$1 - $started" | bc)"; }
  # Package import paths, one a line: what go run -v prints (up's own lines have spaces).
  cli_packages() { grep -cE '^[A-Za-z0-9._~/-]+$' "$tmp/up.err" || true; }
  report() {
    if [ -n "$first_line" ]; then
      echo "CLI build:        $(secs "$first_line") wall (go run until up's first line), $(cli_packages) packages compiled"
    else
      echo "CLI build:        not finished ($(cli_packages) packages compiled so far)"
    fi
    echo "function deps:    ${deps:-not finished}"
    echo "function builds:  ${built:-not finished} (up's own figure)"
  }

  while :; do
    if ! kill -0 "$pid" 2>/dev/null; then
      echo "knfaas up exited before it was ready, after $(secs "$(now)"); its output:"
      grep -vE ' so far \(|^[A-Za-z0-9._~/-]+$' "$tmp/up.out" "$tmp/up.err" || true
      report
      return 1
    fi
    if [ -z "$first_line" ] && [ -s "$tmp/up.out" ]; then
      first_line=$(now)
    fi
    if [ -z "$deps" ]; then
      deps=$(sed -n 's/^compiled dependencies (\(.*\)) in \(.*\)$/\1 in \2/p' "$tmp/up.out" | head -1)
    fi
    if [ -z "$built" ]; then
      built=$(sed -n 's/^built \([0-9]* functions in .*\)$/\1/p' "$tmp/up.out" | head -1)
    fi
    if [ -z "$addr" ]; then
      addr=$(sed -n 's|^listening on http://\([^ ]*\) .*|\1|p' "$tmp/up.out" | head -1)
    fi
    if [ -n "$addr" ] && curl -fsS -o /dev/null --max-time 2 "http://$addr/healthz"; then
      ready=$(now)
      break
    fi
    if [ "$(echo "$(now) - $started > $timeout_s" | bc)" = 1 ]; then
      echo "not ready within BENCH_FIRSTRUN_TIMEOUT=${timeout_s}s; up's last line: $(tail -n 1 "$tmp/up.out")"
      report
      echo "load avg:         $load_before (before), $(loadavg) (at the timeout)"
      return 1
    fi
    sleep 0.5
  done
  load_ready=$(loadavg)

  kill -INT -- "-$pgid"
  wait "$pid" || true
  pgid=""

  local user sys
  read -r user sys < <(tail -1 "$tmp/cpu") # time notes a non-zero exit on a line before
  report
  echo "time to ready:    $(secs "$ready") wall (until /healthz answers)"
  echo "CPU time:         $(echo "$user + $sys" | bc)s (user ${user}s, sys ${sys}s; the whole process tree, start to exit)"
  echo "load avg:         $load_before (before), $load_ready (at ready)"
  echo "GOCACHE size:     $(du -sh "$tmp/gocache" | cut -f1)"

  # Sizes, from the warm cache: the CLI as go build links it, and the function binaries.
  (
    cd "$tmp/src"
    GOCACHE="$tmp/gocache" GOMODCACHE="$modcache" go build -o "$tmp/knfaas" ./cmd/knfaas
  )
  echo "CLI binary:       $(stat -c %s "$tmp/knfaas") bytes (go build; $(file -b "$tmp/knfaas" | grep -oE 'statically linked|dynamically linked'))"
  local f total=0 n=0 linking=""
  for f in "$tmp"/bin/*; do
    [ -f "$f" ] && [ -x "$f" ] || continue
    case "$(basename "$f")" in mailpit*) continue ;; esac
    total=$((total + $(stat -c %s "$f")))
    n=$((n + 1))
    linking="$linking
$(file -b "$f" | grep -oE 'statically linked|dynamically linked')"
  done
  if [ "$n" -gt 0 ]; then
    echo "function binaries: $n, $total bytes in all, $((total / n)) on average ($(echo "$linking" | sed '/^$/d' | sort | uniq -c | sed 's/^ *//' | paste -sd, -))"
  fi
  cleanup
}

status=0
for sha in "${shas[@]}"; do
  measure "$sha" || status=1
  cleanup
done
exit "$status"
