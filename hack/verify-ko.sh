#!/usr/bin/env bash
# Builds every function image the manifests reference, offline, the way `ko apply` would.
#
# Renders config/ (kubectl kustomize) and examples/*/config, writes a minimal base image
# (nonroot user, CA bundle; hack/koimage) into ko's KOCACHE as an OCI layout and points ko at it
# by digest, so no registry is contacted. Then `ko resolve --push=false` must replace every
# ko:// reference, and each image must stay within MAX_IMAGE_BYTES unpacked.
#
# Usage: hack/verify-ko.sh
# Environment: MAX_IMAGE_BYTES (default 25000000), KNFAAS_KO_CACHE (default
# ${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/ko: the ko binary and KOCACHE).
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."
# shellcheck disable=SC1091 # sourced relative to the repository root, which the script cd-s to
source hack/versions.env

max_image_bytes=${MAX_IMAGE_BYTES:-25000000}
cache_dir="${KNFAAS_KO_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/ko}"
log() { echo "verify-ko: $*" >&2; }

work=$(mktemp -d)
# ko names the images it writes after the layout's path, and a repository name may only hold
# lower-case letters, digits and _-./ (mktemp's names have capitals): it goes in the cache dir.
layout_dir="$cache_dir/layout-$(openssl rand -hex 8)"
mkdir -p "$layout_dir"
trap 'rm -rf "$work" "$layout_dir"' EXIT

# The manifests ko would resolve: the platform's config and each example's.
rendered=()
render() {
  local target=$1 out f
  out="$work/$(echo "$target" | tr '/' '_').yaml"
  if [ -f "$target/kustomization.yaml" ]; then
    kubectl kustomize "$target" >"$out"
  else
    : >"$out"
    for f in "$target"/*.yaml; do
      [ -f "$f" ] || continue
      { echo "---"; cat "$f"; echo; } >>"$out"
    done
  fi
  rendered+=("$out")
}
render config
for d in examples/*/config; do
  [ -d "$d" ] && render "$d"
done

# image_fields FILE prints the value of every "image:" field.
image_fields() { sed -n 's|^[[:space:]-]*image:[[:space:]]*"\{0,1\}\([^"[:space:]]*\).*|\1|p' "$1"; }

refs=$(cat "${rendered[@]}" | image_fields /dev/stdin | grep '^ko://' | sort -u || true)
if [ -z "$refs" ]; then
  log "no ko:// image references in the manifests; nothing to build"
  exit 0
fi
log "building $(echo "$refs" | wc -l) images: $(echo "$refs" | tr '\n' ' ')"

ko_bin="$cache_dir/bin/ko-$KO_VERSION"
if [ ! -x "$ko_bin" ]; then
  log "building ko $KO_VERSION (first time only)"
  mkdir -p "$cache_dir/bin"
  GOBIN="$work/gobin" go install "github.com/google/ko@$KO_VERSION"
  mv "$work/gobin/ko" "$ko_bin"
fi

export KOCACHE="$cache_dir/kocache"
mkdir -p "$KOCACHE"
base=$(go run -C hack/koimage . base -kocache "$KOCACHE")
log "base image $base (from KOCACHE)"

: >"$work/names"
status=0
# KO_DOCKER_REPO only names the results; with --push=false nothing is pushed.
export KO_DEFAULTBASEIMAGE="$base" KO_DOCKER_REPO=knfaas
for f in "${rendered[@]}"; do
  grep -q 'ko://' "$f" || continue
  if ! "$ko_bin" resolve --push=false --platform linux/amd64 -f "$f" >"$f.resolved" 2>"$f.log"; then
    log "ko resolve failed for $f:"
    sed 's/^/  /' "$f.log" >&2
    status=1
    continue
  fi
  if grep -n 'ko://' "$f.resolved" >&2; then
    log "ko resolve left ko:// references in $f"
    status=1
  fi
done
[ $status -eq 0 ] || exit 1

# To measure the images ko writes them to an OCI layout. One `ko build` per image, one after the
# other: ko's layout publisher rewrites index.json without a lock, so parallel builds into one
# layout (as `ko resolve --oci-layout-path` does) can fail or lose entries.
while IFS= read -r ref; do
  if ! out=$("$ko_bin" build --push=false --platform linux/amd64 --oci-layout-path "$layout_dir" "$ref" 2>"$work/build.log"); then
    log "ko build failed for $ref:"
    sed 's/^/  /' "$work/build.log" >&2
    exit 1
  fi
  echo "${out##*@} $ref" >>"$work/names"
done <<<"$refs"

log "image sizes (limit $max_image_bytes bytes unpacked):"
go run -C hack/koimage . sizes -layout "$layout_dir" -max "$max_image_bytes" -names "$work/names"
log "OK: every ko:// reference resolved offline"
