//go:build e2e

package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/knfaas/knfaas/internal/redistest"
	"github.com/knfaas/knfaas/internal/runtimetest"
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
// error does not start, and says which process and step.
func TestBadDefinitionRefusedAtStart(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "bad.yaml"), []byte(badDefinition), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := runtimetest.Start(t, runtimetest.Options{
		Paths:    []string{"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml", "config/600-broker.yaml", "config/400-deadletter-config.yaml", "config/700-deadletter.yaml", dir},
		RedisURL: srv.URL(),
	})
	e := cloudevents.NewEvent()
	e.SetID("o1-placed")
	e.SetType("e2e.order.placed")
	e.SetSource("/e2e")
	e.SetSubject("o1")
	_ = e.SetData(cloudevents.ApplicationJSON, map[string]int{"amount": 1})
	rt.Send("knfaas", "default", e)
	runtimetest.Eventually(t, 3*time.Minute, "start-up refusal naming process and step in the function's log", func() bool {
		// func-go logs the error as JSON, so the quotes arrive escaped.
		out := strings.ReplaceAll(rt.Output(), `\"`, `"`)
		return strings.Contains(out, `process "order" step 1 "cook": timeout is required`)
	})
	if n, _ := srv.Client().Exists(t.Context(), "knfaas:process:instance:o1").Result(); n != 0 {
		t.Error("an instance was started by a manager whose definition is invalid")
	}
}
