package tracing

import (
	"context"
	"errors"
	"net/http"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"
)

// EventAttributes are the span attributes that name e.
func EventAttributes(e event.Event) []attribute.KeyValue {
	return []attribute.KeyValue{
		attribute.String(AttrEventID, e.ID()),
		attribute.String(AttrEventType, e.Type()),
		attribute.String(AttrEventSource, e.Source()),
	}
}

// HandleEvent runs a CloudEvents function's handle as the span "handle <type>", a child of the
// span context e carries. A returned error marks the span failed (with its HTTP status when it
// is a CloudEvents HTTP result); a reply carries the handler's span context on.
func HandleEvent(ctx context.Context, e event.Event, handle func(context.Context, event.Event) (*event.Event, error)) (*event.Event, error) {
	ctx, span := Tracer().Start(FromEvent(ctx, e), "handle "+e.Type(),
		trace.WithSpanKind(trace.SpanKindServer), trace.WithAttributes(EventAttributes(e)...))
	defer span.End()
	reply, err := handle(ctx, e)
	if err != nil {
		status := 0
		var result *cehttp.Result
		if errors.As(err, &result) {
			status = result.StatusCode
			span.SetAttributes(attribute.Int("http.response.status_code", status))
		}
		if status == 0 || status >= 400 {
			span.SetStatus(codes.Error, err.Error())
		}
	}
	if reply != nil {
		ToEvent(ctx, reply)
		span.SetAttributes(attribute.String("knfaas.reply.id", reply.ID()), attribute.String("knfaas.reply.type", reply.Type()))
	}
	return reply, err
}

// StartRequest starts the server span name for an HTTP request, a child of the trace context the
// sender put in its traceparent header (when present): r is returned with the span's context.
func StartRequest(r *http.Request, name string) (*http.Request, trace.Span) {
	ctx, span := Tracer().Start(FromRequest(r.Context(), r), name,
		trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("http.request.method", r.Method), attribute.String("url.path", r.URL.Path)))
	return r.WithContext(ctx), span
}

// StartPublish starts the producer span "publish <type>" for e, a child of ctx, and sets e's
// distributed-tracing extension to it, so the event continues the trace wherever it goes.
func StartPublish(ctx context.Context, e *event.Event) (context.Context, trace.Span) {
	ctx, span := Tracer().Start(ctx, "publish "+e.Type(),
		trace.WithSpanKind(trace.SpanKindProducer), trace.WithAttributes(EventAttributes(*e)...))
	ToEvent(ctx, e)
	return ctx, span
}

// End ends span, marking it failed when err is not nil.
func End(span trace.Span, err error) {
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
	}
	span.End()
}
