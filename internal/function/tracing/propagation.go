package tracing

import (
	"context"
	"net/http"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/cloudevents/sdk-go/v2/extensions"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"
)

// Header names of the W3C trace context, and of the CloudEvents distributed-tracing extension
// in binary-mode HTTP (ce-traceparent, ce-tracestate).
const (
	HeaderTraceParent   = "traceparent"
	HeaderTraceState    = "tracestate"
	headerCETraceParent = "ce-" + extensions.TraceParentExtension
	headerCETraceState  = "ce-" + extensions.TraceStateExtension
	headerCESpecVersion = "ce-specversion"
)

// Propagator is the W3C trace context on HTTP headers, as Knative propagates it, which also
// keeps a binary-mode CloudEvent's distributed-tracing extension (ce-traceparent,
// ce-tracestate) equal to the hop it travels on: a function behind func-go sees only the event,
// so its extension must name the attempt that carried it. Extract prefers the traceparent
// header and falls back to the extension.
func Propagator() propagation.TextMapPropagator { return cePropagator{} }

type cePropagator struct{}

var w3c = propagation.TraceContext{}

// Inject implements propagation.TextMapPropagator.
func (cePropagator) Inject(ctx context.Context, carrier propagation.TextMapCarrier) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	w3c.Inject(ctx, carrier)
	if carrier.Get(headerCESpecVersion) == "" {
		return // not a binary-mode CloudEvent
	}
	carrier.Set(headerCETraceParent, carrier.Get(HeaderTraceParent))
	if ts := carrier.Get(HeaderTraceState); ts != "" {
		carrier.Set(headerCETraceState, ts)
	}
}

// Extract implements propagation.TextMapPropagator.
func (cePropagator) Extract(ctx context.Context, carrier propagation.TextMapCarrier) context.Context {
	if carrier.Get(HeaderTraceParent) != "" {
		if out := w3c.Extract(ctx, carrier); trace.SpanContextFromContext(out).IsValid() {
			return out
		}
	}
	if tp := carrier.Get(headerCETraceParent); tp != "" {
		return w3c.Extract(ctx, propagation.MapCarrier{HeaderTraceParent: tp, HeaderTraceState: carrier.Get(headerCETraceState)})
	}
	return ctx
}

// Fields implements propagation.TextMapPropagator.
func (cePropagator) Fields() []string {
	return []string{HeaderTraceParent, HeaderTraceState, headerCETraceParent, headerCETraceState}
}

// FromEvent returns ctx with the remote span context e carries in its distributed-tracing
// extension; ctx unchanged when e has none (or a malformed one).
func FromEvent(ctx context.Context, e event.Event) context.Context {
	dt, ok := extensions.GetDistributedTracingExtension(e)
	if !ok || dt.TraceParent == "" {
		return ctx
	}
	return w3c.Extract(ctx, propagation.MapCarrier{HeaderTraceParent: dt.TraceParent, HeaderTraceState: dt.TraceState})
}

// ToEvent sets e's distributed-tracing extension to the span context in ctx. Without a valid
// span context e is left as it is (a sender's extension travels on untouched).
func ToEvent(ctx context.Context, e *event.Event) {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return
	}
	c := propagation.MapCarrier{}
	w3c.Inject(ctx, c)
	if c[HeaderTraceState] == "" {
		// A stale tracestate must not travel with a new traceparent.
		_ = e.Context.SetExtension(extensions.TraceStateExtension, nil)
	}
	extensions.DistributedTracingExtension{TraceParent: c[HeaderTraceParent], TraceState: c[HeaderTraceState]}.AddTracingAttributes(e)
}

// FromRequest returns ctx with the span context r carries (traceparent header, else the
// binary-mode ce-traceparent), as the global propagator reads it.
func FromRequest(ctx context.Context, r *http.Request) context.Context {
	return otel.GetTextMapPropagator().Extract(ctx, propagation.HeaderCarrier(r.Header))
}

// Transport returns next with the global propagator's headers added to every request from its
// context: the lean alternative to otelhttp for a function's outgoing calls.
func Transport(next http.RoundTripper) http.RoundTripper { return injectingTransport{next} }

type injectingTransport struct{ next http.RoundTripper }

// RoundTrip implements http.RoundTripper.
func (t injectingTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	if trace.SpanContextFromContext(r.Context()).IsValid() {
		r = r.Clone(r.Context())
		otel.GetTextMapPropagator().Inject(r.Context(), propagation.HeaderCarrier(r.Header))
	}
	return t.next.RoundTrip(r)
}

// TraceParent is the W3C traceparent of the span context in ctx, "" without a valid one: what
// work deferred to later (a deadline) keeps to link back to the span that set it.
func TraceParent(ctx context.Context) string {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		return ""
	}
	c := propagation.MapCarrier{}
	w3c.Inject(ctx, c)
	return c[HeaderTraceParent]
}

// SpanContextOf parses a W3C traceparent, as TraceParent writes it; the zero (invalid) span
// context for "" or a malformed value.
func SpanContextOf(traceparent string) trace.SpanContext {
	if traceparent == "" {
		return trace.SpanContext{}
	}
	return trace.SpanContextFromContext(w3c.Extract(context.Background(), propagation.MapCarrier{HeaderTraceParent: traceparent}))
}
