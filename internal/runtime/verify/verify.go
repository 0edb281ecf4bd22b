// Package verify cross-checks a loaded set of manifests for mistakes no schema can catch:
// dangling references, missing Secret and ConfigMap keys, ko:// paths that do not build,
// functions that leave the shared Knative Service shape, emitted event types nobody routes, and
// Triggers that feed a function its own replies.
package verify

import (
	"fmt"
	"path/filepath"
	"slices"
	"sort"
	"strings"

	corev1 "k8s.io/api/core/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// Annotations of the event-flow convention, set on a Knative Service's metadata.
const (
	// EmitsAnnotation lists, comma-separated, every event type the function sends into the
	// Broker, as replies or through K_SINK.
	EmitsAnnotation = "knfaas.dev/emits"
	// TerminalAnnotation lists emitted types that no Trigger routes on purpose (they are
	// consumed outside the platform, or only recorded); each must also be in EmitsAnnotation.
	TerminalAnnotation = "knfaas.dev/terminal"
	// LoopAnnotation on a Trigger, set to LoopIntended, allows it to deliver to its subscriber
	// event types that subscriber emits.
	LoopAnnotation = "knfaas.dev/loop"
	// LoopIntended is the only meaningful value of LoopAnnotation.
	LoopIntended = "intended"
)

// Problem is one finding, located precisely enough to fix it without searching.
type Problem struct {
	File   string
	Object string // "Kind namespace/name"
	Field  string // JSON path within the object, e.g. spec.subscriber.ref
	Msg    string
}

// String formats the problem as "file: object: field: message".
func (p Problem) String() string {
	return fmt.Sprintf("%s: %s: %s: %s", p.File, p.Object, p.Field, p.Msg)
}

// Options locate what the manifests point at outside themselves.
type Options struct {
	// ModuleRoot is the directory holding go.mod, where ko:// import paths are looked up.
	ModuleRoot string
	// ModulePath is the module's import path (github.com/knfaas/knfaas).
	ModulePath string
}

// Check runs every cross-check over set and returns the problems found, sorted by file.
func Check(set *manifest.Set, opts Options) []Problem {
	c := &checker{set: set, opts: opts}
	c.checkTriggers()
	c.checkBrokers()
	c.checkSources()
	c.checkServices()
	c.checkEventFlow()
	sort.SliceStable(c.problems, func(i, j int) bool { return c.problems[i].File < c.problems[j].File })
	return c.problems
}

type checker struct {
	set      *manifest.Set
	opts     Options
	problems []Problem
}

func (c *checker) report(o *manifest.Object, field, format string, args ...any) {
	p := Problem{Field: field, Msg: fmt.Sprintf(format, args...)}
	if o != nil {
		p.File, p.Object = o.File, o.Ref()
	}
	c.problems = append(c.problems, p)
}

func (c *checker) checkTriggers() {
	perFile := map[string]int{}
	for _, t := range c.set.Triggers() {
		perFile[c.set.Origin(t).File]++
	}
	for _, t := range c.set.Triggers() {
		o := c.set.Origin(t)
		c.checkTriggerFile(o, t, perFile[o.File])
		if c.set.Find("eventing.knative.dev", "Broker", t.Namespace, t.Spec.Broker) == nil {
			c.report(o, "spec.broker", "Broker %s/%s is not defined in the manifests", t.Namespace, t.Spec.Broker)
		}
		c.checkDestination(o, "spec.subscriber", t.Spec.Subscriber, t.Namespace)
		if t.Spec.Delivery != nil && t.Spec.Delivery.DeadLetterSink != nil {
			c.checkDestination(o, "spec.delivery.deadLetterSink", *t.Spec.Delivery.DeadLetterSink, t.Namespace)
		}
	}
}

// checkTriggerFile holds Triggers under a triggers/ folder to the layout that lets a reader find
// a subscription by its file name: one Trigger per file, named like the file, and the name starts
// with the subscriber's name (triggers/<function>-<event>.yaml).
func (c *checker) checkTriggerFile(o *manifest.Object, t *eventingv1.Trigger, triggersInFile int) {
	if filepath.Base(filepath.Dir(o.File)) != "triggers" {
		return
	}
	if triggersInFile > 1 {
		if c.firstTriggerOf(o.File) == o { // once per file
			c.report(o, "metadata.name", "%s holds %d Triggers; keep one Trigger per file", filepath.Base(o.File), triggersInFile)
		}
		return
	}
	base := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(o.File), ".yaml"), ".yml")
	if t.Name != base {
		c.report(o, "metadata.name", "%q differs from its file name %q (triggers/<function>-<event>.yaml, named alike)", t.Name, base)
	}
	if ref := t.Spec.Subscriber.Ref; ref != nil && !strings.HasPrefix(t.Name, ref.Name+"-") {
		c.report(o, "metadata.name", "%q does not start with its subscriber's name %q (triggers/<function>-<event>.yaml)", t.Name, ref.Name+"-")
	}
}

func (c *checker) firstTriggerOf(file string) *manifest.Object {
	for _, t := range c.set.Triggers() {
		if o := c.set.Origin(t); o.File == file {
			return o
		}
	}
	return nil
}

func (c *checker) checkBrokers() {
	for _, b := range c.set.Brokers() {
		if b.Spec.Delivery != nil && b.Spec.Delivery.DeadLetterSink != nil {
			c.checkDestination(c.set.Origin(b), "spec.delivery.deadLetterSink", *b.Spec.Delivery.DeadLetterSink, b.Namespace)
		}
	}
}

func (c *checker) checkSources() {
	for _, p := range c.set.PingSources() {
		c.checkDestination(c.set.Origin(p), "spec.sink", p.Spec.Sink, p.Namespace)
	}
	for _, sb := range c.set.SinkBindings() {
		o := c.set.Origin(sb)
		c.checkDestination(o, "spec.sink", sb.Spec.Sink, sb.Namespace)
		subj := sb.Spec.Subject
		if subj.Name == "" {
			continue // a label selector: nothing to resolve statically
		}
		ns := subj.Namespace
		if ns == "" {
			ns = sb.Namespace
		}
		if c.set.Find(groupOf(subj.APIVersion), subj.Kind, ns, subj.Name) == nil {
			c.report(o, "spec.subject", "%s %s/%s is not defined in the manifests", subj.Kind, ns, subj.Name)
		}
	}
}

// checkDestination reports a ref that names no object of the set. URIs point outside and are
// taken as they are.
func (c *checker) checkDestination(o *manifest.Object, field string, d duckv1.Destination, namespace string) {
	if d.Ref == nil {
		return
	}
	ns := d.Ref.Namespace
	if ns == "" {
		ns = namespace
	}
	if c.set.Find(groupOf(d.Ref.APIVersion), d.Ref.Kind, ns, d.Ref.Name) == nil {
		c.report(o, field+".ref", "%s %s/%s (%s) is not defined in the manifests", d.Ref.Kind, ns, d.Ref.Name, d.Ref.APIVersion)
	}
}

func (c *checker) checkServices() {
	for _, svc := range c.set.Services() {
		o := c.set.Origin(svc)
		spec := svc.Spec.Template.Spec
		if slices.ContainsFunc(spec.Containers, func(ctr corev1.Container) bool { return strings.HasPrefix(ctr.Image, "ko://") }) {
			c.checkServiceShape(o, svc)
		}
		for i, ctr := range spec.Containers {
			base := fmt.Sprintf("spec.template.spec.containers[%d]", i)
			if strings.HasPrefix(ctr.Image, "ko://") {
				if err := c.checkKoImage(strings.TrimPrefix(ctr.Image, "ko://")); err != nil {
					c.report(o, base+".image", "%s: %v", ctr.Image, err)
				}
			}
			for j, env := range ctr.Env {
				if env.ValueFrom != nil {
					c.checkKeyRef(o, fmt.Sprintf("%s.env[%d].valueFrom", base, j), svc.Namespace, env.ValueFrom.SecretKeyRef, env.ValueFrom.ConfigMapKeyRef)
				}
			}
			for j, from := range ctr.EnvFrom {
				field := fmt.Sprintf("%s.envFrom[%d]", base, j)
				if from.SecretRef != nil && !isTrue(from.SecretRef.Optional) && c.set.Secret(svc.Namespace, from.SecretRef.Name) == nil {
					c.report(o, field+".secretRef", "Secret %s/%s is not defined in the manifests", svc.Namespace, from.SecretRef.Name)
				}
				if from.ConfigMapRef != nil && !isTrue(from.ConfigMapRef.Optional) && c.set.ConfigMap(svc.Namespace, from.ConfigMapRef.Name) == nil {
					c.report(o, field+".configMapRef", "ConfigMap %s/%s is not defined in the manifests", svc.Namespace, from.ConfigMapRef.Name)
				}
			}
		}
		for i, v := range spec.Volumes {
			field := fmt.Sprintf("spec.template.spec.volumes[%d]", i)
			if s := v.Secret; s != nil && !isTrue(s.Optional) {
				c.checkVolumeKeys(o, field+".secret", "Secret", svc.Namespace, s.SecretName, s.Items)
			}
			if cm := v.ConfigMap; cm != nil && !isTrue(cm.Optional) {
				c.checkVolumeKeys(o, field+".configMap", "ConfigMap", svc.Namespace, cm.Name, cm.Items)
			}
		}
	}
}

func (c *checker) checkKeyRef(o *manifest.Object, field, namespace string, secret *corev1.SecretKeySelector, cm *corev1.ConfigMapKeySelector) {
	switch {
	case secret != nil && !isTrue(secret.Optional):
		c.checkKey(o, field+".secretKeyRef", "Secret", namespace, secret.Name, secret.Key)
	case cm != nil && !isTrue(cm.Optional):
		c.checkKey(o, field+".configMapKeyRef", "ConfigMap", namespace, cm.Name, cm.Key)
	}
}

func (c *checker) checkVolumeKeys(o *manifest.Object, field, kind, namespace, name string, items []corev1.KeyToPath) {
	if !c.checkKey(o, field, kind, namespace, name, "") {
		return
	}
	for i, item := range items {
		c.checkKey(o, fmt.Sprintf("%s.items[%d].key", field, i), kind, namespace, name, item.Key)
	}
}

// checkKey reports a Secret or ConfigMap that is missing, or lacks key (when key is set). It
// returns whether the object exists.
func (c *checker) checkKey(o *manifest.Object, field, kind, namespace, name, key string) bool {
	var keys []string
	switch kind {
	case "Secret":
		s := c.set.Secret(namespace, name)
		if s == nil {
			c.report(o, field, "Secret %s/%s is not defined in the manifests (add a template under config/3xx-*)", namespace, name)
			return false
		}
		for k := range s.Data {
			keys = append(keys, k)
		}
		for k := range s.StringData {
			keys = append(keys, k)
		}
	case "ConfigMap":
		cm := c.set.ConfigMap(namespace, name)
		if cm == nil {
			c.report(o, field, "ConfigMap %s/%s is not defined in the manifests", namespace, name)
			return false
		}
		for k := range cm.Data {
			keys = append(keys, k)
		}
		for k := range cm.BinaryData {
			keys = append(keys, k)
		}
	}
	if key != "" && !slices.Contains(keys, key) {
		sort.Strings(keys)
		c.report(o, field, "%s %s/%s has no key %q (it has %s)", kind, namespace, name, key, strings.Join(keys, ", "))
	}
	return true
}

func isTrue(b *bool) bool { return b != nil && *b }

// groupOf returns the API group of an apiVersion: "serving.knative.dev/v1" → "serving.knative.dev",
// "v1" → "".
func groupOf(apiVersion string) string {
	if g, _, ok := strings.Cut(apiVersion, "/"); ok {
		return g
	}
	return ""
}

// emitted returns the comma-separated types of annotation key on svc, trimmed, without blanks.
func emitted(svc *servingv1.Service, key string) []string {
	var types []string
	for _, t := range strings.Split(svc.Annotations[key], ",") {
		if t = strings.TrimSpace(t); t != "" {
			types = append(types, t)
		}
	}
	return types
}
