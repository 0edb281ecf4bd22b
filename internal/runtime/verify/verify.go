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
	// Modules are further modules (module path -> directory) whose ko:// import paths are
	// accepted too: users' own functions in a module outside this one.
	Modules map[string]string
}

// Check runs every cross-check over set and returns the problems found, sorted by file.
func Check(set *manifest.Set, opts Options) []Problem {
	c := &checker{set: set, opts: opts}
	c.checkTriggerFiles()
	// Dangling refs, missing Secrets, ConfigMaps and keys: the resolver knfaas up uses, set to
	// resolve for a cluster, finds them.
	for _, e := range manifest.ResolveErrors(manifest.NewResolver(set, manifest.ResolveOptions{}).Check()) {
		c.problems = append(c.problems, Problem{File: e.File, Object: e.Object, Field: e.Field, Msg: e.Msg})
	}
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

// checkTriggerFiles holds every Trigger to the file layout of checkTriggerFile.
func (c *checker) checkTriggerFiles() {
	perFile := map[string]int{}
	for _, t := range c.set.Triggers() {
		perFile[c.set.Origin(t).File]++
	}
	for _, t := range c.set.Triggers() {
		o := c.set.Origin(t)
		c.checkTriggerFile(o, t, perFile[o.File])
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
		}
	}
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
