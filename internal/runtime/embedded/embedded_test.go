package embedded

import (
	"context"
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"strconv"
	"strings"
	"sync"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

func trigger(t *testing.T, spec string) *manifest.Object {
	t.Helper()
	doc := manifesttest.Trigger("ns", "t", "default") + "  subscriber: {uri: 'http://127.0.0.1:1/'}\n" + spec
	return &decodeSet(t, "trigger.yaml", doc).Objects[0]
}

func TestTriggerFilters(t *testing.T) {
	event := func(typ, source string, ext map[string]string) cloudevents.Event {
		e := cloudevents.NewEvent()
		e.SetID("1")
		e.SetType(typ)
		e.SetSource(source)
		for k, v := range ext {
			e.SetExtension(k, v)
		}
		return e
	}
	placed := event("com.shop.order.placed", "/shop/eu", map[string]string{"region": "eu"})
	shipped := event("com.shop.order.shipped", "/shop/us", nil)
	tests := []struct {
		name    string
		spec    string
		matches map[string]bool // event type → delivered
	}{
		{name: "no filter", spec: "", matches: map[string]bool{"com.shop.order.placed": true, "com.shop.order.shipped": true}},
		{name: "legacy attributes", spec: "  filter:\n    attributes: {type: com.shop.order.placed}\n", matches: map[string]bool{"com.shop.order.placed": true, "com.shop.order.shipped": false}},
		{name: "legacy attributes on an extension", spec: "  filter:\n    attributes: {region: eu}\n", matches: map[string]bool{"com.shop.order.placed": true, "com.shop.order.shipped": false}},
		{name: "exact", spec: "  filters:\n  - exact: {source: /shop/us}\n", matches: map[string]bool{"com.shop.order.placed": false, "com.shop.order.shipped": true}},
		{name: "prefix", spec: "  filters:\n  - prefix: {type: com.shop.order.}\n", matches: map[string]bool{"com.shop.order.placed": true, "com.shop.order.shipped": true}},
		{name: "suffix", spec: "  filters:\n  - suffix: {type: .shipped}\n", matches: map[string]bool{"com.shop.order.placed": false, "com.shop.order.shipped": true}},
		{name: "any", spec: "  filters:\n  - any:\n    - exact: {type: com.shop.order.placed}\n    - exact: {source: /nowhere}\n", matches: map[string]bool{"com.shop.order.placed": true, "com.shop.order.shipped": false}},
		{name: "all", spec: "  filters:\n  - all:\n    - prefix: {type: com.shop.}\n    - exact: {region: eu}\n", matches: map[string]bool{"com.shop.order.placed": true, "com.shop.order.shipped": false}},
		{name: "not", spec: "  filters:\n  - not:\n      exact: {type: com.shop.order.placed}\n", matches: map[string]bool{"com.shop.order.placed": false, "com.shop.order.shipped": true}},
		{name: "cesql", spec: "  filters:\n  - cesql: \"source LIKE '/shop/%' AND type LIKE '%shipped'\"\n", matches: map[string]bool{"com.shop.order.placed": false, "com.shop.order.shipped": true}},
		{name: "filters win over the legacy filter", spec: "  filter:\n    attributes: {type: com.shop.order.placed}\n  filters:\n  - exact: {type: com.shop.order.shipped}\n", matches: map[string]bool{"com.shop.order.placed": false, "com.shop.order.shipped": true}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := triggerFilter(trigger(t, tc.spec).Obj.(*eventingv1.Trigger))
			for _, e := range []cloudevents.Event{placed, shipped} {
				delivered := f == nil || f.Filter(context.Background(), e) != eventfilter.FailFilter
				if delivered != tc.matches[e.Type()] {
					t.Errorf("%s delivered = %v, want %v", e.Type(), delivered, tc.matches[e.Type()])
				}
			}
		})
	}
}

func TestEnvResolutionErrorsNameTheReference(t *testing.T) {
	base := manifesttest.Docs(`apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: ns}
stringData: {token: abc}
`, manifesttest.KService("{name: fn, namespace: ns}", "ko://example.com/fn")+`        env:
`)
	tests := []struct {
		name    string
		env     string
		want    string
		wantErr string
	}{
		{name: "secret key", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: token}}\n", want: "TOKEN=abc"},
		{name: "missing secret", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: nope, key: token}}\n", wantErr: "Service ns/fn: spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef: Secret ns/nope is not defined in the manifests"},
		{name: "missing key", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: other}}\n", wantErr: `Secret ns/creds has no key "other"`},
		{name: "optional missing key", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: other, optional: true}}\n"},
		{name: "dependent value", env: "        - name: A\n          value: x\n        - name: B\n          value: $(A)-y\n", want: "B=x-y"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := decodeSet(t, "fn.yaml", base+tc.env)
			svc := set.Services()[0]
			env, err := envFor(set, svc, &svc.Spec.Template.Spec.Containers[0])
			if endsWithError(t, err, tc.wantErr) {
				return
			}
			joined := strings.Join(env, "\n")
			if tc.want != "" && !strings.Contains(joined, tc.want) {
				t.Fatalf("env %q lacks %q", joined, tc.want)
			}
			if tc.name == "optional missing key" && strings.Contains(joined, "TOKEN=") {
				t.Fatalf("optional missing key set TOKEN: %q", joined)
			}
		})
	}
}

func TestRewriteRedisURL(t *testing.T) {
	standIn := []string{"redis", "redis.knfaas", "redis.knfaas.svc", "redis.knfaas.svc.cluster.local"}
	tests := map[string]struct {
		in        string
		rewritten bool
	}{
		"cluster service with password": {in: "redis://:pw@redis.knfaas.svc.cluster.local:6379/0", rewritten: true},
		"short name":                    {in: "rediss://redis:6379", rewritten: true},
		"external redis kept":           {in: "redis://cache.example.com:6379"},
		"not a redis URL":               {in: "http://redis:6379"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, ok := rewriteRedisURL(tc.in, standIn, "redis://127.0.0.1:9/0")
			if ok != tc.rewritten || (ok && got != "redis://127.0.0.1:9/0") || (!ok && got != tc.in) {
				t.Fatalf("rewriteRedisURL(%q) = %q, %v", tc.in, got, ok)
			}
		})
	}
}

// TestTriggerFiltersConcurrently evaluates nested any/all filters from many goroutines, as
// parallel deliveries do, where the second filter of each combinator decides most events (which
// made Knative's combinators reorder themselves from a goroutine, a data race under -race).
func TestTriggerFiltersConcurrently(t *testing.T) {
	spec := "  filters:\n  - any:\n    - exact: {source: /nowhere}\n    - all:\n      - exact: {source: /nowhere}\n      - prefix: {type: com.shop.}\n    - prefix: {type: com.shop.order.}\n  - all:\n    - prefix: {type: com.}\n    - not:\n        exact: {type: com.shop.order.refused}\n"
	f := triggerFilter(trigger(t, spec).Obj.(*eventingv1.Trigger))
	events := map[string]bool{"com.shop.order.placed": true, "com.shop.order.refused": false, "org.other": false}
	var wg sync.WaitGroup
	for range 8 {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := range 2000 {
				for typ, want := range events {
					e := cloudevents.NewEvent()
					e.SetID(strconv.Itoa(i))
					e.SetType(typ)
					e.SetSource("/shop/eu")
					if got := f.Filter(context.Background(), e) != eventfilter.FailFilter; got != want {
						t.Errorf("%s delivered = %v, want %v", typ, got, want)
						return
					}
				}
			}
		}()
	}
	wg.Wait()
}
