package embedded

import (
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"sort"
	"strings"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/labels"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// localResolve is how knfaas up resolves references: for processes on this machine, which it
// runs as the first revision's only pod (see manifest.ResolveOptions for what that refuses).
var localResolve = manifest.ResolveOptions{
	RefKinds:         manifest.LocalRefKinds,
	PodName:          func(svc *servingv1.Service) string { return svc.Name + "-00001-local" },
	LocalVolumesOnly: true,
}

// addresses resolves Knative references to the addresses they have inside a cluster, which the
// runtime dials in process; Runtime.forFunctions turns them into what a function process can use.
type addresses struct {
	set      *manifest.Set
	brokers  map[string]string // ns/name → http://broker-ingress.knative-eventing.svc.cluster.local/ns/name
	services map[string]string // ns/name → http://name.ns.svc.cluster.local
}

// destination resolves d, held by an object in namespace, to its address; what names the field
// for messages.
func (a *addresses) destination(d *duckv1.Destination, namespace, what string) (*url.URL, error) {
	if d == nil {
		return nil, fmt.Errorf("%s: no destination", what)
	}
	t, err := manifest.NewResolver(a.set, localResolve).Destination(*d, namespace)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", what, err)
	}
	if t.Ref == nil {
		return t.Address(nil), nil
	}
	key := t.Ref.Namespace + "/" + t.Ref.Name
	raw, ok := a.services[key]
	if t.Ref.Kind == "Broker" {
		raw, ok = a.brokers[key]
	}
	if !ok {
		return nil, fmt.Errorf("%s: ref: %s has no address in this run", what, t.Ref.Ref())
	}
	base, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("%s: address of %s: %w", what, t.Ref.Ref(), err)
	}
	return t.Address(base), nil
}

// redisStandIn finds the Kubernetes Services that front a Redis StatefulSet in the manifests;
// the runtime's own Redis stands in for them.
func redisStandIn(set *manifest.Set) []string {
	var hosts []string
	var statefulSets []*appsv1.StatefulSet
	for _, o := range set.Objects {
		if ss, ok := o.Obj.(*appsv1.StatefulSet); ok {
			for _, c := range ss.Spec.Template.Spec.Containers {
				if strings.Contains(c.Image, "redis") {
					statefulSets = append(statefulSets, ss)
					break
				}
			}
		}
	}
	for _, svc := range set.KubeServices() {
		if len(svc.Spec.Selector) == 0 {
			continue
		}
		sel := labels.SelectorFromSet(svc.Spec.Selector)
		for _, ss := range statefulSets {
			if ss.Namespace == svc.Namespace && sel.Matches(labels.Set(ss.Spec.Template.Labels)) {
				n, ns := svc.Name, svc.Namespace
				hosts = append(hosts, n, n+"."+ns, n+"."+ns+".svc", n+"."+ns+".svc.cluster.local")
			}
		}
	}
	return hosts
}

// rewriteRedisURL replaces a redis:// or rediss:// URL that points at a stood-in Service with
// the runtime's Redis URL.
func rewriteRedisURL(value string, standIn []string, local string) (string, bool) {
	u, err := url.Parse(value)
	if err != nil || (u.Scheme != "redis" && u.Scheme != "rediss") {
		return value, false
	}
	for _, h := range standIn {
		if u.Hostname() == h {
			return local, true
		}
	}
	return value, false
}

// envFor resolves the environment of a ksvc's container, one of svc's, with the manifest
// resolver (values, valueFrom, envFrom, $(VAR)) and adds Knative's K_* variables.
func envFor(set *manifest.Set, svc *servingv1.Service, c *corev1.Container) ([]string, error) {
	vars, err := manifest.NewResolver(set, localResolve).Env(svc, containerIndex(svc, c))
	if err != nil {
		return nil, err
	}
	env := map[string]string{}
	var order []string
	put := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, v := range vars {
		put(v.Name, v.Value)
	}
	put("K_SERVICE", svc.Name)
	put("K_CONFIGURATION", svc.Name)
	put("K_REVISION", svc.Name+"-00001")
	out := make([]string, 0, len(order))
	for _, k := range order {
		out = append(out, k+"="+env[k])
	}
	return out, nil
}

// containerIndex finds c, a copy of one of svc's containers, by its name (Knative names every
// container); the first when none matches.
func containerIndex(svc *servingv1.Service, c *corev1.Container) int {
	for i, sc := range svc.Spec.Template.Spec.Containers {
		if sc.Name == c.Name {
			return i
		}
	}
	return 0
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// projectVolumes writes the volumes a container mounts, as the manifest resolver projects them,
// under dir and returns mount path → local path.
func projectVolumes(set *manifest.Set, svc *servingv1.Service, c *corev1.Container, dir string) (map[string]string, error) {
	planned, err := manifest.NewResolver(set, localResolve).Mounts(svc, containerIndex(svc, c))
	if err != nil {
		return nil, err
	}
	mounts := map[string]string{}
	for _, m := range planned {
		local := filepath.Join(dir, "volumes", m.Volume.Name)
		if err := writeVolume(local, m.Volume); err != nil {
			return nil, err
		}
		target := local
		if m.SubPath != "" {
			target = filepath.Join(local, filepath.Clean("/"+m.SubPath))
		}
		mounts[m.MountPath] = target
	}
	return mounts, nil
}

// writeVolume writes the files of v under dir.
func writeVolume(dir string, v manifest.ProjectedVolume) error {
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return fmt.Errorf("volume %q: %w", v.Name, err)
	}
	for _, f := range v.Files {
		p := filepath.Join(dir, filepath.FromSlash(f.Path))
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
		if err := os.WriteFile(p, f.Data, 0o600); err != nil {
			return fmt.Errorf("volume %q: %w", v.Name, err)
		}
	}
	return nil
}

// rewriteMountPaths points env values that name a file under a mount path at its local copy.
func rewriteMountPaths(env []string, mounts map[string]string) []string {
	if len(mounts) == 0 {
		return env
	}
	paths := sortedKeys(mounts)
	// Longest mount path first, so nested mounts win.
	sort.Slice(paths, func(i, j int) bool { return len(paths[i]) > len(paths[j]) })
	out := make([]string, len(env))
	for i, kv := range env {
		out[i] = kv
		k, v, _ := strings.Cut(kv, "=")
		for _, mp := range paths {
			if v == mp || strings.HasPrefix(v, strings.TrimSuffix(mp, "/")+"/") {
				out[i] = k + "=" + mounts[mp] + strings.TrimPrefix(v, mp)
				break
			}
		}
	}
	return out
}

// sinkBindingFor returns the SinkBinding whose subject is the ksvc, if any.
func sinkBindingFor(set *manifest.Set, svc *servingv1.Service) *sourcesv1.SinkBinding {
	return manifest.NewResolver(set, localResolve).SinkBindingFor(svc)
}
