package main

import (
	"context"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"go.opentelemetry.io/otel"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// TestFireContinuesTheTickAndLinksTheScheduler: a fired deadline is the span "fire deadline",
// a child of the tick's handler span, and the event it sends carries the tick's trace on; when
// the deadline was scheduled within a trace (a process step), the fire links to that span
// instead of continuing its trace.
func TestFireContinuesTheTickAndLinksTheScheduler(t *testing.T) {
	const (
		tickParent     = "00-1bf92f3577b34da6a3ce929d0e0e4736-10f067aa0ba902b7-01"
		tickTrace      = "1bf92f3577b34da6a3ce929d0e0e4736"
		scheduleParent = "00-2af7651916cd43dd8448eb211c80319c-20ad6b7169203331-01"
		scheduleTrace  = "2af7651916cd43dd8448eb211c80319c"
		scheduleSpan   = "20ad6b7169203331"
	)
	rec := tracetest.NewSpanRecorder()
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	otel.SetTextMapPropagator(tracing.Propagator())
	t.Cleanup(func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) })

	tests := []struct {
		name        string
		scheduledIn string // the traceparent of the span that scheduled the deadline, "" for none
		wantLink    bool
	}{
		{"scheduled by a traced process step", scheduleParent, true},
		{"scheduled outside any trace", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec.Reset()
			srv := redistest.Start(t, redistest.Options{})
			var mu sync.Mutex
			sentIn := map[string]trace.SpanContext{} // event id → span context it was sent in
			f := New()
			f.now = func() time.Time { return t0 }
			f.start(Config{Batch: 10, Concurrency: 2}, srv.Client(), func(ctx context.Context, e event.Event) error {
				mu.Lock()
				defer mu.Unlock()
				sentIn[e.ID()] = trace.SpanContextFromContext(ctx)
				return nil
			})
			schedCtx := trace.ContextWithSpanContext(context.Background(), tracing.SpanContextOf(tc.scheduledIn))
			if err := deadline.Schedule(schedCtx, srv.Client(), "inst:cook:1:deadline", deadline.Payload{Subject: "inst", Command: "inst:cook:1", Owner: "process", Due: t0.Add(-time.Second).UnixMilli()}); err != nil {
				t.Fatal(err)
			}
			tick := ping(t0)
			tick.SetExtension("traceparent", tickParent)
			if _, err := f.Handle(context.Background(), tick); err != nil {
				t.Fatal(err)
			}

			var handle, fire sdktrace.ReadOnlySpan
			for _, s := range rec.Ended() {
				switch s.Name() {
				case "handle " + TypePing:
					handle = s
				case "fire deadline":
					fire = s
				}
			}
			if handle == nil || fire == nil {
				t.Fatalf("spans %v, want the tick's handler and a fire", rec.Ended())
			}
			if fire.Parent().SpanID() != handle.SpanContext().SpanID() || fire.SpanContext().TraceID().String() != tickTrace {
				t.Errorf("fire: trace %s parent %s, want the tick's trace %s under its handler %s",
					fire.SpanContext().TraceID(), fire.Parent().SpanID(), tickTrace, handle.SpanContext().SpanID())
			}
			if sc := sentIn["inst:cook:1:deadline"]; sc.SpanID() != fire.SpanContext().SpanID() {
				t.Errorf("the fired event was sent in span %s, want the fire %s", sc.SpanID(), fire.SpanContext().SpanID())
			}
			links := fire.Links()
			if !tc.wantLink {
				if len(links) != 0 {
					t.Errorf("links %v, want none", links)
				}
				return
			}
			if len(links) != 1 || links[0].SpanContext.TraceID().String() != scheduleTrace || links[0].SpanContext.SpanID().String() != scheduleSpan {
				t.Fatalf("links %v, want one to %s/%s", links, scheduleTrace, scheduleSpan)
			}
		})
	}
}
