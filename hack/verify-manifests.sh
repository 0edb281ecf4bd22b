#!/usr/bin/env bash
# Verifies the manifests without a cluster: `knfaas verify` (strict decoding into the Kubernetes
# and Knative Go types, Knative's SetDefaults + Validate, and the cross-checks: brokers, refs,
# Secret/ConfigMap keys, ko:// paths, event routing, trigger loops, kustomization lists) over
# the platform's config/ and triggers/, then over each example together with the platform it
# runs on; and `kubectl kustomize` renders every kustomization.
#
# Usage: hack/verify-manifests.sh
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

log() { echo "verify-manifests: $*" >&2; }

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go build -o "$work/knfaas" ./cmd/knfaas

status=0
log "platform: config/ triggers/"
"$work/knfaas" verify -f config -f triggers || status=1

for example in examples/*/; do
  example=${example%/}
  args=(-f config -f triggers)
  for sub in config triggers; do
    [ -d "$example/$sub" ] && args+=(-f "$example/$sub")
  done
  [ ${#args[@]} -gt 4 ] || continue
  log "$example (with the platform)"
  "$work/knfaas" verify "${args[@]}" || status=1
done

for k in config/kustomization.yaml examples/*/kustomization.yaml examples/*/*/kustomization.yaml; do
  [ -f "$k" ] || continue
  dir=$(dirname "$k")
  if kubectl kustomize "$dir" >"$work/rendered.yaml"; then
    log "kubectl kustomize $dir: $(grep -c '^kind:' "$work/rendered.yaml") objects"
  else
    log "kubectl kustomize $dir failed"
    status=1
  fi
done

[ $status -eq 0 ] || { log "FAILED"; exit 1; }
log "OK"
