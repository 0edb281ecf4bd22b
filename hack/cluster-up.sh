#!/usr/bin/env bash
# Brings knfaas up on a throw-away kind cluster, for users who have Docker: creates the cluster
# with Knative Serving (Kourier) and Eventing via the `kn quickstart` plugin, then builds every
# function with ko, loads the images into the kind nodes and applies config/ and triggers/.
#
# The Secret templates in config/3xx-* carry CHANGE-ME placeholders; this script replaces them
# with one random value for this cluster only (read them back with kubectl get secret). Never
# use it for a cluster that matters: fill the templates yourself (README, "Deploy to a cluster").
#
# Usage: hack/cluster-up.sh            (CLUSTER_NAME=knfaas by default)
#        hack/cluster-up.sh --delete   (deletes the kind cluster)
# Needs: docker, kind, kubectl, kn with the quickstart plugin (kn quickstart), ko.
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."

cluster=${CLUSTER_NAME:-knfaas}
log() { echo "cluster-up: $*" >&2; }

if [ "${1:-}" = "--delete" ]; then
  kind delete cluster --name "$cluster"
  exit 0
fi

for tool in docker kind kubectl kn ko; do
  command -v "$tool" >/dev/null || { log "$tool is required"; exit 1; }
done
kn quickstart --help >/dev/null 2>&1 || { log "the kn quickstart plugin is required (kn-plugin-quickstart)"; exit 1; }

if kind get clusters 2>/dev/null | grep -qx "$cluster"; then
  log "kind cluster $cluster exists; reusing it"
else
  log "creating kind cluster $cluster with Knative Serving and Eventing (kn quickstart)"
  kn quickstart kind --name "$cluster"
fi
kubectl config use-context "kind-$cluster" >/dev/null

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

# One random value for every CHANGE-ME placeholder, so the Redis password and the url that
# carries it stay equal.
secret=$(openssl rand -hex 16)
kubectl kustomize config | sed "s/CHANGE-ME/$secret/g" >"$work/config.yaml"

log "building functions with ko and applying config/ (images are loaded into the kind nodes)"
export KO_DOCKER_REPO=kind.local KIND_CLUSTER_NAME="$cluster"
ko apply -f "$work/config.yaml"
kubectl apply -f triggers/

log "waiting for Redis, the Broker and the Knative Services"
kubectl -n knfaas rollout status statefulset/redis --timeout=180s
kubectl -n knfaas wait --for=condition=Ready broker/default --timeout=180s
kubectl -n knfaas wait --for=condition=Ready ksvc --all --timeout=300s
kubectl -n knfaas get ksvc,broker,trigger,pingsource
log "ready: public functions answer on the URLs listed above"
