package embedded

import (
	"bytes"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// TestNotRun: the plan lists the loaded objects it will not run, with the reason; a run says
// so at start, and --strict refuses them. A Redis StatefulSet behind a Service is stood in for
// by the runtime's Redis, so it is not among them.
func TestNotRun(t *testing.T) {
	const deployment = `apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: ns}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: legacy, image: example.com/legacy}]
`
	const redis = `apiVersion: apps/v1
kind: StatefulSet
metadata: {name: redis, namespace: ns}
spec:
  selector: {matchLabels: {app: redis}}
  serviceName: redis
  template:
    metadata: {labels: {app: redis}}
    spec:
      containers: [{name: redis, image: redis:7}]
---
apiVersion: v1
kind: Service
metadata: {name: redis, namespace: ns}
spec:
  selector: {app: redis}
  ports: [{port: 6379}]
`
	const sinkBinding = `apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: orphan, namespace: ns}
spec:
  subject: {apiVersion: apps/v1, kind: Deployment, name: legacy}
  sink: {uri: "http://example.com/"}
`
	tests := []struct {
		name       string
		manifests  string
		wantNotRun []string
	}{
		{name: "only what runs", manifests: brokerDoc},
		{name: "a deployment", manifests: manifesttest.Docs(brokerDoc, deployment),
			wantNotRun: []string{"m.yaml (document 2): Deployment ns/legacy: loaded, not run (knfaas up runs Knative Services, Brokers, Triggers, PingSources and SinkBindings)"}},
		{name: "a redis statefulset behind a service is stood in for", manifests: redis},
		{name: "a sink binding whose subject is no knative service", manifests: manifesttest.Docs(deployment, sinkBinding),
			wantNotRun: []string{
				"m.yaml (document 1): Deployment ns/legacy: loaded, not run",
				"m.yaml (document 2): SinkBinding ns/orphan: its subject is no Knative Service in the loaded manifests; no function gets its K_SINK",
			}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			objs, errs := manifest.Decode("m.yaml", []byte(tc.manifests))
			if len(errs) > 0 {
				t.Fatal(errs[0])
			}
			p, err := NewPlan(&manifest.Set{Objects: objs}, PlanOptions{})
			if err != nil {
				t.Fatal(err)
			}
			if len(p.NotRun) != len(tc.wantNotRun) {
				t.Fatalf("NotRun %q, want %q", p.NotRun, tc.wantNotRun)
			}
			for i, n := range tc.wantNotRun {
				if !strings.HasPrefix(p.NotRun[i], n) {
					t.Errorf("NotRun[%d] = %q, want %q", i, p.NotRun[i], n)
				}
			}
			var out bytes.Buffer
			if err := p.admit(Options{Out: &out}); err != nil {
				t.Fatalf("admit without --strict: %v", err)
			}
			strictErr := p.admit(Options{Out: &out, Strict: true})
			for _, n := range tc.wantNotRun {
				if !strings.Contains(out.String(), "not run: "+n) {
					t.Errorf("the run does not say %q:\n%s", n, out.String())
				}
				if strictErr == nil || !strings.Contains(strictErr.Error(), n) || !strings.Contains(strictErr.Error(), "--strict") {
					t.Errorf("--strict: %v, want a refusal naming %q", strictErr, n)
				}
			}
			if len(tc.wantNotRun) == 0 && (strictErr != nil || out.Len() > 0) {
				t.Errorf("--strict: %v, printed %q; want nothing", strictErr, out.String())
			}
		})
	}
}
