package tracing

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"math"
	"net/http"
	"net/url"
	"os"
	"strings"
	"time"

	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"google.golang.org/protobuf/encoding/protowire"
)

// ContentTypeProtobuf is the OTLP/HTTP binary encoding's content type.
const ContentTypeProtobuf = "application/x-protobuf"

// Exporter sends spans as OTLP/HTTP protobuf (POST …/v1/traces). It encodes the few messages
// it needs itself: the upstream exporter links gRPC and doubles a function binary's size.
type Exporter struct {
	url     string
	headers http.Header
	client  *http.Client
}

// NewExporter returns an Exporter to the full traces URL; empty means the environment's
// (OTEL_EXPORTER_OTLP_TRACES_ENDPOINT as it is, else OTEL_EXPORTER_OTLP_ENDPOINT + /v1/traces),
// with OTEL_EXPORTER_OTLP_HEADERS and OTEL_EXPORTER_OTLP_TIMEOUT (milliseconds) honoured.
func NewExporter(tracesURL string) (*Exporter, error) {
	if tracesURL == "" {
		tracesURL = os.Getenv(EnvTracesEndpoint)
	}
	if tracesURL == "" {
		if base := os.Getenv(EnvEndpoint); base != "" {
			tracesURL = strings.TrimSuffix(base, "/") + "/v1/traces"
		}
	}
	u, err := url.Parse(tracesURL)
	if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("OTLP traces endpoint %q: want an http(s) URL", tracesURL)
	}
	headers := http.Header{}
	for _, kv := range strings.Split(os.Getenv("OTEL_EXPORTER_OTLP_HEADERS"), ",") {
		k, v, ok := strings.Cut(kv, "=")
		if !ok {
			continue
		}
		k, _ = url.QueryUnescape(strings.TrimSpace(k))
		v, _ = url.QueryUnescape(strings.TrimSpace(v))
		headers.Set(k, v)
	}
	timeout := 10 * time.Second
	if ms, err := time.ParseDuration(os.Getenv("OTEL_EXPORTER_OTLP_TIMEOUT") + "ms"); err == nil && ms > 0 {
		timeout = ms
	}
	return &Exporter{url: tracesURL, headers: headers, client: &http.Client{Timeout: timeout}}, nil
}

// ExportSpans implements sdktrace.SpanExporter.
func (x *Exporter) ExportSpans(ctx context.Context, spans []sdktrace.ReadOnlySpan) error {
	if len(spans) == 0 {
		return nil
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, x.url, bytes.NewReader(EncodeSpans(spans)))
	if err != nil {
		return fmt.Errorf("exporting spans: %w", err)
	}
	for k, v := range x.headers {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", ContentTypeProtobuf)
	resp, err := x.client.Do(req)
	if err != nil {
		return fmt.Errorf("exporting spans to %s: %w", x.url, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	if resp.StatusCode/100 != 2 {
		return fmt.Errorf("exporting spans to %s: %s", x.url, resp.Status)
	}
	return nil
}

// Shutdown implements sdktrace.SpanExporter.
func (x *Exporter) Shutdown(context.Context) error {
	x.client.CloseIdleConnections()
	return nil
}

// EncodeSpans encodes spans as an OTLP ExportTraceServiceRequest, grouped by resource and
// instrumentation scope.
func EncodeSpans(spans []sdktrace.ReadOnlySpan) []byte {
	type scopeKey struct{ name, version string }
	type group struct {
		resource []attribute.KeyValue
		scopes   map[scopeKey][]sdktrace.ReadOnlySpan
		order    []scopeKey
	}
	var groups []*group
	byResource := map[string]*group{}
	for _, s := range spans {
		var attrs []attribute.KeyValue
		rkey := ""
		if r := s.Resource(); r != nil {
			attrs = r.Attributes()
			rkey = r.Encoded(attribute.DefaultEncoder())
		}
		g := byResource[rkey]
		if g == nil {
			g = &group{resource: attrs, scopes: map[scopeKey][]sdktrace.ReadOnlySpan{}}
			byResource[rkey] = g
			groups = append(groups, g)
		}
		sk := scopeKey{s.InstrumentationScope().Name, s.InstrumentationScope().Version}
		if _, ok := g.scopes[sk]; !ok {
			g.order = append(g.order, sk)
		}
		g.scopes[sk] = append(g.scopes[sk], s)
	}
	var out []byte
	for _, g := range groups {
		var rs []byte
		var res []byte
		for _, kv := range g.resource {
			res = appendMessage(res, 1, appendKeyValue(nil, kv))
		}
		rs = appendMessage(rs, 1, res)
		for _, sk := range g.order {
			var ss, scope []byte
			scope = protowire.AppendTag(scope, 1, protowire.BytesType)
			scope = protowire.AppendString(scope, sk.name)
			if sk.version != "" {
				scope = protowire.AppendTag(scope, 2, protowire.BytesType)
				scope = protowire.AppendString(scope, sk.version)
			}
			ss = appendMessage(ss, 1, scope)
			for _, s := range g.scopes[sk] {
				ss = appendMessage(ss, 2, appendSpan(nil, s))
			}
			rs = appendMessage(rs, 2, ss)
		}
		out = appendMessage(out, 1, rs)
	}
	return out
}

func appendMessage(b []byte, field protowire.Number, msg []byte) []byte {
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendBytes(b, msg)
}

func appendString(b []byte, field protowire.Number, s string) []byte {
	if s == "" {
		return b
	}
	b = protowire.AppendTag(b, field, protowire.BytesType)
	return protowire.AppendString(b, s)
}

func appendFixed64(b []byte, field protowire.Number, v uint64) []byte {
	b = protowire.AppendTag(b, field, protowire.Fixed64Type)
	return protowire.AppendFixed64(b, v)
}

func unixNano(t time.Time) uint64 {
	if t.IsZero() {
		return 0
	}
	return uint64(t.UnixNano())
}

func appendSpan(b []byte, s sdktrace.ReadOnlySpan) []byte {
	sc := s.SpanContext()
	tid, sid := sc.TraceID(), sc.SpanID()
	b = appendMessage(b, 1, tid[:])
	b = appendMessage(b, 2, sid[:])
	b = appendString(b, 3, sc.TraceState().String())
	if p := s.Parent(); p.IsValid() {
		psid := p.SpanID()
		b = appendMessage(b, 4, psid[:])
	}
	b = appendString(b, 5, s.Name())
	b = protowire.AppendTag(b, 6, protowire.VarintType)
	b = protowire.AppendVarint(b, uint64(s.SpanKind()))
	b = appendFixed64(b, 7, unixNano(s.StartTime()))
	b = appendFixed64(b, 8, unixNano(s.EndTime()))
	for _, kv := range s.Attributes() {
		b = appendMessage(b, 9, appendKeyValue(nil, kv))
	}
	if n := s.DroppedAttributes(); n > 0 {
		b = protowire.AppendTag(b, 10, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(n))
	}
	for _, ev := range s.Events() {
		var e []byte
		e = appendFixed64(e, 1, unixNano(ev.Time))
		e = appendString(e, 2, ev.Name)
		for _, kv := range ev.Attributes {
			e = appendMessage(e, 3, appendKeyValue(nil, kv))
		}
		b = appendMessage(b, 11, e)
	}
	for _, l := range s.Links() {
		b = appendMessage(b, 13, appendLink(nil, l))
	}
	if n := s.DroppedLinks(); n > 0 {
		b = protowire.AppendTag(b, 14, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(n))
	}
	var st []byte
	st = appendString(st, 2, s.Status().Description)
	code := uint64(0) // OTLP: 0 unset, 1 ok, 2 error
	switch s.Status().Code {
	case codes.Ok:
		code = 1
	case codes.Error:
		code = 2
	}
	if code != 0 {
		st = protowire.AppendTag(st, 3, protowire.VarintType)
		st = protowire.AppendVarint(st, code)
	}
	b = appendMessage(b, 15, st)
	b = protowire.AppendTag(b, 16, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, uint32(sc.TraceFlags()))
}

// appendLink encodes a Span.Link: the linked span's context and the link's attributes.
func appendLink(b []byte, l sdktrace.Link) []byte {
	tid, sid := l.SpanContext.TraceID(), l.SpanContext.SpanID()
	b = appendMessage(b, 1, tid[:])
	b = appendMessage(b, 2, sid[:])
	b = appendString(b, 3, l.SpanContext.TraceState().String())
	for _, kv := range l.Attributes {
		b = appendMessage(b, 4, appendKeyValue(nil, kv))
	}
	if l.DroppedAttributeCount > 0 {
		b = protowire.AppendTag(b, 5, protowire.VarintType)
		b = protowire.AppendVarint(b, uint64(l.DroppedAttributeCount))
	}
	b = protowire.AppendTag(b, 6, protowire.Fixed32Type)
	return protowire.AppendFixed32(b, uint32(l.SpanContext.TraceFlags()))
}

func appendKeyValue(b []byte, kv attribute.KeyValue) []byte {
	b = appendString(b, 1, string(kv.Key))
	return appendMessage(b, 2, appendAnyValue(nil, kv.Value))
}

func appendAnyValue(b []byte, v attribute.Value) []byte {
	switch v.Type() {
	case attribute.BOOL:
		b = protowire.AppendTag(b, 2, protowire.VarintType)
		return protowire.AppendVarint(b, protowire.EncodeBool(v.AsBool()))
	case attribute.INT64:
		b = protowire.AppendTag(b, 3, protowire.VarintType)
		return protowire.AppendVarint(b, uint64(v.AsInt64()))
	case attribute.FLOAT64:
		b = protowire.AppendTag(b, 4, protowire.Fixed64Type)
		return protowire.AppendFixed64(b, math.Float64bits(v.AsFloat64()))
	default:
		b = protowire.AppendTag(b, 1, protowire.BytesType)
		return protowire.AppendString(b, v.Emit())
	}
}
