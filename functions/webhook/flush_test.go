package main

import (
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/knfaas/knfaas/internal/harness/maintest"
)

// spanReceiver is an OTLP/HTTP receiver keeping the names of the spans of each trace.
type spanReceiver struct {
	mu    sync.Mutex
	names map[string][]string
}

func (s *spanReceiver) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, _ := io.ReadAll(r.Body)
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, rs := range req.ResourceSpans {
		for _, ss := range rs.ScopeSpans {
			for _, span := range ss.Spans {
				id := hex.EncodeToString(span.TraceId)
				s.names[id] = append(s.names[id], span.Name)
			}
		}
	}
}

func (s *spanReceiver) spans(traceID string) []string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.names[traceID]
}

// TestSpansAreSentOnSIGTERM runs the real main with a batch delay far longer than the test: a
// span that ended just before the platform's SIGTERM must still reach the receiver, sent while
// the function stops, and the function must exit 0.
func TestSpansAreSentOnSIGTERM(t *testing.T) {
	tests := map[string]struct {
		method, path string
		wantStatus   int
		traceID      string
	}{
		"an unknown source": {http.MethodPost, "/nosuch", http.StatusNotFound, "8bf92f3577b34da6a3ce929d0e0e4731"},
		"a GET":             {http.MethodGet, "/github", http.StatusMethodNotAllowed, "8bf92f3577b34da6a3ce929d0e0e4732"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			recv := &spanReceiver{names: map[string][]string{}}
			srv := httptest.NewServer(recv)
			defer srv.Close()
			child := maintest.Serve(t, os.Environ(),
				"WEBHOOK_SOURCES_FILE=testdata/sources.yaml", "K_SINK=http://127.0.0.1:1", "REDIS_URL=redis://127.0.0.1:1",
				"GITHUB_WEBHOOK_SECRET="+githubSecret, "GITHUB_WEBHOOK_SECRET_PREVIOUS=", "STRIPE_WEBHOOK_SECRET="+stripeSecret,
				"SLACK_SIGNING_SECRET="+slackSecret, "SVIX_WEBHOOK_SECRET="+svixSecret, "SHOP_WEBHOOK_SECRET="+shopSecret, "MINIO_WEBHOOK_TOKEN="+minioToken,
				"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT="+srv.URL+"/v1/traces", "OTEL_TRACES_SAMPLER=parentbased_always_on",
				"OTEL_BSP_SCHEDULE_DELAY=600000") // ten minutes: only the flush on stop sends the span
			send := func(traceparent string) int {
				req, _ := http.NewRequest(tc.method, "http://"+child.Addr+tc.path, strings.NewReader("{}"))
				if traceparent != "" {
					req.Header.Set("traceparent", traceparent)
				}
				resp, err := http.DefaultClient.Do(req)
				if err != nil {
					return 0
				}
				resp.Body.Close()
				return resp.StatusCode
			}
			// Untraced requests until Start has finished (503 "starting" before).
			for deadline := time.Now().Add(30 * time.Second); send("") != tc.wantStatus; time.Sleep(20 * time.Millisecond) {
				if time.Now().After(deadline) {
					t.Fatalf("the function never answered %d", tc.wantStatus)
				}
			}
			if got := send("00-" + tc.traceID + "-00f067aa0ba902b7-01"); got != tc.wantStatus {
				t.Fatalf("status %d, want %d", got, tc.wantStatus)
			}
			out, err := child.Terminate(t)
			if err != nil {
				t.Fatalf("main ended with %v after SIGTERM, want exit 0; output:\n%s", err, out)
			}
			if got := recv.spans(tc.traceID); len(got) != 1 || got[0] != "webhook intake" {
				t.Fatalf("the receiver has %v for the request's trace, want [webhook intake]; output:\n%s", got, out)
			}
		})
	}
}
