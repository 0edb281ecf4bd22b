package broker

import (
	"context"
	"net/http"
	"os"
	"strings"
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
	if unsampled(parent) {
		// The event carries on the context it came with, as the request's header or its own
		// extension.
		tracing.ToEvent(parent, e)
		return parent, noSpan
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
	if unsampled(ctx) {
		// The subscriber still gets the event's trace context.
		return withAttempts(ctx), noSpan
	}
	ctx, span := tracing.Tracer().Start(ctx, name+" "+c.t.Key(), trace.WithSpanKind(trace.SpanKindConsumer))
	if span.IsRecording() {
		span.SetAttributes(tracing.EventAttributes(*e)...)
		span.SetAttributes(attribute.String(tracing.AttrTrigger, c.t.Key()), attribute.String(tracing.AttrBroker, c.brokerKey))
	}
	return withAttempts(ctx), span
}

// envSampler is the OpenTelemetry SDK's sampler variable; unsampled reads it as the SDK does.
const envSampler = "OTEL_TRACES_SAMPLER"

// samplerPolicy is what the process's sampler (OTEL_TRACES_SAMPLER, read once; the SDK's
// default is parentbased_always_on) decides without looking at a span: whether a child of an
// unsampled parent is never sampled (every parentbased_* sampler, and always_off), and whether
// a span without a parent is never sampled (always_off, parentbased_always_off).
var samplerPolicy = sync.OnceValues(func() (followsUnsampledParent, rootsOff bool) {
	return policyOf(os.Getenv(envSampler))
})

// policyOf is samplerPolicy for a value of OTEL_TRACES_SAMPLER. An unknown sampler is
// assumed to sample anything.
func policyOf(sampler string) (followsUnsampledParent, rootsOff bool) {
	switch strings.ToLower(strings.TrimSpace(sampler)) {
	case "", "parentbased_always_on", "parentbased_traceidratio", "parentbased_jaeger_remote":
		return true, false
	case "always_off", "parentbased_always_off":
		return true, true
	}
	return false, false
}

// unsampled reports a span started in ctx that the sampler would not sample: such a span
// records nothing and exports nothing, so it is not started at all (a span start costs
// allocations per event even when it is not recorded). Propagation is unchanged: the context
// ctx already carries travels on.
func unsampled(ctx context.Context) bool {
	followsParent, rootsOff := samplerPolicy()
	return skipped(followsParent, rootsOff, trace.SpanContextFromContext(ctx))
}

// skipped is unsampled for a sampler policy and the parent span context sc.
func skipped(followsParent, rootsOff bool, sc trace.SpanContext) bool {
	if !sc.IsValid() {
		return rootsOff
	}
	return followsParent && !sc.IsSampled()
}

// noSpan stands in for a span that is not started; ending it does nothing.
var noSpan = trace.SpanFromContext(context.Background())

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
	if unsampled(ctx) {
		// The dispatcher's request still carries ctx's trace context.
		return ctx, noSpan
	}
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
