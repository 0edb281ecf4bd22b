package manifest

import (
	"errors"
	"fmt"
	"maps"
	"net/url"
	"path"
	"slices"
	"strings"

	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

// ResolveOptions hold every intended difference between resolving for a cluster, which verify
// does (the zero value), and resolving for processes on this machine, which knfaas up does.
// Everything else resolves alike, so a set that verify accepts resolves under knfaas up and
// the other way round, except for what one of these fields refuses or leaves to the cluster.
type ResolveOptions struct {
	// RefKinds, when not empty, are the only kinds a Destination ref may name. knfaas up sets
	// LocalRefKinds: Knative Services and Brokers are all it runs, so nothing else has an
	// address on this machine. verify leaves it empty: on a cluster a ref may name any
	// Addressable the manifests define (a Kubernetes Service, a Route, ...), and which kinds
	// are addressable is the cluster's to say, so verify only checks that the object exists.
	RefKinds []schema.GroupKind

	// PodName, when set, names the pod a Knative Service runs as on this machine: a fieldRef to
	// metadata.name resolves to it, metadata.namespace to the Service's namespace, and every
	// other fieldRef and every resourceFieldRef is refused, since no kubelet is there to fill
	// them. verify leaves it nil: on a cluster the kubelet fills them when the pod starts, so
	// they resolve to no value here and to no error.
	PodName func(svc *servingv1.Service) string

	// LocalVolumesOnly refuses volumes other than configMap, secret and emptyDir: knfaas up
	// makes each volume a folder it writes, and those are the kinds it can write. verify leaves
	// it false: a cluster provides the other kinds (projected, persistentVolumeClaim, ...).
	LocalVolumesOnly bool
}

// LocalRefKinds are the kinds knfaas up runs: the RefKinds it resolves with.
var LocalRefKinds = []schema.GroupKind{
	{Group: "serving.knative.dev", Kind: "Service"},
	{Group: "eventing.knative.dev", Kind: "Broker"},
}

// Resolver turns the references of a Set into what they name, as Kubernetes and Knative would:
// env and envFrom into values, Secret and ConfigMap volumes into files, Destination refs into
// the objects they address. It reads the Set on every call, so changes made to its Secrets in
// between are seen.
type Resolver struct {
	set  *Set
	opts ResolveOptions
}

// NewResolver returns a Resolver over set.
func NewResolver(set *Set, opts ResolveOptions) *Resolver {
	return &Resolver{set: set, opts: opts}
}

// ResolveError is one reference that does not resolve: the object holding it, the field path
// within that object and what is missing.
type ResolveError struct {
	// File is the manifest file Object was read from; empty when not known.
	File string
	// Object is "Kind namespace/name"; empty for a Destination resolved on its own.
	Object string
	// Field is the JSON path within Object, e.g.
	// spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef.
	Field string
	Msg   string
}

// Error formats the error as "file: object: field: message", leaving out what is empty.
func (e *ResolveError) Error() string {
	var parts []string
	for _, p := range []string{e.File, e.Object, e.Field, e.Msg} {
		if p != "" {
			parts = append(parts, p)
		}
	}
	return strings.Join(parts, ": ")
}

// ResolveErrors returns the ResolveErrors in err, in order: a Resolver joins every one it finds.
func ResolveErrors(err error) []*ResolveError {
	if err == nil {
		return nil
	}
	if joined, ok := err.(interface{ Unwrap() []error }); ok {
		var out []*ResolveError
		for _, e := range joined.Unwrap() {
			out = append(out, ResolveErrors(e)...)
		}
		return out
	}
	var re *ResolveError
	if errors.As(err, &re) {
		return []*ResolveError{re}
	}
	return nil
}

// errorAt returns a ResolveError located at field of obj.
func (r *Resolver) errorAt(obj runtime.Object, field, format string, args ...any) *ResolveError {
	e := &ResolveError{Field: field, Msg: fmt.Sprintf(format, args...)}
	if o := r.set.Origin(obj); o != nil {
		e.File, e.Object = o.File, o.Ref()
	} else if m, err := meta.Accessor(obj); err == nil {
		e.Object = fmt.Sprintf("%s %s/%s", obj.GetObjectKind().GroupVersionKind().Kind, m.GetNamespace(), m.GetName())
	}
	return e
}

// Check resolves every reference of the set: each Trigger's broker, subscriber and dead-letter
// sink, each Broker's dead-letter sink, each PingSource's and SinkBinding's sink, each
// SinkBinding's subject, and each Knative Service's env, envFrom, volumes and volume mounts. It
// returns every one that does not resolve, joined.
func (r *Resolver) Check() error {
	var errs []error
	for _, t := range r.set.Triggers() {
		if r.set.Find("eventing.knative.dev", "Broker", t.Namespace, t.Spec.Broker) == nil {
			errs = append(errs, r.errorAt(t, "spec.broker", "Broker %s/%s is not defined in the manifests", t.Namespace, t.Spec.Broker))
		}
		errs = append(errs, r.destinationAt(t, "spec.subscriber", t.Spec.Subscriber, t.Namespace))
		if t.Spec.Delivery != nil && t.Spec.Delivery.DeadLetterSink != nil {
			errs = append(errs, r.destinationAt(t, "spec.delivery.deadLetterSink", *t.Spec.Delivery.DeadLetterSink, t.Namespace))
		}
	}
	for _, b := range r.set.Brokers() {
		if b.Spec.Delivery != nil && b.Spec.Delivery.DeadLetterSink != nil {
			errs = append(errs, r.destinationAt(b, "spec.delivery.deadLetterSink", *b.Spec.Delivery.DeadLetterSink, b.Namespace))
		}
	}
	for _, p := range r.set.PingSources() {
		errs = append(errs, r.destinationAt(p, "spec.sink", p.Spec.Sink, p.Namespace))
	}
	for _, sb := range r.set.SinkBindings() {
		errs = append(errs, r.destinationAt(sb, "spec.sink", sb.Spec.Sink, sb.Namespace))
		subj := sb.Spec.Subject
		if subj.Name == "" {
			continue // a label selector: nothing to resolve statically
		}
		ns := subj.Namespace
		if ns == "" {
			ns = sb.Namespace
		}
		if r.set.Find(groupOf(subj.APIVersion), subj.Kind, ns, subj.Name) == nil {
			errs = append(errs, r.errorAt(sb, "spec.subject", "%s %s/%s is not defined in the manifests", subj.Kind, ns, subj.Name))
		}
	}
	for _, svc := range r.set.Services() {
		for i := range svc.Spec.Template.Spec.Containers {
			_, err := r.Env(svc, i)
			errs = append(errs, err)
		}
		volumes, err := r.Volumes(svc)
		errs = append(errs, err)
		for i := range svc.Spec.Template.Spec.Containers {
			_, err := r.mounts(svc, i, volumes)
			errs = append(errs, err)
		}
	}
	return errors.Join(errs...)
}

// Target is what a Destination resolves to: the object its ref names, a URI, or both.
type Target struct {
	Ref *Object
	URI *apis.URL
}

// Address returns the target's address, given base, the address of its Ref (nil without one):
// a URI beside a ref is relative to the ref's address, as in Knative.
func (t Target) Address(base *url.URL) *url.URL {
	if t.URI == nil {
		return base
	}
	if base == nil {
		return t.URI.URL()
	}
	return base.ResolveReference(t.URI.URL())
}

// Destination resolves d, held by an object in namespace: a ref must name an object of the set
// (of one of RefKinds, when set), a URI is taken as it is. Its error is a ResolveError that
// names the field within d but no object; the caller knows which object holds d.
func (r *Resolver) Destination(d duckv1.Destination, namespace string) (Target, error) {
	t := Target{URI: d.URI}
	if d.Ref == nil {
		if d.URI == nil {
			return t, &ResolveError{Msg: "destination has neither ref nor uri"}
		}
		return t, nil
	}
	ref := d.Ref
	ns := ref.Namespace
	if ns == "" {
		ns = namespace
	}
	gk := schema.GroupKind{Group: groupOf(ref.APIVersion), Kind: ref.Kind}
	if len(r.opts.RefKinds) > 0 && !slices.Contains(r.opts.RefKinds, gk) {
		var kinds []string
		for _, k := range r.opts.RefKinds {
			kinds = append(kinds, k.String())
		}
		return t, &ResolveError{Field: "ref", Msg: fmt.Sprintf("%s %s/%s (%s) cannot be resolved locally: only %s can", ref.Kind, ns, ref.Name, ref.APIVersion, strings.Join(kinds, " and "))}
	}
	o := r.set.Find(gk.Group, gk.Kind, ns, ref.Name)
	if o == nil {
		return t, &ResolveError{Field: "ref", Msg: fmt.Sprintf("%s %s/%s (%s) is not defined in the manifests", ref.Kind, ns, ref.Name, ref.APIVersion)}
	}
	t.Ref = o
	return t, nil
}

// destinationAt resolves d and locates its error at field of owner.
func (r *Resolver) destinationAt(owner runtime.Object, field string, d duckv1.Destination, namespace string) error {
	_, err := r.Destination(d, namespace)
	var re *ResolveError
	if !errors.As(err, &re) {
		return err
	}
	if re.Field != "" {
		field += "." + re.Field
	}
	return r.errorAt(owner, field, "%s", re.Msg)
}

// SinkBindingFor returns the SinkBinding whose subject is the Knative Service svc, by name or
// by label selector, or nil.
func (r *Resolver) SinkBindingFor(svc *servingv1.Service) *sourcesv1.SinkBinding {
	for _, sb := range r.set.SinkBindings() {
		s := sb.Spec.Subject
		if sb.Namespace != svc.Namespace || s.Kind != "Service" || groupOf(s.APIVersion) != "serving.knative.dev" {
			continue
		}
		if s.Name == svc.Name {
			return sb
		}
		if s.Selector != nil {
			sel, err := metav1.LabelSelectorAsSelector(s.Selector)
			if err == nil && sel.Matches(labels.Set(svc.Labels)) {
				return sb
			}
		}
	}
	return nil
}

// Env resolves the environment of container i of svc as the kubelet does: envFrom first (a later
// source overriding an earlier one, each key behind the source's prefix), then env in order,
// where a value expands $(VAR) to a variable defined before it and $$ to $. A missing optional
// Secret, ConfigMap or key defines nothing, and so does a fieldRef or resourceFieldRef left to
// the cluster (ResolveOptions.PodName). Each variable keeps the place of its first definition. Every reference that does not resolve is a ResolveError; they are joined.
func (r *Resolver) Env(svc *servingv1.Service, i int) ([]corev1.EnvVar, error) {
	c := svc.Spec.Template.Spec.Containers[i]
	base := fmt.Sprintf("spec.template.spec.containers[%d]", i)
	values := map[string]string{}
	var order []string
	put := func(k, v string) {
		if _, ok := values[k]; !ok {
			order = append(order, k)
		}
		values[k] = v
	}
	var errs []error
	for j, from := range c.EnvFrom {
		field := fmt.Sprintf("%s.envFrom[%d]", base, j)
		var data map[string][]byte
		var err error
		switch {
		case from.ConfigMapRef != nil:
			data, err = r.source(svc, field+".configMapRef", "ConfigMap", from.ConfigMapRef.Name, isTrue(from.ConfigMapRef.Optional), false)
		case from.SecretRef != nil:
			data, err = r.source(svc, field+".secretRef", "Secret", from.SecretRef.Name, isTrue(from.SecretRef.Optional), false)
		}
		if err != nil {
			errs = append(errs, err)
			continue
		}
		for _, k := range slices.Sorted(maps.Keys(data)) {
			put(from.Prefix+k, string(data[k]))
		}
	}
	for j, e := range c.Env {
		if e.ValueFrom == nil {
			put(e.Name, expandEnv(e.Value, values))
			continue
		}
		v, ok, err := r.valueFrom(svc, fmt.Sprintf("%s.env[%d].valueFrom", base, j), e.ValueFrom)
		if err != nil {
			errs = append(errs, err)
			continue
		}
		if ok {
			put(e.Name, v)
		}
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	env := make([]corev1.EnvVar, 0, len(order))
	for _, k := range order {
		env = append(env, corev1.EnvVar{Name: k, Value: values[k]})
	}
	return env, nil
}

// valueFrom resolves one valueFrom at field of svc; ok is false when it defines nothing.
func (r *Resolver) valueFrom(svc *servingv1.Service, field string, vf *corev1.EnvVarSource) (value string, ok bool, err error) {
	switch {
	case vf.SecretKeyRef != nil:
		ref := vf.SecretKeyRef
		return r.key(svc, field+".secretKeyRef", "Secret", ref.Name, ref.Key, isTrue(ref.Optional))
	case vf.ConfigMapKeyRef != nil:
		ref := vf.ConfigMapKeyRef
		return r.key(svc, field+".configMapKeyRef", "ConfigMap", ref.Name, ref.Key, isTrue(ref.Optional))
	case vf.FieldRef != nil:
		if r.opts.PodName == nil {
			return "", false, nil
		}
		switch vf.FieldRef.FieldPath {
		case "metadata.name":
			return r.opts.PodName(svc), true, nil
		case "metadata.namespace":
			return svc.Namespace, true, nil
		}
		return "", false, r.errorAt(svc, field+".fieldRef.fieldPath", "%q is not available locally (only metadata.name and metadata.namespace)", vf.FieldRef.FieldPath)
	case vf.ResourceFieldRef != nil:
		if r.opts.PodName == nil {
			return "", false, nil
		}
		return "", false, r.errorAt(svc, field+".resourceFieldRef", "not available locally: no kubelet fills it (use secretKeyRef, configMapKeyRef or fieldRef)")
	}
	return "", false, r.errorAt(svc, field, "sets none of secretKeyRef, configMapKeyRef, fieldRef and resourceFieldRef")
}

// key resolves key of the Secret or ConfigMap kind name in svc's namespace, for env.
func (r *Resolver) key(svc *servingv1.Service, field, kind, name, key string, optional bool) (string, bool, error) {
	data, err := r.source(svc, field, kind, name, optional, false)
	if err != nil || data == nil {
		return "", false, err
	}
	v, ok := data[key]
	if !ok {
		if optional {
			return "", false, nil
		}
		return "", false, r.noKey(svc, field, kind, name, key, data)
	}
	return string(v), true, nil
}

// source returns the keys of the Secret or ConfigMap kind name in svc's namespace as env (files
// false) or a volume (files true) sees them: a Secret's data and stringData (stringData wins, as
// the API server writes it over data); a ConfigMap's data, and in files also its binaryData,
// which the kubelet never puts in env. A missing optional object is nil data and no error.
func (r *Resolver) source(svc *servingv1.Service, field, kind, name string, optional, files bool) (map[string][]byte, error) {
	ns := svc.Namespace
	data := map[string][]byte{}
	switch kind {
	case "Secret":
		s := r.set.Secret(ns, name)
		if s == nil {
			if optional {
				return nil, nil
			}
			return nil, r.errorAt(svc, field, "Secret %s/%s is not defined in the manifests (add a template under config/3xx-*)", ns, name)
		}
		maps.Copy(data, s.Data)
		for k, v := range s.StringData {
			data[k] = []byte(v)
		}
	case "ConfigMap":
		cm := r.set.ConfigMap(ns, name)
		if cm == nil {
			if optional {
				return nil, nil
			}
			return nil, r.errorAt(svc, field, "ConfigMap %s/%s is not defined in the manifests", ns, name)
		}
		if files {
			maps.Copy(data, cm.BinaryData)
		}
		for k, v := range cm.Data {
			data[k] = []byte(v)
		}
	}
	return data, nil
}

// noKey is the error for a key that data, the keys of kind name, lacks.
func (r *Resolver) noKey(svc *servingv1.Service, field, kind, name, key string, data map[string][]byte) error {
	has := "no keys"
	if len(data) > 0 {
		has = strings.Join(slices.Sorted(maps.Keys(data)), ", ")
	}
	if kind == "ConfigMap" {
		if cm := r.set.ConfigMap(svc.Namespace, name); cm != nil {
			if _, ok := cm.BinaryData[key]; ok {
				return r.errorAt(svc, field, "ConfigMap %s/%s has key %q only in binaryData, which the kubelet never puts in env (it has %s)", svc.Namespace, name, key, has)
			}
		}
	}
	return r.errorAt(svc, field, "%s %s/%s has no key %q (it has %s)", kind, svc.Namespace, name, key, has)
}

// expandEnv expands $(VAR) in v to the value of an earlier variable, as Kubernetes does: $$ is
// a $, and a reference to a variable not defined, or not closed, stays as it is.
func expandEnv(v string, defined map[string]string) string {
	if !strings.Contains(v, "$") {
		return v
	}
	var b strings.Builder
	for i := 0; i < len(v); i++ {
		if v[i] != '$' || i+1 == len(v) {
			b.WriteByte(v[i])
			continue
		}
		switch v[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '(':
			end := strings.IndexByte(v[i+2:], ')')
			if end < 0 {
				b.WriteString("$(")
				i++
				continue
			}
			name := v[i+2 : i+2+end]
			if val, ok := defined[name]; ok {
				b.WriteString(val)
			} else {
				b.WriteString("$(" + name + ")")
			}
			i += 2 + end
		default:
			b.WriteByte('$')
		}
	}
	return b.String()
}

// ProjectedVolume is one volume of a pod as the kubelet sets it up.
type ProjectedVolume struct {
	Name string
	// Files are the volume's files: one per key of a configMap or secret volume, or per item
	// when it lists items. None for an emptyDir, an optional volume whose object is missing,
	// or a kind the cluster provides.
	Files []VolumeFile
}

// VolumeFile is one file of a volume.
type VolumeFile struct {
	// Path is relative to the volume and never leaves it.
	Path string
	Data []byte
}

// Volumes resolves every volume of svc's pod, mounted or not, since the kubelet sets up every
// one before the pod starts. A non-optional volume needs its Secret or ConfigMap and every key
// its items name; an optional one skips what is missing. Every reference that does not resolve
// is a ResolveError; they are joined.
func (r *Resolver) Volumes(svc *servingv1.Service) ([]ProjectedVolume, error) {
	var volumes []ProjectedVolume
	var errs []error
	for i, v := range svc.Spec.Template.Spec.Volumes {
		field := fmt.Sprintf("spec.template.spec.volumes[%d]", i)
		pv := ProjectedVolume{Name: v.Name}
		var err error
		switch {
		case v.ConfigMap != nil:
			pv.Files, err = r.volumeFiles(svc, field+".configMap", "ConfigMap", v.ConfigMap.Name, v.ConfigMap.Items, isTrue(v.ConfigMap.Optional))
		case v.Secret != nil:
			pv.Files, err = r.volumeFiles(svc, field+".secret", "Secret", v.Secret.SecretName, v.Secret.Items, isTrue(v.Secret.Optional))
		case v.EmptyDir != nil:
		case r.opts.LocalVolumesOnly:
			err = r.errorAt(svc, field, "volume %q: only configMap, secret and emptyDir volumes run locally", v.Name)
		}
		errs = append(errs, err)
		volumes = append(volumes, pv)
	}
	if err := errors.Join(errs...); err != nil {
		return nil, err
	}
	return volumes, nil
}

func (r *Resolver) volumeFiles(svc *servingv1.Service, field, kind, name string, items []corev1.KeyToPath, optional bool) ([]VolumeFile, error) {
	data, err := r.source(svc, field, kind, name, optional, true)
	if err != nil || data == nil {
		return nil, err
	}
	if len(items) == 0 {
		var files []VolumeFile
		for _, k := range slices.Sorted(maps.Keys(data)) {
			files = append(files, VolumeFile{Path: volumePath(k), Data: data[k]})
		}
		return files, nil
	}
	var files []VolumeFile
	var errs []error
	for i, it := range items {
		v, ok := data[it.Key]
		if !ok {
			if !optional {
				errs = append(errs, r.noKey(svc, fmt.Sprintf("%s.items[%d].key", field, i), kind, name, it.Key, data))
			}
			continue
		}
		files = append(files, VolumeFile{Path: volumePath(it.Path), Data: v})
	}
	return files, errors.Join(errs...)
}

// volumePath makes p relative to its volume, so that no "..", nor a leading "/", leaves it.
func volumePath(p string) string {
	return strings.TrimPrefix(path.Clean("/"+p), "/")
}

// Mount is one volumeMount of a container with the volume it mounts.
type Mount struct {
	corev1.VolumeMount
	Volume ProjectedVolume
}

// Mounts resolves the volumes of svc's pod (see Volumes) and returns the volume mounts of
// container i, each with the volume it mounts.
func (r *Resolver) Mounts(svc *servingv1.Service, i int) ([]Mount, error) {
	volumes, err := r.Volumes(svc)
	if err != nil {
		return nil, err
	}
	return r.mounts(svc, i, volumes)
}

func (r *Resolver) mounts(svc *servingv1.Service, i int, volumes []ProjectedVolume) ([]Mount, error) {
	byName := map[string]ProjectedVolume{}
	for _, v := range volumes {
		byName[v.Name] = v
	}
	var mounts []Mount
	var errs []error
	for j, m := range svc.Spec.Template.Spec.Containers[i].VolumeMounts {
		v, ok := byName[m.Name]
		if !ok && !slices.ContainsFunc(svc.Spec.Template.Spec.Volumes, func(v corev1.Volume) bool { return v.Name == m.Name }) {
			errs = append(errs, r.errorAt(svc, fmt.Sprintf("spec.template.spec.containers[%d].volumeMounts[%d].name", i, j), "%q names no volume in spec.template.spec.volumes", m.Name))
			continue
		}
		mounts = append(mounts, Mount{VolumeMount: m, Volume: v})
	}
	return mounts, errors.Join(errs...)
}

func isTrue(b *bool) bool { return b != nil && *b }
