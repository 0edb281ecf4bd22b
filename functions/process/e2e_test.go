//go:build e2e

package main

import (
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// badDefinition is a process manager whose only definition lacks a timeout on step "cook".
const badDefinition = `apiVersion: v1
kind: ConfigMap
metadata: {name: bad-definitions, namespace: knfaas}
data:
  order.yaml: |
    name: order
    start: e2e.order.placed
    completed: e2e.order.completed
    failed: e2e.order.failed
    compensated: e2e.order.compensated
    steps:
    - name: cook
      command: {type: e2e.cook, success: [e2e.cooked]}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: bad-process, namespace: knfaas}
spec:
  template:
    spec:
      containers:
      - image: ko://github.com/knfaas/knfaas/functions/process
        readinessProbe:
          httpGet: {path: /health/readiness}
        env:
        - {name: PROCESS_DEFINITIONS_DIR, value: /etc/knfaas/process}
        - name: REDIS_URL
          valueFrom: {secretKeyRef: {name: redis, key: url}}
        volumeMounts:
        - {name: definitions, mountPath: /etc/knfaas/process, readOnly: true}
      volumes:
      - name: definitions
        configMap: {name: bad-definitions}
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: bad-process, namespace: knfaas}
spec:
  subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: bad-process, namespace: knfaas}
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default, namespace: knfaas}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: bad-process-order-placed, namespace: knfaas}
spec:
  broker: default
  filter:
    attributes: {type: e2e.order.placed}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: bad-process, namespace: knfaas}
`

// TestBadDefinitionRefusedAtStart: under knfaas up, a process manager whose definition has an
// error never becomes ready, so knfaas up refuses to start (as a Knative Service whose first
// revision cannot start never becomes Ready), and the output names the process and step.
func TestBadDefinitionRefusedAtStart(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(badDefinition), 0o600); err != nil {
		t.Fatal(err)
	}
	args := []string{"up", "--defaults=false", "--addr", "127.0.0.1:0", "--start-timeout", "60s", "--state-dir", t.TempDir(), "--run-dir", t.TempDir()}
	for _, p := range []string{"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml", "config/600-broker.yaml", "config/400-deadletter-config.yaml", "config/700-deadletter.yaml", dir} {
		args = append(args, "-f", p)
	}
	cmd := exec.Command(runtimetest.Binary(t), args...)
	cmd.Dir = runtimetest.ModuleRoot(t)
	cmd.Env = append(os.Environ(), "REDIS_URL="+srv.URL())
	out, err := cmd.CombinedOutput()
	if err == nil {
		t.Fatalf("knfaas up started with an invalid process definition:\n%s", out)
	}
	// func-go logs the error as JSON, so the quotes arrive escaped.
	text := strings.ReplaceAll(string(out), `\"`, `"`)
	for _, want := range []string{`process "order" step 1 "cook": timeout is required`, "Service knfaas/bad-process", "exited before it became ready"} {
		if !strings.Contains(text, want) {
			t.Errorf("output does not name %q:\n%s", want, text)
		}
	}
}
