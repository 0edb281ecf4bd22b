package cli

import (
	"bytes"
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

// TestTracePrintsTheJourney: `knfaas trace <event-id>` finds the running up, asks its store for
// the event's traces and prints each as a tree (children under parents, by start time) with
// offsets and durations, or as a nested document.
func TestTracePrintsTheJourney(t *testing.T) {
	store := tracestore.New(tracestore.Options{})
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	sp := func(id, parent, name, service string, from, to time.Duration, attrs map[string]string, status string) tracestore.Span {
		return tracestore.Span{TraceID: strings.Repeat("ab", 16), SpanID: id, ParentSpanID: parent, Name: name, Service: service,
			Start: t0.Add(from), End: t0.Add(to), Attributes: attrs, Status: status}
	}
	store.Add([]tracestore.Span{
		sp("0000000000000003", "0000000000000002", "deliver knfaas/process", "knfaas-up", 5*time.Millisecond, 40*time.Millisecond, nil, "error"),
		sp("0000000000000001", "", "webhook intake", "webhook", 0, 50*time.Millisecond, nil, ""),
		sp("0000000000000002", "0000000000000001", "broker ingress knfaas/default", "knfaas-up", 2*time.Millisecond, 4*time.Millisecond,
			map[string]string{tracing.AttrEventID: "ev-1"}, ""),
		sp("0000000000000005", "0000000000000003", "POST /", "knfaas-up", 20*time.Millisecond, 30*time.Millisecond, map[string]string{tracing.AttrAttempt: "2", "http.response.status_code": "202"}, ""),
		sp("0000000000000004", "0000000000000003", "POST /", "knfaas-up", 6*time.Millisecond, 10*time.Millisecond, map[string]string{tracing.AttrAttempt: "1", "http.response.status_code": "503"}, "error"),
	})
	fire := sp("0000000000000007", "0000000000000006", "fire deadline", "timer", 2*time.Millisecond, 3*time.Millisecond, nil, "")
	fire.TraceID = strings.Repeat("cd", 16)
	fire.Links = []tracestore.Link{{TraceID: strings.Repeat("ab", 16), SpanID: "0000000000000003"}}
	tick := sp("0000000000000006", "", "handle dev.knative.sources.ping", "timer", 0, 4*time.Millisecond, map[string]string{tracing.AttrEventID: "tick-1"}, "")
	tick.TraceID = strings.Repeat("cd", 16)
	store.Add([]tracestore.Span{tick, fire})
	mux := http.NewServeMux()
	mux.Handle("/_knfaas/TOKEN/otlp/", http.StripPrefix("/_knfaas/TOKEN/otlp", store))
	srv := httptest.NewServer(mux)
	t.Cleanup(srv.Close)
	state := t.TempDir()
	fakeRun(t, state, true, embedded.Endpoints{Addr: strings.TrimPrefix(srv.URL, "http://"), Internal: srv.URL + "/_knfaas/TOKEN", PID: 1, Started: t0})

	run := func(args ...string) (string, error) {
		root := NewRootCommand("knfaas")
		var out bytes.Buffer
		root.SetOut(&out)
		root.SetErr(&out)
		root.SetArgs(append(args, "--state-dir", state))
		err := root.Execute()
		return out.String(), err
	}
	cases := []struct {
		name    string
		args    []string
		want    []string // lines (or fragments) in this order
		wantErr string
	}{
		{name: "table: a tree in start order", args: []string{"trace", "ev-1"}, want: []string{
			"TRACE " + strings.Repeat("ab", 16),
			"+0s", "webhook intake",
			"+2ms", "└─ broker ingress knfaas/default",
			"+5ms", "└─ deliver knfaas/process", "ERROR",
			"+6ms", "├─ POST /  (attempt=1, status=503, ERROR",
			"+20ms", "10ms", "└─ POST /  (attempt=2, status=202)",
		}},
		{name: "a span link is shown", args: []string{"trace", "tick-1"}, want: []string{
			"TRACE " + strings.Repeat("cd", 16),
			"handle dev.knative.sources.ping",
			"└─ fire deadline  (linked to trace " + strings.Repeat("ab", 16) + ")",
		}},
		{name: "unknown event", args: []string{"trace", "nope"}, wantErr: "no trace holds event \"nope\""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			out, err := run(c.args...)
			if c.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), c.wantErr) {
					t.Fatalf("error %v, want %q", err, c.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			rest := out
			for _, w := range c.want {
				i := strings.Index(rest, w)
				if i < 0 {
					t.Fatalf("%q missing (or out of order) in:\n%s", w, out)
				}
				rest = rest[i+len(w):]
			}
		})
	}
	t.Run("json nests children", func(t *testing.T) {
		out, err := run("trace", "ev-1", "-o", "json")
		if err != nil {
			t.Fatal(err)
		}
		var doc traceDocument
		if err := json.Unmarshal([]byte(out), &doc); err != nil {
			t.Fatal(err)
		}
		root := doc.Traces[0].Spans
		if len(doc.Traces) != 1 || len(root) != 1 || root[0].Name != "webhook intake" {
			t.Fatalf("roots %+v", root)
		}
		deliver := root[0].Children[0].Children[0]
		if deliver.Name != "deliver knfaas/process" || len(deliver.Children) != 2 || deliver.Children[0].Attributes[tracing.AttrAttempt] != "1" {
			t.Errorf("deliver node %+v", deliver)
		}
		if doc.Traces[0].Duration != "50ms" {
			t.Errorf("trace duration %s", doc.Traces[0].Duration)
		}
	})
}
