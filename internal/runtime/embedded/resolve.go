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

// addresses resolves Knative references to the addresses they have inside a cluster, which the
// runtime dials in process; Runtime.forFunctions turns them into what a function process can use.
type addresses struct {
	set      *manifest.Set
	brokers  map[string]string // ns/name → http://broker-ingress.knative-eventing.svc.cluster.local/ns/name
	services map[string]string // ns/name → http://name.ns.svc.cluster.local
}

func (a *addresses) destination(d *duckv1.Destination, namespace, what string) (*url.URL, error) {
	if d == nil {
		return nil, fmt.Errorf("%s: no destination", what)
	}
	var base *url.URL
	if d.Ref != nil {
		ns := d.Ref.Namespace
		if ns == "" {
			ns = namespace
		}
		key := ns + "/" + d.Ref.Name
		var raw string
		var ok bool
		switch {
		case d.Ref.Kind == "Service" && strings.HasPrefix(d.Ref.APIVersion, "serving.knative.dev/"):
			raw, ok = a.services[key]
		case d.Ref.Kind == "Broker" && strings.HasPrefix(d.Ref.APIVersion, "eventing.knative.dev/"):
			raw, ok = a.brokers[key]
		default:
			return nil, fmt.Errorf("%s: ref %s %s (%s) cannot be resolved locally: only Knative Services and Brokers can", what, d.Ref.Kind, key, d.Ref.APIVersion)
		}
		if !ok {
			return nil, fmt.Errorf("%s: ref %s %s not found in the loaded manifests", what, d.Ref.Kind, key)
		}
		u, err := url.Parse(raw)
		if err != nil {
			return nil, err
		}
		base = u
	}
	if d.URI != nil {
		u := d.URI.URL()
		if base == nil {
			return u, nil
		}
		// A URI beside a ref is relative to the ref's address, as in Knative.
		return base.ResolveReference(u), nil
	}
	if base == nil {
		return nil, fmt.Errorf("%s: destination has neither ref nor uri", what)
	}
	return base, nil
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

// envFor resolves the environment of a ksvc's container: values, valueFrom Secret/ConfigMap
// keys, envFrom, and Knative's K_* variables.
func envFor(set *manifest.Set, svc *servingv1.Service, c *corev1.Container) ([]string, error) {
	ns := svc.Namespace
	where := fmt.Sprintf("Service %s/%s", ns, svc.Name)
	env := map[string]string{}
	var order []string
	put := func(k, v string) {
		if _, ok := env[k]; !ok {
			order = append(order, k)
		}
		env[k] = v
	}
	for _, ef := range c.EnvFrom {
		switch {
		case ef.ConfigMapRef != nil:
			cm := set.ConfigMap(ns, ef.ConfigMapRef.Name)
			if cm == nil {
				if ef.ConfigMapRef.Optional != nil && *ef.ConfigMapRef.Optional {
					continue
				}
				return nil, fmt.Errorf("%s: envFrom configMapRef %q: ConfigMap not found in the loaded manifests", where, ef.ConfigMapRef.Name)
			}
			for _, k := range sortedKeys(cm.Data) {
				put(ef.Prefix+k, cm.Data[k])
			}
		case ef.SecretRef != nil:
			sec := set.Secret(ns, ef.SecretRef.Name)
			if sec == nil {
				if ef.SecretRef.Optional != nil && *ef.SecretRef.Optional {
					continue
				}
				return nil, fmt.Errorf("%s: envFrom secretRef %q: Secret not found in the loaded manifests", where, ef.SecretRef.Name)
			}
			for k, v := range secretData(sec) {
				put(ef.Prefix+k, v)
			}
		}
	}
	for _, e := range c.Env {
		if e.ValueFrom == nil {
			put(e.Name, expandEnv(e.Value, env))
			continue
		}
		v, ok, err := valueFrom(set, svc, e)
		if err != nil {
			return nil, fmt.Errorf("%s: env %s: %w", where, e.Name, err)
		}
		if ok {
			put(e.Name, v)
		}
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

// expandEnv expands $(VAR) references to earlier variables, as Kubernetes does.
func expandEnv(v string, env map[string]string) string {
	if !strings.Contains(v, "$(") {
		return v
	}
	for k, val := range env {
		v = strings.ReplaceAll(v, "$("+k+")", val)
	}
	return v
}

func valueFrom(set *manifest.Set, svc *servingv1.Service, e corev1.EnvVar) (string, bool, error) {
	ns := svc.Namespace
	vf := e.ValueFrom
	switch {
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		optional := ref.Optional != nil && *ref.Optional
		sec := set.Secret(ns, ref.Name)
		if sec == nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secretKeyRef: Secret %s/%s not found in the loaded manifests", ns, ref.Name)
		}
		v, ok := secretData(sec)[ref.Key]
		if !ok {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("secretKeyRef: Secret %s/%s has no key %q", ns, ref.Name, ref.Key)
		}
		return v, true, nil
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		optional := ref.Optional != nil && *ref.Optional
		cm := set.ConfigMap(ns, ref.Name)
		if cm == nil {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configMapKeyRef: ConfigMap %s/%s not found in the loaded manifests", ns, ref.Name)
		}
		v, ok := cm.Data[ref.Key]
		if !ok {
			if optional {
				return "", false, nil
			}
			return "", false, fmt.Errorf("configMapKeyRef: ConfigMap %s/%s has no key %q", ns, ref.Name, ref.Key)
		}
		return v, true, nil
	case vf.FieldRef != nil:
		switch vf.FieldRef.FieldPath {
		case "metadata.namespace":
			return ns, true, nil
		case "metadata.name":
			return svc.Name + "-00001-local", true, nil
		}
		return "", false, fmt.Errorf("fieldRef %q is not available locally (only metadata.name and metadata.namespace)", vf.FieldRef.FieldPath)
	}
	return "", false, fmt.Errorf("valueFrom kind not supported locally (use secretKeyRef, configMapKeyRef or fieldRef)")
}

func secretData(sec *corev1.Secret) map[string]string {
	out := map[string]string{}
	for k, v := range sec.Data {
		out[k] = string(v)
	}
	for k, v := range sec.StringData {
		out[k] = v
	}
	return out
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// projectVolumes writes the ConfigMap and Secret volumes a container mounts under dir and
// returns mount path → local path.
func projectVolumes(set *manifest.Set, svc *servingv1.Service, c *corev1.Container, dir string) (map[string]string, error) {
	where := fmt.Sprintf("Service %s/%s", svc.Namespace, svc.Name)
	volumes := map[string]corev1.Volume{}
	for _, v := range svc.Spec.Template.Spec.Volumes {
		volumes[v.Name] = v
	}
	mounts := map[string]string{}
	for _, m := range c.VolumeMounts {
		v, ok := volumes[m.Name]
		if !ok {
			return nil, fmt.Errorf("%s: volumeMount %q names no volume", where, m.Name)
		}
		var files map[string]string
		var items []corev1.KeyToPath
		switch {
		case v.ConfigMap != nil:
			cm := set.ConfigMap(svc.Namespace, v.ConfigMap.Name)
			if cm == nil {
				if v.ConfigMap.Optional != nil && *v.ConfigMap.Optional {
					files = map[string]string{}
					break
				}
				return nil, fmt.Errorf("%s: volume %q: ConfigMap %s/%s not found in the loaded manifests", where, v.Name, svc.Namespace, v.ConfigMap.Name)
			}
			files, items = cm.Data, v.ConfigMap.Items
		case v.Secret != nil:
			sec := set.Secret(svc.Namespace, v.Secret.SecretName)
			if sec == nil {
				if v.Secret.Optional != nil && *v.Secret.Optional {
					files = map[string]string{}
					break
				}
				return nil, fmt.Errorf("%s: volume %q: Secret %s/%s not found in the loaded manifests", where, v.Name, svc.Namespace, v.Secret.SecretName)
			}
			files, items = secretData(sec), v.Secret.Items
		case v.EmptyDir != nil:
			files = map[string]string{}
		default:
			return nil, fmt.Errorf("%s: volume %q: only configMap, secret and emptyDir volumes run locally", where, v.Name)
		}
		local := filepath.Join(dir, "volumes", v.Name)
		if err := os.MkdirAll(local, 0o700); err != nil {
			return nil, err
		}
		write := func(key, path string) error {
			val, ok := files[key]
			if !ok {
				return fmt.Errorf("%s: volume %q: key %q not found", where, v.Name, key)
			}
			p := filepath.Join(local, filepath.Clean("/"+path))
			if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
				return err
			}
			return os.WriteFile(p, []byte(val), 0o600)
		}
		if len(items) > 0 {
			for _, it := range items {
				if err := write(it.Key, it.Path); err != nil {
					return nil, err
				}
			}
		} else {
			for k := range files {
				if err := write(k, k); err != nil {
					return nil, err
				}
			}
		}
		target := local
		if m.SubPath != "" {
			target = filepath.Join(local, filepath.Clean("/"+m.SubPath))
		}
		mounts[m.MountPath] = target
	}
	return mounts, nil
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
	for _, sb := range set.SinkBindings() {
		s := sb.Spec.Subject
		if sb.Namespace != svc.Namespace || s.Kind != "Service" || !strings.HasPrefix(s.APIVersion, "serving.knative.dev/") {
			continue
		}
		if s.Name == svc.Name {
			return sb
		}
		if s.Selector != nil {
			sel, err := metav1LabelSelector(s.Selector)
			if err == nil && sel.Matches(labels.Set(svc.Labels)) {
				return sb
			}
		}
	}
	return nil
}
