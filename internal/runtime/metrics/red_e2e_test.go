//go:build e2e

package metrics_test

import (
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// redManifests: one Service behind two Triggers, one of which always gets a 503 from it (no
// retry, no dead-letter sink).
const redManifests = `apiVersion: v1
kind: Namespace
metadata: {name: red}
---
apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: red}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: echo, namespace: red}
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
metadata: {name: ok, namespace: red}
spec:
  broker: default
  filter:
    attributes: {type: dev.knfaas.red.ok}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: echo}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: failing, namespace: red}
spec:
  broker: default
  filter:
    attributes: {type: dev.knfaas.red.fail}
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: echo}
    uri: /?status=503
  delivery:
    retry: 0
`

// TestFunctionRequestsCarryTheirTrace: under knfaas up, events sent to a Broker with a sender's
// trace context reach a function through a Trigger; the runtime's /metrics, scraped as
// OpenMetrics, counts each delivery by event type and status with the sender's trace id as
// exemplar, and counts the one the function answered 503 as an error.
func TestFunctionRequestsCarryTheirTrace(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "red.yaml"), []byte(redManifests), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{dir}, RedisURL: srv.URL()})

	const okTrace, failTrace = "6bf92f3577b34da6a3ce929d0e0e4738", "7bf92f3577b34da6a3ce929d0e0e4739"
	for id, e := range map[string]struct{ typ, trace string }{"red-ok": {"dev.knfaas.red.ok", okTrace}, "red-fail": {"dev.knfaas.red.fail", failTrace}} {
		ev := runtimetest.NewEvent(id, e.typ)
		ev.SetExtension("traceparent", "00-"+e.trace+"-20f067aa0ba902b9-01")
		rt.Send("red", "default", ev)
	}

	tests := []struct {
		name   string
		prefix string // a line of the OpenMetrics scrape
	}{
		{"the delivery counted with its trace", `knfaas_service_requests_total{code="200",event_type="dev.knfaas.red.ok",namespace="red",service="echo"} 1.0 # {trace_id="` + okTrace + `"} 1.0`},
		{"its duration observed with its trace", `knfaas_service_request_duration_seconds_count{event_type="dev.knfaas.red.ok",namespace="red",service="echo"} 1`},
		{"the 503 counted with its trace", `knfaas_service_requests_total{code="503",event_type="dev.knfaas.red.fail",namespace="red",service="echo"} 1.0 # {trace_id="` + failTrace + `"} 1.0`},
		{"the 503 is an error", `knfaas_service_request_errors_total{event_type="dev.knfaas.red.fail",namespace="red",service="echo"} 1.0 # {trace_id="` + failTrace + `"} 1.0`},
		{"the 200 is not", `knfaas_service_request_errors_total{event_type="dev.knfaas.red.ok",namespace="red",service="echo"} 0.0`},
	}
	var body string
	runtimetest.Eventually(t, 60*time.Second, "both deliveries in /metrics", func() bool {
		body = scrapeOpenMetrics(t, "http://"+rt.Addr()+"/metrics")
		return strings.Contains(body, `event_type="dev.knfaas.red.ok"`) && strings.Contains(body, `event_type="dev.knfaas.red.fail"`)
	})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if !hasLinePrefix(body, tc.prefix) {
				t.Errorf("no line starting %q in\n%s", tc.prefix, linesWith(body, "knfaas_service_request"))
			}
		})
	}
}

func scrapeOpenMetrics(t *testing.T, url string) string {
	t.Helper()
	req, _ := http.NewRequest(http.MethodGet, url, nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return ""
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if ct := resp.Header.Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Fatalf("/metrics answered %q, want OpenMetrics", ct)
	}
	return string(b)
}

func hasLinePrefix(body, prefix string) bool {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			return true
		}
	}
	return false
}

func linesWith(body, substr string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}
