package broker

import (
	"context"
	"net/http"
	"sync"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// startIngressSpan starts the span of one event's intake at a broker: a child of the trace
// context on the request (traceparent header, else the event's distributed-tracing extension),
// and sets the event's extension to it, so the context is stored with the event in the stream.
func startIngressSpan(ctx context.Context, r *http.Request, e *cloudevents.Event, brokerKey string) (context.Context, trace.Span) {
	parent := tracing.FromRequest(ctx, r)
	if !trace.SpanContextFromContext(parent).IsValid() {
		parent = tracing.FromEvent(ctx, *e)
	}
	ctx, span := tracing.Tracer().Start(parent, "broker ingress "+brokerKey, trace.WithSpanKind(trace.SpanKindServer))
	if span.IsRecording() {
		span.SetAttributes(tracing.EventAttributes(*e)...)
		span.SetAttributes(attribute.String(tracing.AttrBroker, brokerKey))
	}
	tracing.ToEvent(ctx, e)
	return ctx, span
}

// startDeliverySpan starts the span of one delivery round of a stored event to a Trigger (a
// child of the context stored with the event), or of its dead-lettering (a child of the
// delivery's span in ctx). Each HTTP attempt inside is its own span (see AttemptNumbering).
func (c *Consumer) startDeliverySpan(ctx context.Context, e *cloudevents.Event, name string) (context.Context, trace.Span) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = tracing.FromEvent(ctx, *e)
	}
	ctx, span := tracing.Tracer().Start(ctx, name+" "+c.t.Key(), trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(tracing.EventAttributes(*e)...)
		span.SetAttributes(attribute.String(tracing.AttrTrigger, c.t.Key()), attribute.String(tracing.AttrBroker, c.brokerKey))
	}
	return withAttempts(ctx), span
}

// attemptsKey holds the attempts counted in one delivery: client spans (one per HTTP attempt
// of Knative's dispatcher) by span name, so the subscriber's and the reply's attempts are
// counted apart.
type attemptsKey struct{}

type attempts struct {
	mu sync.Mutex
	n  map[string]int
}

func withAttempts(ctx context.Context) context.Context {
	return context.WithValue(ctx, attemptsKey{}, &attempts{})
}

// AttemptNumbering wraps the tracer provider of Knative's dispatcher: every HTTP attempt it makes
// (a client span, one per retry) gets its attempt number (knfaas.delivery.attempt, from 1)
// within the delivery that started it.
func AttemptNumbering(tp trace.TracerProvider) trace.TracerProvider { return attemptProvider{tp} }

type attemptProvider struct{ trace.TracerProvider }

// Tracer implements trace.TracerProvider.
func (p attemptProvider) Tracer(name string, opts ...trace.TracerOption) trace.Tracer {
	return attemptTracer{p.TracerProvider.Tracer(name, opts...)}
}

type attemptTracer struct{ trace.Tracer }

// Start implements trace.Tracer.
func (t attemptTracer) Start(ctx context.Context, name string, opts ...trace.SpanStartOption) (context.Context, trace.Span) {
	a, ok := ctx.Value(attemptsKey{}).(*attempts)
	if cfg := trace.NewSpanStartConfig(opts...); ok && cfg.SpanKind() == trace.SpanKindClient {
		a.mu.Lock()
		if a.n == nil {
			a.n = map[string]int{}
		}
		a.n[name]++
		n := a.n[name]
		a.mu.Unlock()
		opts = append(opts, trace.WithAttributes(attribute.Int(tracing.AttrAttempt, n)))
	}
	return t.Tracer.Start(ctx, name, opts...)
}
