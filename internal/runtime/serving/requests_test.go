package serving

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// TestRequestsAreMeasuredWithTheirTrace: the Pool reports every request to the runtime's
// metrics, by CloudEvent type and status, and a request of a sampled trace (traceparent header,
// or a binary-mode event's ce-traceparent) leaves its trace id as the exemplar, which a
// scrape asking for OpenMetrics finds; a 5xx counts as an error. Both routes to a Pool are
// measured alike.
func TestRequestsAreMeasuredWithTheirTrace(t *testing.T) {
	for _, route := range poolRoutes {
		t.Run(route.name, func(t *testing.T) { testRequestsAreMeasured(t, route) })
	}
}

func testRequestsAreMeasured(t *testing.T, route poolRoute) {
	m := metrics.New()
	spec := Spec{Namespace: "test", Name: "red", Binary: echoBinary, ReadinessPath: "/health/readiness", IdleTimeout: time.Minute}
	pool := NewPool(spec, slog.New(slog.NewTextHandler(io.Discard, nil)), m)
	client, base := route.serve(t, pool)

	const (
		tracedID   = "4bf92f3577b34da6a3ce929d0e0e4736"
		failedID   = "0af7651916cd43dd8448eb211c80319c"
		extID      = "1af7651916cd43dd8448eb211c80319d"
		unsampleID = "2af7651916cd43dd8448eb211c80319e"
	)
	series := func(name, eventType, code string) string {
		s := name + `{`
		if code != "" {
			s += `code="` + code + `",`
		}
		return s + `event_type="` + eventType + `",namespace="test",service="red"}`
	}
	tests := []struct {
		name      string
		path      string
		headers   map[string]string
		eventType string
		wantCode  int
		want      []string // line prefixes in the OpenMetrics scrape
		not       []string
	}{
		{
			name: "a traced event", path: "/", eventType: "com.example.traced", wantCode: 200,
			headers: map[string]string{"traceparent": "00-" + tracedID + "-00f067aa0ba902b7-01"},
			want: []string{
				series("knfaas_service_requests_total", "com.example.traced", "200") + ` 1.0 # {trace_id="` + tracedID + `"} 1.0`,
				series("knfaas_service_request_errors_total", "com.example.traced", "") + ` 0.0`,
			},
		},
		{
			name: "a traced event answered 503 is an error", path: "/?status=503", eventType: "com.example.failing", wantCode: 503,
			headers: map[string]string{"traceparent": "00-" + failedID + "-00f067aa0ba902b7-01"},
			want: []string{
				series("knfaas_service_requests_total", "com.example.failing", "503") + ` 1.0 # {trace_id="` + failedID + `"} 1.0`,
				series("knfaas_service_request_errors_total", "com.example.failing", "") + ` 1.0 # {trace_id="` + failedID + `"} 1.0`,
			},
		},
		{
			name: "the binary-mode extension alone", path: "/", eventType: "com.example.extension", wantCode: 200,
			headers: map[string]string{"ce-traceparent": "00-" + extID + "-00f067aa0ba902b7-01"},
			want:    []string{series("knfaas_service_requests_total", "com.example.extension", "200") + ` 1.0 # {trace_id="` + extID + `"} 1.0`},
		},
		{
			name: "an unsampled trace leaves no exemplar", path: "/", eventType: "com.example.unsampled", wantCode: 200,
			headers: map[string]string{"traceparent": "00-" + unsampleID + "-00f067aa0ba902b7-00"},
			want:    []string{series("knfaas_service_requests_total", "com.example.unsampled", "200") + ` 1.0`},
			not:     []string{unsampleID},
		},
		{
			name: "a plain request is counted without a type", path: "/?status=404", wantCode: 404,
			want: []string{series("knfaas_service_requests_total", "", "404") + ` 1.0`, series("knfaas_service_request_errors_total", "", "") + ` 0.0`},
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, base+tc.path, strings.NewReader(`{"n":1}`))
			if tc.eventType != "" {
				for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": "1", "ce-source": "/test", "ce-type": tc.eventType} {
					req.Header.Set(k, v)
				}
			}
			for k, v := range tc.headers {
				req.Header.Set(k, v)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode {
				t.Fatalf("status %d, want %d", resp.StatusCode, tc.wantCode)
			}
			body := scrapeOpenMetrics(t, m)
			for _, w := range tc.want {
				if !hasLinePrefix(body, w) {
					t.Errorf("no line starting %q in\n%s", w, linesWith(body, "knfaas_service_request"))
				}
			}
			for _, n := range tc.not {
				if strings.Contains(body, n) {
					t.Errorf("found %q in\n%s", n, linesWith(body, "knfaas_service_request"))
				}
			}
			if !strings.Contains(body, `knfaas_service_request_duration_seconds_count{event_type="`+tc.eventType+`",namespace="test",service="red"} 1`) {
				t.Errorf("the request's duration is not observed:\n%s", linesWith(body, "duration_seconds_count"))
			}
		})
	}
}

func scrapeOpenMetrics(t *testing.T, m *metrics.Runtime) string {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	req.Header.Set("Accept", "application/openmetrics-text; version=1.0.0; charset=utf-8")
	w := httptest.NewRecorder()
	m.Handler().ServeHTTP(w, req)
	if ct := w.Header().Get("Content-Type"); !strings.HasPrefix(ct, "application/openmetrics-text") {
		t.Fatalf("scrape answered %q, want OpenMetrics", ct)
	}
	return w.Body.String()
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
