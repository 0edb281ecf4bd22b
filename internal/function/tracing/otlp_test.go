package tracing

import (
	"bytes"
	"context"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"
)

// TestExporterSendsDecodableOTLP: what the hand-made encoder sends decodes with the OTLP
// protobuf definitions, field for field.
func TestExporterSendsDecodableOTLP(t *testing.T) {
	var body []byte
	var contentType string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != "/v1/traces" {
			http.NotFound(w, r)
			return
		}
		contentType = r.Header.Get("Content-Type")
		body, _ = io.ReadAll(r.Body)
	}))
	defer srv.Close()
	t.Setenv(EnvEndpoint, srv.URL)
	x, err := NewExporter("")
	if err != nil {
		t.Fatal(err)
	}
	rec := tracetest.NewSpanRecorder()
	tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec),
		sdktrace.WithResource(resource.NewSchemaless(attribute.String("service.name", "process"))))
	ctx, parent := tp.Tracer("scope-a").Start(context.Background(), "deliver", trace.WithSpanKind(trace.SpanKindConsumer))
	_, child := tp.Tracer("scope-b").Start(ctx, "handle e2e.cook", trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String(AttrEventID, "ev-1"), attribute.Int(AttrAttempt, 2), attribute.Bool("ok", true), attribute.Float64("f", 1.5)))
	child.SetStatus(codes.Error, "boom")
	child.End()
	parent.End()
	if err := x.ExportSpans(context.Background(), rec.Ended()); err != nil {
		t.Fatal(err)
	}
	if contentType != ContentTypeProtobuf {
		t.Errorf("Content-Type %q", contentType)
	}
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(body, &req); err != nil {
		t.Fatalf("decoding: %v", err)
	}
	if len(req.ResourceSpans) != 1 || len(req.ResourceSpans[0].ScopeSpans) != 2 {
		t.Fatalf("want 1 resource with 2 scopes, got %v", &req)
	}
	rs := req.ResourceSpans[0]
	if kv := rs.Resource.Attributes[0]; kv.Key != "service.name" || kv.Value.GetStringValue() != "process" {
		t.Errorf("resource attribute %v", kv)
	}
	spans := map[string]*tracepb.Span{}
	for _, ss := range rs.ScopeSpans {
		for _, s := range ss.Spans {
			spans[s.Name] = s
		}
	}
	h, d := spans["handle e2e.cook"], spans["deliver"]
	if h == nil || d == nil {
		t.Fatalf("spans %v", spans)
	}
	if !bytes.Equal(h.ParentSpanId, d.SpanId) || !bytes.Equal(h.TraceId, d.TraceId) {
		t.Errorf("parent link lost: %x/%x vs %x/%x", h.TraceId, h.ParentSpanId, d.TraceId, d.SpanId)
	}
	if hex.EncodeToString(h.TraceId) != child.SpanContext().TraceID().String() {
		t.Errorf("trace id %x", h.TraceId)
	}
	if h.Kind != tracepb.Span_SPAN_KIND_SERVER || d.Kind != tracepb.Span_SPAN_KIND_CONSUMER {
		t.Errorf("kinds %v %v", h.Kind, d.Kind)
	}
	if h.Status.Code != tracepb.Status_STATUS_CODE_ERROR || h.Status.Message != "boom" {
		t.Errorf("status %v", h.Status)
	}
	if h.EndTimeUnixNano < h.StartTimeUnixNano || h.StartTimeUnixNano == 0 {
		t.Errorf("times %d..%d", h.StartTimeUnixNano, h.EndTimeUnixNano)
	}
	for _, kv := range h.Attributes {
		switch kv.Key {
		case AttrEventID:
			if kv.Value.GetStringValue() != "ev-1" {
				t.Errorf("%s = %v", kv.Key, kv.Value)
			}
		case AttrAttempt:
			if kv.Value.GetIntValue() != 2 {
				t.Errorf("%s = %v", kv.Key, kv.Value)
			}
		case "ok":
			if !kv.Value.GetBoolValue() {
				t.Errorf("%s = %v", kv.Key, kv.Value)
			}
		case "f":
			if kv.Value.GetDoubleValue() != 1.5 {
				t.Errorf("%s = %v", kv.Key, kv.Value)
			}
		}
	}
	if len(h.Attributes) != 4 {
		t.Errorf("%d attributes, want 4", len(h.Attributes))
	}
}

// TestLinksAreEncoded: a span's links (a fired deadline's link to the span that set it) decode
// with the OTLP definitions: the linked trace and span, their flags and the link's attributes.
func TestLinksAreEncoded(t *testing.T) {
	linked := SpanContextOf(senderParent)
	tests := []struct {
		name  string
		links []trace.Link
		want  int
	}{
		{"one link with attributes", []trace.Link{{SpanContext: linked, Attributes: []attribute.KeyValue{attribute.String("knfaas.link", "deadline")}}}, 1},
		{"no link", nil, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rec := tracetest.NewSpanRecorder()
			tp := sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec))
			_, span := tp.Tracer("scope").Start(context.Background(), "fire deadline", trace.WithLinks(tc.links...))
			span.End()
			var req coltracepb.ExportTraceServiceRequest
			if err := proto.Unmarshal(EncodeSpans(rec.Ended()), &req); err != nil {
				t.Fatal(err)
			}
			got := req.ResourceSpans[0].ScopeSpans[0].Spans[0].Links
			if len(got) != tc.want {
				t.Fatalf("%d links, want %d", len(got), tc.want)
			}
			if tc.want == 0 {
				return
			}
			l := got[0]
			if hex.EncodeToString(l.TraceId) != senderTrace || hex.EncodeToString(l.SpanId) != senderSpan || l.Flags != 1 {
				t.Errorf("link to %x/%x flags %d, want %s/%s flags 1", l.TraceId, l.SpanId, l.Flags, senderTrace, senderSpan)
			}
			if len(l.Attributes) != 1 || l.Attributes[0].Key != "knfaas.link" || l.Attributes[0].Value.GetStringValue() != "deadline" {
				t.Errorf("link attributes %v", l.Attributes)
			}
		})
	}
}
