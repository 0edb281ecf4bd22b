package logging

import (
	"context"
	"log/slog"

	"github.com/cloudevents/sdk-go/v2/event"
	"go.opentelemetry.io/otel/trace"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// eventKey is the context key of the event a handler works on.
type eventKey struct{}

// eventRef is what a line says about the event it is about.
type eventRef struct{ id, typ string }

// WithEvent returns ctx marked as working on e (and carrying e's trace context when ctx has
// none), so that every line logged with it names e's id and trace id.
func WithEvent(ctx context.Context, e event.Event) context.Context {
	if !trace.SpanContextFromContext(ctx).IsValid() {
		ctx = tracing.FromEvent(ctx, e)
	}
	return context.WithValue(ctx, eventKey{}, eventRef{id: e.ID(), typ: e.Type()})
}

// ForEvent is the logger for the lines a handler writes about e: the default logger with e's
// id and type and the trace and span ids of ctx's span (else of the trace context e carries).
// The function name comes with the default logger (Setup).
func ForEvent(ctx context.Context, e event.Event) *slog.Logger {
	return FromContext(WithEvent(ctx, e))
}

// FromContext is the default logger with the event and trace ids ctx carries (none when it
// carries none).
func FromContext(ctx context.Context) *slog.Logger {
	attrs := contextAttrs(ctx)
	if len(attrs) == 0 {
		return slog.Default()
	}
	args := make([]any, len(attrs))
	for i, a := range attrs {
		args[i] = a
	}
	return slog.Default().With(args...)
}

// contextAttrs are the event and trace attributes ctx carries.
func contextAttrs(ctx context.Context) []slog.Attr {
	if ctx == nil {
		return nil
	}
	var attrs []slog.Attr
	if ref, ok := ctx.Value(eventKey{}).(eventRef); ok {
		attrs = append(attrs, slog.String(KeyEventID, ref.id), slog.String(KeyEventType, ref.typ))
	}
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, slog.String(KeyTraceID, sc.TraceID().String()), slog.String(KeySpanID, sc.SpanID().String()))
	}
	return attrs
}

// contextHandler adds the event and trace ids of a record's context (slog.InfoContext and
// friends) unless its logger already carries ids (made by FromContext or ForEvent).
type contextHandler struct {
	slog.Handler
	hasIDs bool
}

// Handle implements slog.Handler.
func (h contextHandler) Handle(ctx context.Context, r slog.Record) error {
	if !h.hasIDs {
		if attrs := contextAttrs(ctx); len(attrs) > 0 {
			r = r.Clone()
			r.AddAttrs(attrs...)
		}
	}
	return h.Handler.Handle(ctx, r)
}

// WithAttrs implements slog.Handler.
func (h contextHandler) WithAttrs(attrs []slog.Attr) slog.Handler {
	has := h.hasIDs
	for _, a := range attrs {
		has = has || a.Key == KeyEventID || a.Key == KeyTraceID
	}
	return contextHandler{Handler: h.Handler.WithAttrs(attrs), hasIDs: has}
}

// WithGroup implements slog.Handler.
func (h contextHandler) WithGroup(name string) slog.Handler {
	return contextHandler{Handler: h.Handler.WithGroup(name), hasIDs: h.hasIDs}
}

// With is l with an event's id and type and the trace and span ids of ctx's span: for a
// handler that knows the event before it has a CloudEvent (the webhook intake).
func With(ctx context.Context, l *slog.Logger, eventID, eventType string) *slog.Logger {
	attrs := AppendEventAttrs(ctx, nil, eventID, eventType)
	args := make([]any, len(attrs))
	for i, a := range attrs {
		args[i] = a
	}
	return l.With(args...)
}

// AppendEventAttrs appends what With adds to a logger (the event's id and type, the trace and
// span ids of ctx's span) to attrs: for a handler that puts them on its records itself rather
// than formatting a logger ahead for lines it may never write.
func AppendEventAttrs(ctx context.Context, attrs []slog.Attr, eventID, eventType string) []slog.Attr {
	attrs = append(attrs, slog.String(KeyEventID, eventID), slog.String(KeyEventType, eventType))
	if sc := trace.SpanContextFromContext(ctx); sc.IsValid() {
		attrs = append(attrs, slog.String(KeyTraceID, sc.TraceID().String()), slog.String(KeySpanID, sc.SpanID().String()))
	}
	return attrs
}
