#!/usr/bin/env bash
# Builds every image the manifests reference, offline, the way `ko apply` would: the functions'
# and the RedisStreamBroker class's (controller, ingress, dispatcher).
#
# Renders config/ (kubectl kustomize) and examples/*/config, writes a minimal base image
# (nonroot user, CA bundle; hack/koimage) into ko's KOCACHE as an OCI layout and points ko at it
# by digest, so no registry is contacted. Then `ko resolve --push=false` must replace every
# ko:// reference. Shape rules: a function image (ko://…/functions/<name>) is referenced only by
# Knative Services; a Broker class image (ko://…/cmd/broker-*) only by Deployments labelled
# app.kubernetes.io/component: redis-broker; no other ko:// reference is allowed. Every image runs
# as the base's non-root user with its binary as the whole entrypoint, and stays within its bound
# unpacked: MAX_IMAGE_BYTES for functions, MAX_CLASS_IMAGE_BYTES for the class's images (they
# link Kubernetes and Knative client code, which functions never do).
#
# Usage: hack/verify-ko.sh
# Environment: MAX_IMAGE_BYTES (default 25000000), MAX_CLASS_IMAGE_BYTES (default 80000000),
# KNFAAS_KO_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/ko: the ko binary and KOCACHE).
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."
# shellcheck disable=SC1091 # sourced relative to the repository root, which the script cd-s to
source hack/versions.env

max_image_bytes=${MAX_IMAGE_BYTES:-25000000}
max_class_image_bytes=${MAX_CLASS_IMAGE_BYTES:-80000000}
module=github.com/knfaas/knfaas
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

# kinds_of_refs FILE prints "<kind> <component label> <ko:// ref>" for every ko:// image field,
# with the kind and the app.kubernetes.io/component label of the document holding it.
kinds_of_refs() {
  awk '
    BEGIN { component = "-" }
    /^---/ { kind = ""; component = "-"; next }
    /^kind:/ && kind == "" { kind = $2 }
    /^    app.kubernetes.io\/component:/ && component == "-" { component = $2 }
    /^[[:space:]-]*image:[[:space:]]*"?ko:\/\// {
      ref = $0; sub(/^[[:space:]-]*image:[[:space:]]*"?/, "", ref); sub(/".*$/, "", ref); sub(/[[:space:]].*$/, "", ref)
      print kind, component, ref
    }' "$1"
}
shape_status=0
for f in "${rendered[@]}"; do
  while read -r kind component ref; do
    case "$ref" in
      ko://$module/functions/*|ko://$module/examples/*/functions/*)
        [ "$kind" = Service ] || { log "$ref is a function image, but a $kind references it (only Knative Services run functions)"; shape_status=1; } ;;
      ko://$module/cmd/broker-controller|ko://$module/cmd/broker-ingress|ko://$module/cmd/broker-dispatcher)
        [ "$kind" = Deployment ] && [ "$component" = redis-broker ] ||
          { log "$ref is a RedisStreamBroker class image, but a $kind (component $component) references it (only the class's Deployments, component redis-broker)"; shape_status=1; } ;;
      *)
        log "$ref is neither a function (…/functions/<name>) nor a RedisStreamBroker class image (…/cmd/broker-*)"; shape_status=1 ;;
    esac
  done < <(kinds_of_refs "$f")
done
[ $shape_status -eq 0 ] || { log "FAILED: image references of the wrong shape"; exit 1; }
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
  bound=$max_image_bytes
  case "$ref" in ko://$module/cmd/broker-*) bound=$max_class_image_bytes ;; esac
  echo "${out##*@} $ref $bound" >>"$work/names"
done <<<"$refs"

log "image sizes (bounds: functions $max_image_bytes, Broker class $max_class_image_bytes bytes unpacked):"
go run -C hack/koimage . sizes -layout "$layout_dir" -max "$max_image_bytes" -names "$work/names"
log "OK: every ko:// reference resolved offline"
