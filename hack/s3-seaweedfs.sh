#!/usr/bin/env bash
# Opt-in: the object-storage e2e tests against a real S3 server, SeaweedFS's S3 gateway.
#
# Builds SeaweedFS's `weed` from the Go module proxy (hack/seaweedfs, its own module: it pulls
# large cloud SDKs the platform's go.mod must not carry) into a cache outside the repository,
# starts `weed server -s3` on free loopback ports with a data directory of its own and one S3
# identity, then runs the thumbnails example's e2e tests (TestUploadMakesThumbnails and the
# object source's) with KNFAAS_TEST_S3_ENDPOINT and its keys, so they use that store instead of
# an in-memory one. hack/test.sh does not run it.
#
# Usage: hack/s3-seaweedfs.sh [--build-only] [go test -run pattern]
#   --build-only   build (or find the cached) weed, print its path, start nothing
#   pattern        which e2e tests to run (default: all of examples/thumbnails)
# Environment: KNFAAS_SEAWEEDFS_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/seaweedfs)
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

cache_dir="${KNFAAS_SEAWEEDFS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/seaweedfs}"
build_only=false
pattern=.
for arg in "$@"; do
  case "$arg" in
    --build-only) build_only=true ;;
    -h|--help) sed -n '2,15p' "$0"; exit 0 ;;
    *) pattern=$arg ;;
  esac
done

log() { echo "s3-seaweedfs: $*" >&2; }

# build_weed prints the path of the cached weed, building it when the cache has none for this
# exact module (go.mod, go.sum) and Go version.
build_weed() {
  local src=hack/seaweedfs key bin
  key=$( { go version; cat "$src/go.mod" "$src/go.sum"; } | sha256sum | cut -c1-16)
  bin="$cache_dir/weed-$key"
  if [ ! -x "$bin" ]; then
    mkdir -p "$cache_dir"
    log "building weed (first time only; cached as $bin)"
    local start=$SECONDS
    go build -C "$src" -trimpath -ldflags "-s -w" -o "$bin.tmp.$$" github.com/seaweedfs/seaweedfs/weed
    mv "$bin.tmp.$$" "$bin"
    log "built weed in $((SECONDS - start))s"
  fi
  echo "$bin"
}

weed=$(build_weed)
if $build_only; then
  echo "$weed"
  exit 0
fi

work=$(mktemp -d)
weed_pid=
cleanup() {
  if [ -n "$weed_pid" ]; then
    kill "$weed_pid" 2>/dev/null || true
    wait "$weed_pid" 2>/dev/null || true
  fi
  rm -rf "$work"
}
trap cleanup EXIT

# shellcheck disable=SC1091 # sourced relative to the repository root, which the script cd-s to
source hack/free-port.sh

# Every port explicit: weed's default gRPC port is the HTTP port + 10000, which may be taken.
free_port master_port; free_port master_grpc
free_port volume_port; free_port volume_grpc
free_port filer_port; free_port filer_grpc
free_port s3_port; free_port s3_grpc

access_key="knfaas-e2e"
secret_key=$(head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n')
cat >"$work/s3.json" <<JSON
{"identities": [{"name": "knfaas-e2e", "credentials": [{"accessKey": "$access_key", "secretKey": "$secret_key"}],
  "actions": ["Admin", "Read", "List", "Tagging", "Write"]}]}
JSON
mkdir -p "$work/data"

log "starting weed server -s3 on 127.0.0.1:$s3_port (log: weed.log in the work directory, printed on failure)"
"$weed" server -ip=127.0.0.1 -ip.bind=127.0.0.1 -dir="$work/data" \
  -master.port="$master_port" -master.port.grpc="$master_grpc" -master.telemetry=false -master.volumeSizeLimitMB=64 \
  -volume.port="$volume_port" -volume.port.grpc="$volume_grpc" \
  -filer -filer.port="$filer_port" -filer.port.grpc="$filer_grpc" -filer.localSocket="$work/filer.sock" \
  -s3 -s3.port="$s3_port" -s3.port.grpc="$s3_grpc" -s3.port.iceberg=0 -s3.port.lance=0 \
  -s3.config="$work/s3.json" -s3.localSocket="$work/s3.sock" >"$work/weed.log" 2>&1 &
weed_pid=$!

# Ready when a signed request answers: list the buckets with the e2e identity (anonymous
# requests are refused once identities are configured, so a 403 is not enough).
ready=false
start=$SECONDS
while [ $((SECONDS - start)) -lt 120 ]; do
  if ! kill -0 "$weed_pid" 2>/dev/null; then
    cat "$work/weed.log" >&2
    log "weed exited during start-up"
    exit 1
  fi
  if curl -fsS -o /dev/null --aws-sigv4 "aws:amz:us-east-1:s3" --user "$access_key:$secret_key" "http://127.0.0.1:$s3_port/" 2>/dev/null; then
    ready=true
    break
  fi
  sleep 0.5
done
if ! $ready; then
  tail -50 "$work/weed.log" >&2
  log "the S3 gateway did not answer within 120s"
  exit 1
fi
log "S3 gateway ready after $((SECONDS - start))s"

status=0
KNFAAS_TEST_S3_ENDPOINT="http://127.0.0.1:$s3_port" \
KNFAAS_TEST_S3_ACCESS_KEY_ID="$access_key" \
KNFAAS_TEST_S3_SECRET_ACCESS_KEY="$secret_key" \
KNFAAS_TEST_S3_REGION=us-east-1 \
  go test -count=1 -tags e2e -run "$pattern" -v ./examples/thumbnails/ || status=$?
if [ "$status" -ne 0 ]; then
  log "tests failed; the last lines of weed's log:"
  tail -30 "$work/weed.log" >&2
fi
exit "$status"
