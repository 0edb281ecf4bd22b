#!/usr/bin/env bash
# Runs the whole test suite: unit, fuzz seeds, e2e and fault tests, and manifest verification.
# Installs what it needs (redis-server; chromium for the dashboard's browser test) from Debian's
# packages when missing.
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

install_debian_packages() {
  local missing=()
  command -v redis-server >/dev/null || missing+=(redis-server)
  # The dashboard's e2e test drives a headless Chromium (internal/runtime/dashboard).
  command -v chromium >/dev/null || command -v chromium-headless-shell >/dev/null || missing+=(chromium)
  if [ ${#missing[@]} -gt 0 ]; then
    echo "hack/test.sh: installing ${missing[*]} from Debian's packages"
    local sudo=""
    [ "$(id -u)" -eq 0 ] || sudo="sudo"
    $sudo apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  fi
}

install_debian_packages
# Installed above, so the dashboard's browser test must find it rather than skip.
export KNFAAS_REQUIRE_CHROMIUM=1

echo "== go vet"
go vet ./...
go vet -tags e2e ./...

echo "== gofmt"
unformatted=$(gofmt -l $(git ls-files '*.go' 2>/dev/null || find . -name '*.go'))
if [ -n "$unformatted" ]; then
  echo "gofmt would change: $unformatted" >&2
  exit 1
fi

echo "== unit tests"
go test -count=1 ./...

# With the race detector, and KNFAAS_RACE=1 builds the runtime (internal/harness/runtimetest) and the
# functions it runs (internal/runtime/serving.Builder) with it too; a test fails when their logs report
# a data race. This pass also reruns the unit tests, now under -race.
echo "== e2e and fault tests (build tag e2e, -race)"
KNFAAS_RACE=1 CGO_ENABLED=1 go test -count=1 -race -tags e2e -timeout 40m ./...

for script in hack/verify-*.sh; do
  [ -e "$script" ] || continue
  echo "== $script"
  "$script"
done
