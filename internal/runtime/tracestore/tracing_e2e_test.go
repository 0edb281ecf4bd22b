//go:build e2e

package tracestore_test

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

// traceManifests: a process manager started by GitHub pushes, whose one step commands the
// food-delivery kitchen (which replies), and a Trigger on the same pushes whose subscriber
// always answers 503, retried once and then dead-lettered.
const traceManifests = `apiVersion: v1
kind: ConfigMap
metadata: {name: trace-definitions, namespace: knfaas}
data:
  traced.yaml: |
    name: traced
    start: com.github.push
    completed: e2e.traced.completed
    failed: e2e.traced.failed
    compensated: e2e.traced.compensated
    steps:
    - name: cook
      command:
        type: dev.knfaas.example.food.kitchen.prepare
        success: [dev.knfaas.example.food.kitchen.prepared]
        failure: [dev.knfaas.example.food.kitchen.rejected]
      timeout: 1m
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: trace-process
  namespace: knfaas
  labels: {networking.knative.dev/visibility: cluster-local}
spec:
  template:
    spec:
      containers:
      - image: ko://github.com/knfaas/knfaas/functions/process
        readinessProbe:
          httpGet: {path: /health/readiness}
        env:
        - {name: PROCESS_DEFINITIONS_DIR, value: /etc/knfaas/process}
        - {name: PROCESS_ACK_INTERVAL, value: 10ms}
        - name: REDIS_URL
          valueFrom: {secretKeyRef: {name: redis, key: url}}
        volumeMounts:
        - {name: definitions, mountPath: /etc/knfaas/process, readOnly: true}
      volumes:
      - name: definitions
        configMap: {name: trace-definitions}
---
apiVersion: sources.knative.dev/v1
kind: SinkBinding
metadata: {name: trace-process, namespace: knfaas}
spec:
  subject: {apiVersion: serving.knative.dev/v1, kind: Service, name: trace-process, namespace: knfaas}
  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default, namespace: knfaas}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: trace-process-start, namespace: knfaas}
spec:
  broker: default
  filter:
    attributes: {type: com.github.push}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: trace-process, namespace: knfaas}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: trace-process-prepared, namespace: knfaas}
spec:
  broker: default
  filter:
    attributes: {type: dev.knfaas.example.food.kitchen.prepared}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: trace-process, namespace: knfaas}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: trace-kitchen
  namespace: knfaas
  labels: {networking.knative.dev/visibility: cluster-local}
spec:
  template:
    spec:
      containers:
      - image: ko://github.com/knfaas/knfaas/examples/food-delivery/functions/kitchen
        readinessProbe:
          httpGet: {path: /health/readiness}
        env:
        - {name: KITCHEN_MODE, value: ok}
        - {name: KITCHEN_DELAY, value: 10ms}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: trace-kitchen-prepare, namespace: knfaas}
spec:
  broker: default
  filter:
    attributes: {type: dev.knfaas.example.food.kitchen.prepare}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: trace-kitchen, namespace: knfaas}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: trace-echo
  namespace: knfaas
  labels: {networking.knative.dev/visibility: cluster-local}
spec:
  template:
    spec:
      containers:
      - image: ko://github.com/knfaas/knfaas/test/functions/echo
        readinessProbe:
          httpGet: {path: /health/readiness}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: trace-failing, namespace: knfaas}
spec:
  broker: default
  filter:
    attributes: {type: com.github.push}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: trace-echo, namespace: knfaas}
    uri: /?status=503
  delivery:
    retry: 1
    backoffDelay: PT0.05S
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: deadletter, namespace: knfaas}
`

// otlpReceiver is an external OTLP/HTTP collector: it decodes every request with the OTLP
// protobuf definitions and keeps the trace ids and span names.
type otlpReceiver struct {
	mu    sync.Mutex
	names map[string][]string // trace id → span names
}

func (o *otlpReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if r.URL.Path != "/v1/traces" || r.Header.Get("Content-Type") != tracing.ContentTypeProtobuf || proto.Unmarshal(body, &req) != nil {
		http.Error(w, "want OTLP/HTTP protobuf at /v1/traces", http.StatusBadRequest)
		return
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, s := range ss.Spans {
				tid := hex.EncodeToString(s.TraceId)
				o.names[tid] = append(o.names[tid], s.Name)
			}
		}
	}
}

func (o *otlpReceiver) spans(traceID string) []string {
	o.mu.Lock()
	defer o.mu.Unlock()
	return append([]string(nil), o.names[traceID]...)
}

// traceNode mirrors the tree `knfaas trace -o json` prints.
type traceNode struct {
	Name       string            `json:"name"`
	Service    string            `json:"service"`
	SpanID     string            `json:"spanId"`
	Parent     string            `json:"parentSpanId"`
	Status     string            `json:"status"`
	Attributes map[string]string `json:"attributes"`
	Children   []*traceNode      `json:"children"`
}

// TestEventJourneyIsOneTrace: under knfaas up, a GitHub delivery sent with a traceparent goes
// through the webhook intake, the broker, a process manager, the kitchen command and its reply,
// and a Trigger that fails twice and dead-letters; all of it is one trace continuing the
// sender's, with the right parent/child links, found by `knfaas trace <delivery id>` in the
// runtime's own store and also forwarded to an external OTLP/HTTP receiver.
func TestEventJourneyIsOneTrace(t *testing.T) {
	ext := &otlpReceiver{names: map[string][]string{}}
	extSrv := httptest.NewServer(ext)
	defer extSrv.Close()
	t.Setenv(tracestore.EnvForward, extSrv.URL)

	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "trace.yaml"), []byte(traceManifests), 0o600); err != nil {
		t.Fatal(err)
	}
	root := runtimetest.ModuleRoot(t)
	var paths []string
	for _, f := range []string{"100-namespace.yaml", "300-redis-secret.yaml", "340-webhook-secrets.yaml",
		"400-webhook-sources.yaml", "400-deadletter-config.yaml", "500-redis-service.yaml", "510-redis-statefulset.yaml", "600-broker.yaml",
		"700-deadletter.yaml", "700-webhook.yaml", "710-webhook-sinkbinding.yaml"} {
		paths = append(paths, filepath.Join(root, "config", f))
	}
	rt := runtimetest.Start(t, runtimetest.Options{Paths: append(paths, dir), RedisURL: srv.URL()})

	const (
		senderTrace = "5bf92f3577b34da6a3ce929d0e0e4737"
		senderSpan  = "10f067aa0ba902b8"
		deliveryID  = "gh-trace-1"
	)
	secret := rt.DevSecret("knfaas", "webhook-secrets", "github", "CHANGE-ME-github-webhook-secret")
	body := `{"ref":"refs/heads/main","repository":{"full_name":"octo/trace-1"},"orderId":"trace-1","amount":12}`
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	url := rt.ServiceURL("knfaas", "webhook") + "/github"
	runtimetest.Eventually(t, 60*time.Second, "the webhook accepts the delivery", func() bool {
		req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(body))
		req.Header.Set("Content-Type", "application/json")
		req.Header.Set("X-GitHub-Event", "push")
		req.Header.Set("X-GitHub-Delivery", deliveryID)
		req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
		req.Header.Set("traceparent", "00-"+senderTrace+"-"+senderSpan+"-01")
		resp, err := rt.Client().Do(req)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode < 300
	})

	traceCmd := func(output string) (string, error) {
		cmd := exec.Command(runtimetest.Binary(t), "trace", deliveryID, "-o", output, "--state-dir", rt.StateDir())
		out, err := cmd.Output()
		return string(out), err
	}
	byName := map[string][]*traceNode{}
	byID := map[string]*traceNode{}
	complete := func() bool {
		out, err := traceCmd("json")
		if err != nil {
			return false
		}
		var doc struct {
			Traces []struct {
				TraceID string       `json:"traceId"`
				Spans   []*traceNode `json:"spans"`
			} `json:"traces"`
		}
		if json.Unmarshal([]byte(out), &doc) != nil || len(doc.Traces) != 1 || doc.Traces[0].TraceID != senderTrace {
			return false
		}
		byName, byID = map[string][]*traceNode{}, map[string]*traceNode{}
		var walk func([]*traceNode)
		walk = func(ns []*traceNode) {
			for _, n := range ns {
				byName[n.Name] = append(byName[n.Name], n)
				byID[n.SpanID] = n
				walk(n.Children)
			}
		}
		walk(doc.Traces[0].Spans)
		return len(byName["handle dev.knfaas.example.food.kitchen.prepared"]) == 1 && len(byName["dead-letter knfaas/trace-failing"]) == 1 &&
			len(byName["deliver knfaas/trace-failing"]) == 1 && len(byName["deliver knfaas/trace-process-prepared"]) == 1
	}
	runtimetest.Eventually(t, 90*time.Second, "the whole journey in `knfaas trace`", complete)

	one := func(name string) *traceNode {
		t.Helper()
		ns := byName[name]
		if len(ns) != 1 {
			t.Fatalf("%d spans named %q, want 1 (have %v)", len(ns), name, keys(byName))
		}
		return ns[0]
	}
	// under reports whether n descends from the span named ancestor.
	under := func(n *traceNode, ancestor string) bool {
		for p := byID[n.Parent]; p != nil; p = byID[p.Parent] {
			if p.Name == ancestor {
				return true
			}
		}
		return false
	}
	intake := one("webhook intake")
	if intake.Parent != senderSpan || intake.Service != "webhook" {
		t.Errorf("webhook intake: parent %s service %s, want the sender's span %s and service webhook", intake.Parent, intake.Service, senderSpan)
	}
	links := []struct {
		child, ancestor string
	}{
		{"publish com.github.push", "webhook intake"},
		{"deliver knfaas/trace-process-start", "publish com.github.push"},
		{"handle com.github.push", "deliver knfaas/trace-process-start"},
		{"publish dev.knfaas.example.food.kitchen.prepare", "handle com.github.push"},
		{"deliver knfaas/trace-kitchen-prepare", "publish dev.knfaas.example.food.kitchen.prepare"},
		{"handle dev.knfaas.example.food.kitchen.prepare", "deliver knfaas/trace-kitchen-prepare"},
		{"deliver knfaas/trace-process-prepared", "deliver knfaas/trace-kitchen-prepare"},
		{"handle dev.knfaas.example.food.kitchen.prepared", "deliver knfaas/trace-process-prepared"},
		{"deliver knfaas/trace-failing", "publish com.github.push"},
		{"dead-letter knfaas/trace-failing", "deliver knfaas/trace-failing"},
	}
	for _, l := range links {
		if c := one(l.child); !under(c, l.ancestor) {
			t.Errorf("%q is not under %q", l.child, l.ancestor)
		}
	}
	// The failing Trigger: two attempts (503 both), then the dead-letter send.
	failing := one("deliver knfaas/trace-failing")
	var attempts []string
	for _, c := range failing.Children {
		for _, a := range c.Children {
			if n := a.Attributes[tracing.AttrAttempt]; n != "" {
				attempts = append(attempts, n+":"+a.Attributes["http.response.status_code"])
			}
		}
	}
	if strings.Join(attempts, ",") != "1:503,2:503" {
		t.Errorf("failing Trigger's attempts %v, want 1:503,2:503", attempts)
	}
	if failing.Attributes["knfaas.delivery.outcome"] != "dead-lettered" || failing.Status != "error" {
		t.Errorf("failing delivery: outcome %q status %q", failing.Attributes["knfaas.delivery.outcome"], failing.Status)
	}
	// The process manager's Redis calls are spans under its handler.
	redisUnder := 0
	for _, n := range byID {
		if n.Service == "trace-process" && n.Attributes["db.system"] == "redis" && under(n, "handle com.github.push") {
			redisUnder++
		}
	}
	if redisUnder == 0 {
		t.Error("no Redis span under the process manager's handler")
	}
	table, err := traceCmd("table")
	t.Logf("knfaas trace %s:\n%s", deliveryID, table)
	if err != nil || !strings.Contains(table, "webhook intake") || !strings.Contains(table, "attempt=2, status=503") {
		t.Errorf("table output (err %v):\n%s", err, table)
	}
	runtimetest.Eventually(t, 30*time.Second, "spans forwarded to the external receiver", func() bool {
		got := strings.Join(ext.spans(senderTrace), "|")
		return strings.Contains(got, "webhook intake") && strings.Contains(got, "dead-letter knfaas/trace-failing")
	})
}

func keys(m map[string][]*traceNode) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	return out
}
