#!/usr/bin/env bash
# Server-side dry run of every rendered manifest against a real control plane.
#
# Builds kube-apiserver and etcd from the Go module proxy (hack/controlplane/*, their own
# modules) into a cache outside the repository, starts them on loopback, installs the Knative
# CRDs shipped in the pinned knative.dev/serving and knative.dev/eventing modules, and runs
# `kubectl apply --dry-run=server --validate=strict` on the rendered config/, triggers/,
# docs/eventpolicy/ and examples/*/{config,triggers}. Then it proves the check can fail: every fixture under
# hack/testdata/broken/ must be refused with the message its "# expect:" line names.
#
# No Knative webhooks run, so only the CRDs' OpenAPI schemas (and Kubernetes' own validation and
# Pod Security admission for built-in kinds) judge the objects; Knative's Go validation is
# `knfaas verify`'s job.
#
# Usage: hack/verify-apiserver.sh [--build-only] [FILE|DIR ...]
#   no arguments   verify the repository's manifests and the broken fixtures
#   FILE|DIR ...   dry-run exactly these (a DIR with kustomization.yaml is rendered); exit 1 if
#                  the API server refuses any of them
#   --build-only   build (or find cached) binaries, print their paths, start nothing
# Environment: KNFAAS_CONTROLPLANE_CACHE (default ${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/controlplane)
set -o errexit -o nounset -o pipefail

cd "$(dirname "$0")/.."
# shellcheck disable=SC1091 # sourced relative to the repository root, which the script cd-s to
source hack/versions.env

cache_dir="${KNFAAS_CONTROLPLANE_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/knfaas/controlplane}"
build_only=false
targets=()
for arg in "$@"; do
  case "$arg" in
    --build-only) build_only=true ;;
    -h|--help) sed -n '2,20p' "$0"; exit 0 ;;
    *) targets+=("$arg") ;;
  esac
done

log() { echo "verify-apiserver: $*" >&2; }

# build_binary NAME [LDFLAGS] prints the path of the cached binary, building it when the cache
# has no binary for this exact source (go.mod, go.sum, main.go) and Go version.
build_binary() {
  local name=$1 ldflags=${2:-} src="hack/controlplane/$1"
  local key
  key=$( { go version; cat "$src/go.mod" "$src/go.sum" "$src/main.go"; echo "$ldflags"; } | sha256sum | cut -c1-16)
  local bin="$cache_dir/$name-$key"
  if [ ! -x "$bin" ]; then
    mkdir -p "$cache_dir"
    log "building $name (first time only; cached as $bin)"
    local start=$SECONDS
    go build -C "$src" -trimpath -ldflags "-s -w $ldflags" -o "$bin.tmp.$$" .
    mv "$bin.tmp.$$" "$bin"
    log "built $name in $((SECONDS - start))s"
  fi
  echo "$bin"
}

etcd_bin=$(build_binary etcd)
# The version is stamped so clients that parse the server version (kubectl, Knative) get a
# real one instead of the "v0.0.0-master" of an unstamped build.
apiserver_bin=$(build_binary kube-apiserver "-X k8s.io/component-base/version.gitVersion=$KUBERNETES_VERSION")
if $build_only; then
  echo "$etcd_bin"
  echo "$apiserver_bin"
  exit 0
fi

work=$(mktemp -d)
pids=()

# stop_control_plane ends the etcd and kube-apiserver this script started, and waits for them.
stop_control_plane() {
  local pid
  for pid in "${pids[@]}"; do
    kill "$pid" 2>/dev/null || true
  done
  for pid in "${pids[@]}"; do
    wait "$pid" 2>/dev/null || true
  done
  pids=()
}

cleanup() {
  stop_control_plane
  rm -rf "$work"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# shellcheck disable=SC1091 # sourced relative to the repository root, which the script cd-s to
source hack/free-port.sh

# Service-account keys (the API server refuses to start without them) and a static token; the
# serving certificate is self-signed by the API server into --cert-dir.
openssl genrsa -out "$work/sa.key" 2048 2>/dev/null
openssl rsa -in "$work/sa.key" -pubout -out "$work/sa.pub" 2>/dev/null
token=$(openssl rand -hex 16)
echo "$token,verify,verify,system:masters" >"$work/tokens.csv"
kc() { kubectl --cache-dir "$work/kubecache" "$@"; }
export KUBECONFIG="$work/kubeconfig"

# start_control_plane starts etcd and kube-apiserver on fresh ports and waits until the API server
# is ready. It returns 0 when it is; 2 when a process exited because one of its ports was taken
# meanwhile (both are stopped by then, so the caller may try again on other ports); 1 otherwise.
start_control_plane() {
  local etcd_port etcd_peer_port api_port pid deadline
  free_port etcd_port
  free_port etcd_peer_port
  free_port api_port
  rm -rf "$work/etcd" "$work/certs"

  log "starting etcd on 127.0.0.1:$etcd_port"
  "$etcd_bin" --name verify --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_port" --advertise-client-urls "http://127.0.0.1:$etcd_port" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer_port" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer_port" \
    --initial-cluster "verify=http://127.0.0.1:$etcd_peer_port" \
    --unsafe-no-fsync --log-level warn >"$work/etcd.log" 2>&1 &
  pids+=($!)

  log "starting kube-apiserver $KUBERNETES_VERSION on 127.0.0.1:$api_port"
  "$apiserver_bin" \
    --etcd-servers "http://127.0.0.1:$etcd_port" \
    --bind-address 127.0.0.1 --advertise-address 127.0.0.1 --secure-port "$api_port" \
    --cert-dir "$work/certs" \
    --token-auth-file "$work/tokens.csv" --authorization-mode AlwaysAllow \
    --service-account-issuer https://kubernetes.default.svc.cluster.local \
    --service-account-key-file "$work/sa.pub" --service-account-signing-key-file "$work/sa.key" \
    --service-cluster-ip-range 10.96.0.0/16 \
    --enable-priority-and-fairness=false \
    >"$work/apiserver.log" 2>&1 &
  pids+=($!)

  cat >"$KUBECONFIG" <<KUBECONFIG
apiVersion: v1
kind: Config
clusters:
- name: verify
  cluster:
    server: https://127.0.0.1:$api_port
    insecure-skip-tls-verify: true
users:
- name: verify
  user:
    token: $token
contexts:
- name: verify
  context: {cluster: verify, user: verify}
current-context: verify
KUBECONFIG

  deadline=$((SECONDS + 180))
  until kc get --raw /readyz >/dev/null 2>&1; do
    if [ $SECONDS -ge $deadline ]; then
      log "kube-apiserver did not become ready; last lines of its log and etcd's:"
      tail -n 30 "$work/apiserver.log" "$work/etcd.log" >&2
      return 1
    fi
    for pid in "${pids[@]}"; do
      if ! kill -0 "$pid" 2>/dev/null; then
        if grep -q 'address already in use' "$work/apiserver.log" "$work/etcd.log"; then
          log "a control-plane process found one of its ports taken:"
          grep -h 'address already in use' "$work/apiserver.log" "$work/etcd.log" | cut -c 1-300 | tail -n 2 >&2
          stop_control_plane
          return 2
        fi
        log "a control-plane process exited; last lines of its logs:"
        tail -n 30 "$work/apiserver.log" "$work/etcd.log" >&2
        return 1
      fi
    done
    sleep 1
  done
}

# free_port checks each port just before use, but another program may bind one in between: then
# start again on other ports, up to three times in all.
for attempt in 1 2 3; do
  status=0
  start_control_plane || status=$?
  case $status in
    0) break ;;
    2)
      if [ "$attempt" -eq 3 ]; then
        log "a port was taken on each of $attempt attempts; giving up"
        exit 1
      fi
      log "trying again on other ports"
      ;;
    *) exit 1 ;;
  esac
done
log "kube-apiserver ready"

# The Knative CRDs, straight from the pinned module sources.
module_dir() { go mod download -json "$1" | sed -n 's/^[[:space:]]*"Dir": "\(.*\)",$/\1/p'; }
serving_dir=$(module_dir "knative.dev/serving@$KNATIVE_SERVING_VERSION")
eventing_dir=$(module_dir "knative.dev/eventing@$KNATIVE_EVENTING_VERSION")
crds=()
while IFS= read -r f; do crds+=("$f"); done < <(
  grep -l '^kind: CustomResourceDefinition' "$serving_dir"/config/core/300-resources/*.yaml "$eventing_dir"/config/core/resources/*.yaml | sort)
log "installing ${#crds[@]} Knative CRDs (serving $KNATIVE_SERVING_VERSION, eventing $KNATIVE_EVENTING_VERSION)"
for f in "${crds[@]}"; do
  kc apply --server-side -f "$f" >/dev/null
done
kc wait --for condition=Established --timeout 120s crd --all >/dev/null

# ensure_namespaces FILE... creates, for real, the namespaces the files' objects live in (a dry
# run cannot create them), applying config/100-namespace.yaml so its Pod Security labels are live.
ensure_namespaces() {
  local ns
  kc apply -f config/100-namespace.yaml >/dev/null
  cat "$@" | sed -n 's/^  namespace: *"\{0,1\}\([a-z0-9-]*\)"\{0,1\} *$/\1/p' | sort -u | while IFS= read -r ns; do
    kc get namespace "$ns" >/dev/null 2>&1 || kc create namespace "$ns" >/dev/null
  done
}

# apply_dry_run LABEL FILE... runs the server-side dry run over FILEs; prints the API server's
# answer and fails on any error or warning (a Pod Security "would violate" warning is one).
apply_dry_run() {
  local label=$1 out f args=()
  shift
  out="$work/out-$(echo "$label" | tr '/ ' '__').txt"
  for f in "$@"; do args+=(-f "$f"); done
  if ! grep -q '^kind:' "$@"; then
    log "$label: no objects"
    return 0
  fi
  ensure_namespaces "$@"
  if kc apply --dry-run=server --validate=strict "${args[@]}" >"$out" 2>&1 && ! grep -q '^Warning:' "$out"; then
    log "$label: $(grep -c . "$out") objects accepted"
    return 0
  fi
  log "$label: refused by the API server:"
  sed 's/^/  /' "$out" >&2
  return 1
}

# dry_run TARGET checks a file, or a folder's *.yaml files; a folder with a kustomization.yaml is
# checked twice: rendered by `kubectl kustomize` (what `kubectl apply -k` / ko send), and as its
# plain files (what `kubectl apply -f` sends).
dry_run() {
  local target=$1 files=() f rendered status=0
  if [ -f "$target" ]; then
    apply_dry_run "$target" "$target"
    return
  fi
  for f in "$target"/*.yaml "$target"/*.yml; do
    [ -f "$f" ] && [ "$(basename "$f")" != kustomization.yaml ] && files+=("$f")
  done
  if [ ${#files[@]} -eq 0 ] && [ ! -f "$target/kustomization.yaml" ]; then
    log "$target: no manifests"
    return 0
  fi
  if [ -f "$target/kustomization.yaml" ]; then
    rendered="$work/kustomized-$(echo "$target" | tr '/' '_').yaml"
    kc kustomize "$target" >"$rendered"
    apply_dry_run "kubectl kustomize $target" "$rendered" || status=1
  fi
  if [ ${#files[@]} -gt 0 ]; then
    apply_dry_run "$target/*.yaml" "${files[@]}" || status=1
  fi
  return $status
}

failed=0
if [ ${#targets[@]} -gt 0 ]; then
  for t in "${targets[@]}"; do
    dry_run "$t" || failed=1
  done
  exit $failed
fi

# config/broker is the RedisStreamBroker class (config/ renders it; its files are checked on their
# own too). docs/eventpolicy holds the optional Broker authorization (EventPolicy) a platform team
# may apply.
repo_targets=(config config/broker triggers docs/eventpolicy)
for d in examples/*/config examples/*/triggers; do
  [ -d "$d" ] && repo_targets+=("$d")
done
# An example may also render as a whole (examples/<domain>/kustomization.yaml).
for d in examples/*; do
  [ -f "$d/kustomization.yaml" ] && repo_targets+=("$d")
done
for t in "${repo_targets[@]}"; do
  [ -e "$t" ] || continue
  dry_run "$t" || failed=1
done

# The check must be able to fail: each broken fixture is refused, with the message it expects.
for fixture in hack/testdata/broken/*.yaml; do
  expect=$(sed -n 's/^# expect: //p' "$fixture")
  if [ -z "$expect" ]; then
    log "$fixture: has no '# expect: <API server message>' line"
    failed=1
    continue
  fi
  if dry_run "$fixture" 2>"$work/fixture.err"; then
    log "$fixture: accepted, but it must be refused with: $expect"
    failed=1
  elif ! grep -qF -- "$expect" "$work/fixture.err"; then
    log "$fixture: refused, but without the expected message '$expect':"
    cat "$work/fixture.err" >&2
    failed=1
  else
    log "$fixture: refused as expected ($expect)"
  fi
done

if [ $failed -ne 0 ]; then
  log "FAILED"
  exit 1
fi
log "OK: every manifest passed the server-side dry run"
