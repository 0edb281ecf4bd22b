package cli

import (
	"bytes"
	"context"
	"encoding/json"
	"flag"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/eventlog"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

var update = flag.Bool("update", false, "rewrite testdata/*.golden with the current output")

// checkGolden compares got with testdata/<name>.golden, or rewrites the file under -update.
func checkGolden(t *testing.T, name string, got []byte) {
	t.Helper()
	path := filepath.Join("testdata", name+".golden")
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run go test -run %s -update to create it)", err, t.Name())
	}
	if !bytes.Equal(got, want) {
		t.Errorf("output differs from %s (go test -update rewrites it):\n--- got\n%s\n--- want\n%s", path, got, want)
	}
}

var (
	goldenTime = time.Date(2026, 3, 4, 5, 6, 7, 890_000_000, time.UTC)
	lowerCamel = regexp.MustCompile(`^[a-z][a-zA-Z0-9]*$`)
)

func goldenLetters() []deadletter.Letter {
	return []deadletter.Letter{
		{ID: "1772600767890-0", Received: goldenTime, EventType: "com.example.order", Source: "/shop", EventID: "e1", Subject: "o-1",
			ErrorExtensions: true, Dest: "http://orders.shop.svc.cluster.local", Code: 503, ErrorData: "unavailable", Trigger: "shop/orders",
			Event: json.RawMessage(`{"specversion":"1.0","id":"e1","source":"/shop","type":"com.example.order","data":{"n":1}}`)},
		{ID: "1772600767891-0", Received: goldenTime.Add(time.Second), EventType: "com.example.refund", Source: "/shop", EventID: "e2",
			ErrorExtensions: true, Code: 500, Reason: deadletter.ReasonParked, Detail: "subscriber: 500; dead-letter sink: 503",
			Event:   json.RawMessage(`{"specversion":"1.0","id":"e2","source":"/shop","type":"com.example.refund"}`),
			Redrive: &deadletter.RedriveState{Attempts: 2, LastError: "broker answered 503"}},
	}
}

func goldenInstance() process.Instance {
	return process.Instance{ID: "o-7", Process: "order", Status: "running", Step: "pay", Version: 2, Created: goldenTime, Updated: goldenTime.Add(time.Minute),
		Timeline: []process.TimelineEntry{
			{Seq: 1, At: goldenTime.UnixMilli(), Kind: "in", ID: "1", Type: "order.placed", Source: "/t"},
			{Seq: 1, At: goldenTime.UnixMilli(), Kind: "timer", ID: "o-7:pay:1:deadline", Note: "scheduled", Due: goldenTime.Add(time.Minute).UnixMilli()},
		}}
}

// goldenVersion is the version of a build from a modified checkout.
func goldenVersion() versionInfo {
	return readVersion(&debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Path: platformModule, Version: "(devel)"},
		Deps: []*debug.Module{
			{Path: "k8s.io/api", Version: "v0.35.7"},
			{Path: "knative.dev/eventing", Version: "v0.50.0"},
			{Path: "knative.dev/serving", Version: "v0.50.0"},
		},
		Settings: []debug.BuildSetting{
			{Key: "vcs.revision", Value: "0123456789abcdef0123456789abcdef01234567"},
			{Key: "vcs.time", Value: "2026-03-04T05:06:07Z"},
			{Key: "vcs.modified", Value: "true"},
		}}, true)
}

// goldenTrace is an event's journey: intake, broker ingress, a delivery retried once.
func goldenTrace() tracestore.Trace {
	traceID := strings.Repeat("ab", 16)
	sp := func(id, parent, name, service string, from, to time.Duration, attrs map[string]string, status string) tracestore.Span {
		return tracestore.Span{TraceID: traceID, SpanID: id, ParentSpanID: parent, Name: name, Service: service,
			Start: goldenTime.Add(from), End: goldenTime.Add(to), Attributes: attrs, Status: status}
	}
	return tracestore.Trace{TraceID: traceID, Spans: []tracestore.Span{
		sp("0000000000000001", "", "webhook intake", "webhook", 0, 50*time.Millisecond, nil, ""),
		sp("0000000000000002", "0000000000000001", "broker ingress knfaas/default", "knfaas-up", 2*time.Millisecond, 4*time.Millisecond,
			map[string]string{tracing.AttrEventID: "ev-1"}, ""),
		sp("0000000000000003", "0000000000000002", "deliver knfaas/process", "knfaas-up", 5*time.Millisecond, 40*time.Millisecond, nil, "error"),
		sp("0000000000000004", "0000000000000003", "POST /", "knfaas-up", 6*time.Millisecond, 10*time.Millisecond,
			map[string]string{tracing.AttrAttempt: "1", "http.response.status_code": "503"}, "error"),
		sp("0000000000000005", "0000000000000003", "POST /", "knfaas-up", 20*time.Millisecond, 30*time.Millisecond,
			map[string]string{tracing.AttrAttempt: "2", "http.response.status_code": "202"}, ""),
	}}
}

// TestOutputGolden: every list and show command prints the same document in json and yaml,
// with lowerCamel keys, RFC 3339 times and empty fields left out, and a stable table.
func TestOutputGolden(t *testing.T) {
	letters := goldenLetters()
	instance := goldenInstance()
	type printer func(w io.Writer, output string) error
	tests := []struct {
		name  string
		print printer
	}{
		{"dlq-list", func(w io.Writer, o string) error { return printLetters(w, o, false, letters) }},
		{"dlq-list-empty", func(w io.Writer, o string) error { return printLetters(w, o, false, nil) }},
		{"dlq-show", func(w io.Writer, o string) error {
			if structured(o) {
				return writeDocument(w, o, letters[1])
			}
			return printLetterDetail(w, letters[1])
		}},
		{"process-list", func(w io.Writer, o string) error { return printInstances(w, []process.Instance{instance}, o, false) }},
		{"process-show", func(w io.Writer, o string) error { return printInstance(w, &instance, o) }},
		{"version", func(w io.Writer, o string) error {
			v := goldenVersion()
			if structured(o) {
				return writeDocument(w, o, v)
			}
			return v.print(w)
		}},
		{"trace", func(w io.Writer, o string) error {
			doc := traceDocument{Traces: []traceTree{buildTraceTree(goldenTrace())}}
			if structured(o) {
				return writeDocument(w, o, doc)
			}
			return writeTraceTable(w, doc)
		}},
	}
	for _, tc := range tests {
		for _, output := range []string{outputTable, outputJSON, outputYAML} {
			t.Run(tc.name+"/"+output, func(t *testing.T) {
				var buf bytes.Buffer
				if err := tc.print(&buf, output); err != nil {
					t.Fatal(err)
				}
				checkGolden(t, tc.name+"."+output, buf.Bytes())
				if output == outputJSON {
					checkKeys(t, buf.Bytes())
				}
			})
		}
	}
}

// TestReplayOutputGolden: events replay --dry-run in each format, from a log with fixed cursors.
func TestReplayOutputGolden(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	for i, typ := range []string{"a", "b", "a"} {
		e := event.New()
		e.SetID(fmt.Sprint("ev-", i))
		e.SetSource("/s")
		e.SetType(typ)
		if i != 1 {
			e.SetSubject("K1")
		}
		body, _ := json.Marshal(e)
		id := fmt.Sprintf("%d-0", goldenTime.UnixMilli()+int64(i))
		if err := srv.Client().XAdd(context.Background(), &redis.XAddArgs{Stream: eventlog.GlobalStream, ID: id, Values: []any{"ce", string(body)}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	for _, output := range []string{outputTable, outputJSON, outputYAML, "quiet"} {
		t.Run(output, func(t *testing.T) {
			args := []string{"events", "replay", "--dry-run", "-o", output}
			if output == "quiet" {
				args = []string{"events", "replay", "--dry-run", "-q"}
			}
			out, err := runCLI(t, args...)
			if err != nil {
				t.Fatal(err)
			}
			checkGolden(t, "events-replay-dry-run."+output, []byte(out))
			if output == outputJSON {
				checkKeys(t, []byte(out))
			}
		})
	}
}

// checkKeys fails on a json key that is not lowerCamel, outside events' own payloads and
// span attributes.
func checkKeys(t *testing.T, doc []byte) {
	t.Helper()
	var v any
	if err := json.Unmarshal(doc, &v); err != nil {
		t.Fatalf("not json: %v\n%s", err, doc)
	}
	var walk func(path string, v any)
	walk = func(path string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, child := range v {
				if !lowerCamel.MatchString(k) {
					t.Errorf("key %s.%s is not lowerCamel", path, k)
				}
				// An event and its data are the sender's; span attributes are OpenTelemetry's keys.
				if k != "event" && k != "data" && k != "attributes" {
					walk(path+"."+k, child)
				}
			}
		case []any:
			for i, child := range v {
				walk(fmt.Sprintf("%s[%d]", path, i), child)
			}
		case string:
			if strings.HasPrefix(v, "0001-01-01") {
				t.Errorf("%s is a zero time, want it left out", path)
			}
		}
	}
	walk("", v)
}

// TestReplayReportsProgress: a replay that sends says how far it got at each progress interval
// (here: after every event), and only in the table output.
func TestReplayReportsProgress(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	for i := range 3 {
		e := event.New()
		e.SetID(fmt.Sprint("p-", i))
		e.SetSource("/s")
		e.SetType("a")
		if _, err := eventlog.New(srv.Client(), eventlog.Options{}).Append(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	target := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusAccepted) }))
	t.Cleanup(target.Close)
	defer func(d time.Duration) { replayProgressInterval = d }(replayProgressInterval)
	replayProgressInterval = 0
	tests := []struct {
		name      string
		args      []string
		wantLines int
	}{
		{"table", nil, 3},
		{"json", []string{"-o", "json"}, 0},
		{"quiet", []string{"-q"}, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, append([]string{"events", "replay", "--rate", "0", "--to", target.URL}, tc.args...)...)
			if err != nil {
				t.Fatal(err)
			}
			if got := strings.Count(out, "events so far"); got != tc.wantLines {
				t.Errorf("%d progress lines, want %d:\n%s", got, tc.wantLines, out)
			}
			if tc.wantLines > 0 && !strings.Contains(out, "replayed 3 events so far") {
				t.Errorf("no line for the last event:\n%s", out)
			}
		})
	}
}
