package tracestore

import (
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

func span(trace, id byte, eventID string) Span {
	s := Span{TraceID: fmt.Sprintf("%032x", trace), SpanID: fmt.Sprintf("%016x", id), Name: "s", Start: time.Unix(int64(id), 0)}
	if eventID != "" {
		s.Attributes = map[string]string{tracing.AttrEventID: eventID}
	}
	return s
}

func TestEvictionByAgeAndBytes(t *testing.T) {
	one := span(1, 1, "ev-0") // every span of the test has the same size
	perSpan := one.size()
	cases := []struct {
		name      string
		maxAge    time.Duration
		maxBytes  int64
		steps     []time.Duration // clock advance before each add of one span (trace i, event ev-i)
		wantSpans int
		wantFirst int // index of the oldest span kept
	}{
		{"within bounds: all kept", time.Hour, 100 * perSpan, []time.Duration{0, time.Second, time.Second}, 3, 0},
		{"bytes bound keeps the newest", time.Hour, 2 * perSpan, []time.Duration{0, 0, 0, 0}, 2, 2},
		{"age bound drops the old", time.Minute, 100 * perSpan, []time.Duration{0, 0, 2 * time.Minute, 0}, 2, 2},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			now := time.Unix(1000, 0)
			s := New(Options{MaxAge: c.maxAge, MaxBytes: c.maxBytes, Now: func() time.Time { return now }})
			for i, d := range c.steps {
				now = now.Add(d)
				s.Add([]Span{span(byte(i+1), byte(i+1), fmt.Sprint("ev-", i))})
			}
			if st := s.Stats(); st.Spans != c.wantSpans || st.Bytes != int64(c.wantSpans)*perSpan {
				t.Errorf("stats %+v, want %d spans of %d bytes", st, c.wantSpans, perSpan)
			}
			for i := range c.steps {
				kept := len(s.ByEvent(fmt.Sprint("ev-", i))) == 1
				if want := i >= c.wantFirst; kept != want {
					t.Errorf("event ev-%d kept = %v, want %v", i, kept, want)
				}
				if got := s.Trace(fmt.Sprintf("%032x", i+1)) != nil; got != (i >= c.wantFirst) {
					t.Errorf("trace %d kept = %v", i+1, got)
				}
			}
		})
	}
}

func TestByEventReturnsWholeTraces(t *testing.T) {
	s := New(Options{})
	// Trace 1: only one span names the event; the others are found through the trace.
	s.Add([]Span{span(1, 3, ""), span(1, 1, "ev-1"), span(1, 2, ""), span(2, 9, "ev-2")})
	got := s.ByEvent("ev-1")
	if len(got) != 1 || len(got[0].Spans) != 3 {
		t.Fatalf("got %+v, want one trace of 3 spans", got)
	}
	for i, sp := range got[0].Spans {
		if want := fmt.Sprintf("%016x", i+1); sp.SpanID != want {
			t.Errorf("span %d is %s, want %s (by start time)", i, sp.SpanID, want)
		}
	}
	if len(s.ByEvent("unknown")) != 0 {
		t.Error("an unknown event has traces")
	}
}

func otlpBody(t *testing.T, spans ...*tracepb.Span) []byte {
	t.Helper()
	req := &coltracepb.ExportTraceServiceRequest{ResourceSpans: []*tracepb.ResourceSpans{{
		ScopeSpans: []*tracepb.ScopeSpans{{Spans: spans}},
	}}}
	b, err := proto.Marshal(req)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func gz(b []byte) []byte {
	var buf bytes.Buffer
	w := gzip.NewWriter(&buf)
	_, _ = w.Write(b)
	_ = w.Close()
	return buf.Bytes()
}

func TestReceiverRefusesHostileBodies(t *testing.T) {
	good := otlpBody(t, &tracepb.Span{TraceId: bytes.Repeat([]byte{1}, 16), SpanId: bytes.Repeat([]byte{2}, 8), Name: "ok",
		Attributes: []*commonpb.KeyValue{{Key: tracing.AttrEventID, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: "ev-1"}}}}})
	badIDs := otlpBody(t, &tracepb.Span{TraceId: []byte{1}, SpanId: []byte{2}, Name: "short ids"})
	huge := make([]byte, MaxRequestBytes+1)
	cases := []struct {
		name        string
		contentType string
		encoding    string
		body        []byte
		want        int
	}{
		{"protobuf accepted", tracing.ContentTypeProtobuf, "", good, http.StatusOK},
		{"gzip accepted", tracing.ContentTypeProtobuf, "gzip", gz(good), http.StatusOK},
		{"oversized body", tracing.ContentTypeProtobuf, "", huge, http.StatusRequestEntityTooLarge},
		{"gzip bomb", tracing.ContentTypeProtobuf, "gzip", gz(huge), http.StatusRequestEntityTooLarge},
		{"garbage", tracing.ContentTypeProtobuf, "", []byte("\xff\xff\xff\xff not protobuf"), http.StatusBadRequest},
		{"malformed ids", tracing.ContentTypeProtobuf, "", badIDs, http.StatusBadRequest},
		{"broken gzip", tracing.ContentTypeProtobuf, "gzip", []byte("nope"), http.StatusBadRequest},
		{"unknown encoding", tracing.ContentTypeProtobuf, "br", good, http.StatusBadRequest},
		{"json refused", "application/json", "", []byte(`{}`), http.StatusUnsupportedMediaType},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := New(Options{})
			req := httptest.NewRequest(http.MethodPost, ReceiverPath, bytes.NewReader(c.body))
			req.Header.Set("Content-Type", c.contentType)
			if c.encoding != "" {
				req.Header.Set("Content-Encoding", c.encoding)
			}
			w := httptest.NewRecorder()
			s.ServeHTTP(w, req)
			if w.Code != c.want {
				t.Fatalf("status %d, want %d: %s", w.Code, c.want, w.Body)
			}
			stored := s.Stats().Spans
			if (c.want == http.StatusOK) != (stored == 1) {
				t.Errorf("%d spans stored after %d", stored, w.Code)
			}
			if c.want == http.StatusOK {
				get := httptest.NewRecorder()
				s.ServeHTTP(get, httptest.NewRequest(http.MethodGet, ReceiverPath+"?event_id=ev-1", nil))
				if !strings.Contains(get.Body.String(), `"name":"ok"`) {
					t.Errorf("lookup by event: %s", get.Body)
				}
			}
		})
	}
}

func TestForwardsWhatItReceives(t *testing.T) {
	var mu sync.Mutex
	var got [][]byte
	ext := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != ReceiverPath || r.Header.Get("Content-Type") != tracing.ContentTypeProtobuf {
			http.Error(w, "bad", http.StatusBadRequest)
			return
		}
		b, _ := io.ReadAll(r.Body)
		mu.Lock()
		got = append(got, b)
		mu.Unlock()
	}))
	defer ext.Close()
	opts, err := OptionsFromEnv(func(k string) string { return map[string]string{EnvForward: ext.URL + "/"}[k] })
	if err != nil {
		t.Fatal(err)
	}
	s := New(opts)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	go s.Run(ctx)
	body := otlpBody(t, &tracepb.Span{TraceId: bytes.Repeat([]byte{1}, 16), SpanId: bytes.Repeat([]byte{2}, 8), Name: "fwd"})
	req := httptest.NewRequest(http.MethodPost, ReceiverPath, bytes.NewReader(body))
	req.Header.Set("Content-Type", tracing.ContentTypeProtobuf)
	s.ServeHTTP(httptest.NewRecorder(), req)
	deadline := time.Now().Add(10 * time.Second)
	for {
		mu.Lock()
		n := len(got)
		mu.Unlock()
		if n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("nothing forwarded")
		}
		time.Sleep(10 * time.Millisecond)
	}
	if !bytes.Equal(got[0], body) {
		t.Error("forwarded body differs from the received one")
	}
}

func TestOptionsFromEnv(t *testing.T) {
	cases := []struct {
		name    string
		env     map[string]string
		wantErr string
	}{
		{"defaults", nil, ""},
		{"all set", map[string]string{EnvMaxAge: "5m", EnvMaxBytes: "1048576", EnvForward: "http://localhost:4318"}, ""},
		{"bad age", map[string]string{EnvMaxAge: "soon"}, EnvMaxAge},
		{"zero bytes", map[string]string{EnvMaxBytes: "0"}, EnvMaxBytes},
		{"forward without scheme", map[string]string{EnvForward: "localhost:4318"}, EnvForward},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := OptionsFromEnv(func(k string) string { return c.env[k] })
			if (err == nil) != (c.wantErr == "") || (err != nil && !strings.Contains(err.Error(), c.wantErr)) {
				t.Errorf("error %v, want one naming %q", err, c.wantErr)
			}
		})
	}
}

// TestKeepsSpanLinks: a received span keeps its links to spans of other traces (a fired
// deadline's link to the step that scheduled it); a link with malformed ids is left out.
func TestKeepsSpanLinks(t *testing.T) {
	tests := []struct {
		name  string
		links []*tracepb.Span_Link
		want  []Link
	}{
		{"a link", []*tracepb.Span_Link{{TraceId: bytes.Repeat([]byte{0xab}, 16), SpanId: bytes.Repeat([]byte{0xcd}, 8)}},
			[]Link{{TraceID: strings.Repeat("ab", 16), SpanID: strings.Repeat("cd", 8)}}},
		{"a malformed link", []*tracepb.Span_Link{{TraceId: []byte{1}, SpanId: []byte{2}}}, nil},
		{"none", nil, nil},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s := New(Options{})
			event := fmt.Sprintf("linked-%d", i)
			body := otlpBody(t, &tracepb.Span{TraceId: bytes.Repeat([]byte{byte(i + 1)}, 16), SpanId: bytes.Repeat([]byte{3}, 8), Name: "fire deadline", Links: tc.links,
				Attributes: []*commonpb.KeyValue{{Key: tracing.AttrEventID, Value: &commonpb.AnyValue{Value: &commonpb.AnyValue_StringValue{StringValue: event}}}}})
			req := httptest.NewRequest(http.MethodPost, ReceiverPath, bytes.NewReader(body))
			req.Header.Set("Content-Type", tracing.ContentTypeProtobuf)
			w := httptest.NewRecorder()
			s.ServeHTTP(w, req)
			if w.Code != http.StatusOK {
				t.Fatalf("receiver answered %d: %s", w.Code, w.Body)
			}
			got := s.ByEvent(event)
			if len(got) != 1 || len(got[0].Spans) != 1 {
				t.Fatalf("traces %+v", got)
			}
			if fmt.Sprint(got[0].Spans[0].Links) != fmt.Sprint(tc.want) {
				t.Errorf("links %v, want %v", got[0].Spans[0].Links, tc.want)
			}
		})
	}
}
