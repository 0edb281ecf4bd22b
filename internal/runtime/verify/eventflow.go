package verify

import (
	"fmt"
	"slices"
	"strings"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// verdict is whether a Trigger passes events of a given type, judged from its filters alone.
type verdict int

const (
	never verdict = iota
	// maybe: the filters also test attributes other than type (or use CESQL), so the answer
	// depends on the event.
	maybe
	always
)

// passes judges whether trigger t lets events of type typ through. When spec.filters is set
// Knative ignores spec.filter, and so does this.
func passes(t *eventingv1.Trigger, typ string) verdict {
	if len(t.Spec.Filters) > 0 {
		return allOf(t.Spec.Filters, typ)
	}
	if t.Spec.Filter == nil {
		return always
	}
	v := always
	for attr, want := range t.Spec.Filter.Attributes {
		switch {
		case want == eventingv1.TriggerAnyFilter:
		case attr == "type" && want != typ:
			return never
		case attr != "type":
			v = maybe
		}
	}
	return v
}

// selectsType says whether t filters on the event type at all. A catch-all Trigger (an event
// store, an audit log) passes every type, so it cannot show that anyone acts on a given type.
func selectsType(t *eventingv1.Trigger) bool {
	if len(t.Spec.Filters) > 0 {
		return slices.ContainsFunc(t.Spec.Filters, filterSelectsType)
	}
	return t.Spec.Filter != nil && t.Spec.Filter.Attributes["type"] != eventingv1.TriggerAnyFilter
}

func filterSelectsType(f eventingv1.SubscriptionsAPIFilter) bool {
	_, exact := f.Exact["type"]
	_, prefix := f.Prefix["type"]
	_, suffix := f.Suffix["type"]
	return exact || prefix || suffix || strings.Contains(f.CESQL, "type") ||
		slices.ContainsFunc(f.All, filterSelectsType) || slices.ContainsFunc(f.Any, filterSelectsType) ||
		(f.Not != nil && filterSelectsType(*f.Not))
}

func allOf(filters []eventingv1.SubscriptionsAPIFilter, typ string) verdict {
	v := always
	for _, f := range filters {
		v = min(v, subscriptionsFilter(f, typ))
	}
	return v
}

// subscriptionsFilter evaluates one filter of Knative's Subscriptions API dialects; every
// dialect set in one filter must hold.
func subscriptionsFilter(f eventingv1.SubscriptionsAPIFilter, typ string) verdict {
	v := always
	if len(f.All) > 0 {
		v = min(v, allOf(f.All, typ))
	}
	if len(f.Any) > 0 {
		best := never
		for _, sub := range f.Any {
			best = max(best, subscriptionsFilter(sub, typ))
		}
		v = min(v, best)
	}
	if f.Not != nil {
		v = min(v, always-subscriptionsFilter(*f.Not, typ))
	}
	v = min(v, attributeMatch(f.Exact, typ, func(got, want string) bool { return got == want }))
	v = min(v, attributeMatch(f.Prefix, typ, strings.HasPrefix))
	v = min(v, attributeMatch(f.Suffix, typ, strings.HasSuffix))
	if f.CESQL != "" {
		v = min(v, maybe)
	}
	return v
}

func attributeMatch(attrs map[string]string, typ string, match func(got, want string) bool) verdict {
	v := always
	for attr, want := range attrs {
		if attr != "type" {
			v = min(v, maybe)
			continue
		}
		if !match(typ, want) {
			return never
		}
	}
	return v
}

// checkEventFlow checks the event-flow convention: every type a function emits is routed by
// some Trigger of its namespace or declared terminal, and no Trigger delivers to a function a
// type it emits itself unless the Trigger says the loop is intended.
func (c *checker) checkEventFlow() {
	triggers := c.set.Triggers()
	services := map[string]*servingv1.Service{}
	for _, svc := range c.set.Services() {
		services[svc.Namespace+"/"+svc.Name] = svc
		o := c.set.Origin(svc)
		emits := emitted(svc, EmitsAnnotation)
		terminal := emitted(svc, TerminalAnnotation)
		for _, typ := range terminal {
			if !slices.Contains(emits, typ) {
				c.report(o, "metadata.annotations["+TerminalAnnotation+"]", "%q is declared terminal but not listed in %s", typ, EmitsAnnotation)
			}
		}
		for _, typ := range emits {
			if slices.Contains(terminal, typ) {
				continue
			}
			routed := false
			for _, t := range triggers {
				if t.Namespace == svc.Namespace && selectsType(t) && passes(t, typ) != never {
					routed = true
					break
				}
			}
			if !routed {
				c.report(o, "metadata.annotations["+EmitsAnnotation+"]", "event type %q is emitted but no Trigger in namespace %s selects it (catch-all Triggers do not count); add a Trigger or list it in %s", typ, svc.Namespace, TerminalAnnotation)
			}
		}
	}
	for _, t := range triggers {
		ref := t.Spec.Subscriber.Ref
		if ref == nil || ref.Kind != "Service" || groupOf(ref.APIVersion) != "serving.knative.dev" || t.Annotations[LoopAnnotation] == LoopIntended {
			continue
		}
		ns := ref.Namespace
		if ns == "" {
			ns = t.Namespace
		}
		svc := services[ns+"/"+ref.Name]
		if svc == nil {
			continue // reported by checkTriggers
		}
		for _, typ := range emitted(svc, EmitsAnnotation) {
			if passes(t, typ) == always {
				c.report(c.set.Origin(t), "spec.filter", "delivers %q to %s, which emits that type itself: a loop; narrow the filter or annotate %s: %s", typ, ref.Name, LoopAnnotation, LoopIntended)
			}
		}
	}
}

// Advice returns findings that do not fail verification: Knative Services that send events
// (they are the subject of a SinkBinding, so they get K_SINK) but do not declare them in
// EmitsAnnotation, which leaves the routing and loop checks blind to them.
func Advice(set *manifest.Set) []Problem {
	var notes []Problem
	for _, sb := range set.SinkBindings() {
		subj := sb.Spec.Subject
		if subj.Kind != "Service" || groupOf(subj.APIVersion) != "serving.knative.dev" || subj.Name == "" {
			continue
		}
		ns := subj.Namespace
		if ns == "" {
			ns = sb.Namespace
		}
		o := set.Find("serving.knative.dev", "Service", ns, subj.Name)
		if o == nil {
			continue // reported by Check
		}
		if svc := o.Obj.(*servingv1.Service); svc.Annotations[EmitsAnnotation] == "" {
			notes = append(notes, Problem{File: o.File, Object: o.Ref(), Field: "metadata.annotations[" + EmitsAnnotation + "]",
				Msg: fmt.Sprintf("SinkBinding %s/%s gives this function K_SINK, but it declares no emitted event types; list them so knfaas verify can check they are routed", sb.Namespace, sb.Name)})
		}
	}
	notes = append(notes, publicEventConsumers(set)...)
	return notes
}

// publicEventConsumers notes Knative Services that receive events (Trigger subscribers, dead-letter
// sinks, source sinks) but are reachable from outside the cluster: only functions meant for
// outside callers should be public, the rest carry networking.knative.dev/visibility: cluster-local.
func publicEventConsumers(set *manifest.Set) []Problem {
	consumers := map[*manifest.Object]string{}
	add := func(ref *duckv1.KReference, namespace, why string) {
		if ref == nil || ref.Kind != "Service" || groupOf(ref.APIVersion) != "serving.knative.dev" {
			return
		}
		ns := ref.Namespace
		if ns == "" {
			ns = namespace
		}
		if o := set.Find("serving.knative.dev", "Service", ns, ref.Name); o != nil {
			if _, seen := consumers[o]; !seen {
				consumers[o] = why
			}
		}
	}
	for _, t := range set.Triggers() {
		add(t.Spec.Subscriber.Ref, t.Namespace, "Trigger "+t.Name+" delivers to it")
		if t.Spec.Delivery != nil && t.Spec.Delivery.DeadLetterSink != nil {
			add(t.Spec.Delivery.DeadLetterSink.Ref, t.Namespace, "Trigger "+t.Name+" dead-letters to it")
		}
	}
	for _, b := range set.Brokers() {
		if b.Spec.Delivery != nil && b.Spec.Delivery.DeadLetterSink != nil {
			add(b.Spec.Delivery.DeadLetterSink.Ref, b.Namespace, "Broker "+b.Name+" dead-letters to it")
		}
	}
	for _, p := range set.PingSources() {
		add(p.Spec.Sink.Ref, p.Namespace, "PingSource "+p.Name+" sends to it")
	}
	var notes []Problem
	for i := range set.Objects {
		o := &set.Objects[i]
		why, ok := consumers[o]
		if !ok {
			continue
		}
		if o.Obj.(*servingv1.Service).Labels["networking.knative.dev/visibility"] != "cluster-local" {
			notes = append(notes, Problem{File: o.File, Object: o.Ref(), Field: "metadata.labels[networking.knative.dev/visibility]",
				Msg: why + ", yet it is public; label it cluster-local unless outside callers need it"})
		}
	}
	return notes
}
