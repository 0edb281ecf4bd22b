//go:build e2e

package e2e

import (
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// logsBroker is a Broker without a dead-letter sink, so the run needs no deadletter function.
const logsBroker = `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: knfaas}
`

// TestLogsOfOneService runs the pos purchasing function under knfaas up --log-format json
// at the default level, sends it one traced reorder request, and reads its lines with
// `knfaas logs pos-purchasing`: every line is one JSON object naming the service; the line
// about the order carries the event's id and the sender's trace id; func-go's debug chatter
// is hidden. It logs the share of debug lines among the service's lines.
func TestLogsOfOneService(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	broker := filepath.Join(t.TempDir(), "broker.yaml")
	if err := os.WriteFile(broker, []byte(logsBroker), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := runtimetest.Start(t, runtimetest.Options{
		Paths: []string{"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml", broker,
			"examples/pos/config/700-pos-purchasing.yaml", "examples/pos/triggers/pos-purchasing-reorder-requested.yaml"},
		RedisURL: srv.URL(),
		Args:     []string{"--log-format", "json"},
	})

	const traceID = "5b8efff798038103d269b633813fc60c"
	e := runtimetest.NewEvent("logs-e2e-reorder-1", "dev.knfaas.example.pos.reorder.requested")
	e.SetSource("knfaas/test/e2e")
	e.SetExtension("traceparent", "00-"+traceID+"-eee19b7ec3c1b174-01")
	if err := e.SetData("application/json", map[string]any{"sku": "SKU-LOGS", "store": "berlin-1", "stock": 4, "threshold": 5}); err != nil {
		t.Fatal(err)
	}
	rt.Send("knfaas", "default", e)

	logs := func(args ...string) (string, error) {
		cmd := exec.Command(runtimetest.Binary(t), append([]string{"logs", "--state-dir", rt.StateDir()}, args...)...)
		out, err := cmd.CombinedOutput()
		return string(out), err
	}
	var order map[string]any
	var lines []map[string]any
	runtimetest.Eventually(t, 60*time.Second, "knfaas logs pos-purchasing shows the recorded order", func() bool {
		out, err := logs("pos-purchasing")
		if err != nil {
			t.Fatalf("knfaas logs pos-purchasing: %v\n%s", err, out)
		}
		lines = lines[:0]
		for _, l := range strings.Split(strings.TrimSpace(out), "\n") {
			var m map[string]any
			if err := json.Unmarshal([]byte(l), &m); err != nil {
				t.Fatalf("not a JSON line: %q\n%s", l, out)
			}
			lines = append(lines, m)
			if m["msg"] == "purchase order recorded" {
				order = m
			}
		}
		return order != nil
	})
	want := map[string]string{"event_id": "logs-e2e-reorder-1", "trace_id": traceID, "service": "pos-purchasing", "function": "purchasing", "level": "INFO"}
	for k, v := range want {
		if order[k] != v {
			t.Errorf("%s = %v, want %q in the order's line %v", k, order[k], v, order)
		}
	}
	debug := 0
	for _, m := range lines {
		if m["service"] != "pos-purchasing" {
			t.Errorf("line without service pos-purchasing: %v", m)
		}
		if _, ok := m["time"].(string); !ok {
			t.Errorf("line without an RFC 3339 time: %v", m)
		}
		if m["level"] == "DEBUG" || m["level"] == "debug" || m["msg"] == "function starting" || m["message"] == "function starting" {
			debug++
			t.Errorf("func-go debug line at info: %v", m)
		}
	}
	t.Logf("figure: pos-purchasing wrote %d lines at the default level, %d of them debug", len(lines), debug)

	// The runtime's stderr carries the same line, tagged with its service and instance.
	if !strings.Contains(rt.Output(), `{"service":"pos-purchasing","instance":"knfaas/pos-purchasing-`) {
		t.Errorf("the runtime's output has no tagged function line:\n%s", rt.Output())
	}
	// The runtime's own lines follow --log-format too.
	if !strings.Contains(rt.Output(), `"level":"INFO","msg":"instance ready","service":"knfaas/pos-purchasing"`) {
		t.Errorf("the runtime's own line about the instance is not JSON:\n%s", rt.Output())
	}
	out, err := logs("payments")
	if err == nil || !strings.Contains(out, `no service "payments" in this knfaas up; its services: knfaas/pos-purchasing`) {
		t.Errorf("knfaas logs payments: %v\n%s", err, out)
	}
	out, err = logs("pos-purchasing", "--tail", "1")
	if err != nil || strings.Count(strings.TrimSpace(out), "\n") != 0 || out == "" {
		t.Errorf("knfaas logs --tail 1: %v\n%q", err, out)
	}
}
