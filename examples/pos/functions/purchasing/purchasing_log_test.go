package main

import (
	"bytes"
	"context"
	"encoding/json"
	"log/slog"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/extensions"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/logging"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// TestOrderLineNamesEventAndTrace: the line a recorded order writes carries the reorder
// request's event id and the trace id its traceparent names, and the function's name.
func TestOrderLineNamesEventAndTrace(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	var out bytes.Buffer
	restore := slog.Default()
	defer slog.SetDefault(restore)
	logging.Install(&out, "purchasing", logging.Config{Format: logging.FormatJSON, Level: slog.LevelInfo})
	f := New()
	if err := f.start(context.Background(), Config{OrderUpTo: 50, InboxTTL: time.Hour}, rdb); err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())
	e := reorderEvent("r-logged", ReorderRequest{SKU: "SKU-1", Store: "berlin-1", Stock: 4, Threshold: 5})
	extensions.DistributedTracingExtension{TraceParent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"}.AddTracingAttributes(&e)
	if _, err := f.Handle(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	var line map[string]any
	for _, l := range strings.Split(strings.TrimSpace(out.String()), "\n") {
		var m map[string]any
		if json.Unmarshal([]byte(l), &m) == nil && m["msg"] == "purchase order recorded" {
			line = m
		}
	}
	if line == nil {
		t.Fatalf("no JSON line %q in:\n%s", "purchase order recorded", out.String())
	}
	want := map[string]string{"event_id": "r-logged", "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "function": "purchasing", "event_type": TypeReorderRequested}
	for k, v := range want {
		if line[k] != v {
			t.Errorf("%s = %v, want %q (line %v)", k, line[k], v, line)
		}
	}
}
