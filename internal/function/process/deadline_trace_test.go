package process

import (
	"context"
	"encoding/json"
	"fmt"
	"testing"

	"go.opentelemetry.io/otel/trace"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// TestDeadlinesKeepTheStepsTrace: the deadline a step schedules keeps the traceparent of the
// step's span, so the timer's fire can link back to it; a step outside any trace keeps none.
func TestDeadlinesKeepTheStepsTrace(t *testing.T) {
	const stepParent = "00-3bf92f3577b34da6a3ce929d0e0e4736-30f067aa0ba902b7-01"
	tests := []struct {
		name, traceparent, want string
	}{
		{"a traced step", stepParent, stepParent},
		{"no trace", "", ""},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			inst := fmt.Sprintf("o%d", i)
			ctx := trace.ContextWithSpanContext(context.Background(), tracing.SpanContextOf(tc.traceparent))
			res, err := h.e.Apply(ctx, Event{ID: "start-" + inst, Source: "/test", Type: "test.order.placed", Subject: inst, Data: []byte(`{"amount":10}`)})
			if err != nil || res.Status != StatusStarted {
				t.Fatalf("start: %v %v", res.Status, err)
			}
			payloads := h.rdb.HGetAll(context.Background(), deadline.KeyPayloads).Val()
			if len(payloads) != 1 {
				t.Fatalf("%d deadlines scheduled, want 1 (the payment's)", len(payloads))
			}
			for id, raw := range payloads {
				var p deadline.Payload
				if err := json.Unmarshal([]byte(raw), &p); err != nil {
					t.Fatal(err)
				}
				if p.TraceParent != tc.want || p.Subject != inst {
					t.Errorf("deadline %s: %+v, want traceparent %q", id, p, tc.want)
				}
			}
		})
	}
}
