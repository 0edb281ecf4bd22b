package tracing

import (
	"context"
	"errors"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
)

const (
	senderParent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	otherParent  = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
	senderTrace  = "4bf92f3577b34da6a3ce929d0e0e4736"
	senderSpan   = "00f067aa0ba902b7"
)

// recordSpans installs a recording provider and the propagator for one test.
func recordSpans(t *testing.T) *tracetest.SpanRecorder {
	t.Helper()
	rec := tracetest.NewSpanRecorder()
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	otel.SetTextMapPropagator(Propagator())
	t.Cleanup(func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) })
	return rec
}

func TestExtractFromHeaders(t *testing.T) {
	cases := []struct {
		name      string
		headers   map[string]string
		wantTrace string // "" = no span context
	}{
		{"traceparent header", map[string]string{"traceparent": senderParent}, senderTrace},
		{"only the binary-mode extension", map[string]string{"ce-traceparent": senderParent}, senderTrace},
		{"header preferred over the extension", map[string]string{"traceparent": senderParent, "ce-traceparent": otherParent}, senderTrace},
		{"malformed header falls back to the extension", map[string]string{"traceparent": "00-zz-zz-01", "ce-traceparent": otherParent}, "0af7651916cd43dd8448eb211c80319c"},
		{"malformed everywhere", map[string]string{"traceparent": "garbage"}, ""},
		{"nothing", nil, ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			for k, v := range c.headers {
				h.Set(k, v)
			}
			sc := trace.SpanContextFromContext(Propagator().Extract(context.Background(), propagation.HeaderCarrier(h)))
			got := ""
			if sc.IsValid() {
				got = sc.TraceID().String()
			}
			if got != c.wantTrace {
				t.Errorf("trace id %q, want %q", got, c.wantTrace)
			}
		})
	}
}

func TestInjectKeepsTheExtensionOnTheHop(t *testing.T) {
	ctx := Propagator().Extract(context.Background(), propagation.MapCarrier{"traceparent": senderParent, "tracestate": "vendor=x"})
	cases := []struct {
		name            string
		binaryMode      bool
		wantExtension   string
		wantExtensionTS string
	}{
		{"binary-mode CloudEvent: extension follows the header", true, senderParent, "vendor=x"},
		{"plain request: no ce- headers added", false, "", ""},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			h := http.Header{}
			if c.binaryMode {
				h.Set("ce-specversion", "1.0")
				h.Set("ce-traceparent", otherParent) // stale: an earlier hop's
			}
			Propagator().Inject(ctx, propagation.HeaderCarrier(h))
			if h.Get("traceparent") != senderParent {
				t.Errorf("traceparent %q, want %q", h.Get("traceparent"), senderParent)
			}
			if h.Get("ce-traceparent") != c.wantExtension || h.Get("ce-tracestate") != c.wantExtensionTS {
				t.Errorf("extension headers %q %q, want %q %q", h.Get("ce-traceparent"), h.Get("ce-tracestate"), c.wantExtension, c.wantExtensionTS)
			}
		})
	}
}

func TestEventExtensionRoundTrip(t *testing.T) {
	cases := []struct {
		name      string
		existing  map[string]string
		ctxParent string // "" = no span context in ctx
		want      string
		wantState string
	}{
		{"span context written", nil, senderParent, senderParent, ""},
		{"stale extension replaced, stale tracestate dropped", map[string]string{"traceparent": otherParent, "tracestate": "old=1"}, senderParent, senderParent, ""},
		{"no span context: sender's extension untouched", map[string]string{"traceparent": otherParent, "tracestate": "old=1"}, "", otherParent, "old=1"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			e := cloudevents.NewEvent()
			for k, v := range c.existing {
				e.SetExtension(k, v)
			}
			ctx := context.Background()
			if c.ctxParent != "" {
				ctx = Propagator().Extract(ctx, propagation.MapCarrier{"traceparent": c.ctxParent})
			}
			ToEvent(ctx, &e)
			if got, _ := e.Extensions()["traceparent"].(string); got != c.want {
				t.Errorf("traceparent extension %q, want %q", got, c.want)
			}
			if got, _ := e.Extensions()["tracestate"].(string); got != c.wantState {
				t.Errorf("tracestate extension %q, want %q", got, c.wantState)
			}
			if c.want != "" {
				if sc := trace.SpanContextFromContext(FromEvent(context.Background(), e)); sc.TraceID().String() != c.want[3:35] {
					t.Errorf("FromEvent read trace %s, want %s", sc.TraceID(), c.want[3:35])
				}
			}
		})
	}
}

func TestHandleEventContinuesTheEventsTrace(t *testing.T) {
	rec := recordSpans(t)
	in := cloudevents.NewEvent()
	in.SetID("ev-1")
	in.SetType("e2e.order.placed")
	in.SetSource("test")
	in.SetExtension("traceparent", senderParent)
	cases := []struct {
		name       string
		reply      bool
		err        error
		wantStatus codes.Code
	}{
		{"reply carries the handler's context", true, nil, codes.Unset},
		{"transient error marks the span failed", false, errors.New("redis down"), codes.Error},
		{"4xx result marks the span failed", false, cloudevents.NewHTTPResult(http.StatusUnprocessableEntity, "stale"), codes.Error},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			var inner trace.SpanContext
			reply, _ := HandleEvent(context.Background(), in, func(ctx context.Context, e event.Event) (*event.Event, error) {
				inner = trace.SpanContextFromContext(ctx)
				if !c.reply {
					return nil, c.err
				}
				r := cloudevents.NewEvent()
				r.SetID("reply-1")
				return &r, nil
			})
			spans := rec.Ended()
			s := spans[len(spans)-1]
			if s.Parent().TraceID().String() != senderTrace || s.Parent().SpanID().String() != senderSpan {
				t.Errorf("handler span parent %s/%s, want %s/%s", s.Parent().TraceID(), s.Parent().SpanID(), senderTrace, senderSpan)
			}
			if !s.SpanContext().Equal(inner) {
				t.Errorf("the handler's ctx does not hold its span")
			}
			if s.Status().Code != c.wantStatus {
				t.Errorf("status %v, want %v", s.Status().Code, c.wantStatus)
			}
			if c.reply {
				if got := FromEvent(context.Background(), *reply); trace.SpanContextFromContext(got).SpanID() != s.SpanContext().SpanID() {
					t.Errorf("reply's extension names span %s, want the handler's %s", trace.SpanContextFromContext(got).SpanID(), s.SpanContext().SpanID())
				}
			}
		})
	}
}

// TestSenderTraceparentReachesThePublishedEvent: an HTTP intake honours the sender's
// traceparent, and the event it publishes carries the trace on as header and extension.
func TestSenderTraceparentReachesThePublishedEvent(t *testing.T) {
	rec := recordSpans(t)
	var got http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = r.Header.Clone()
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	p, err := cehttp.New(cehttp.WithTarget(srv.URL), cehttp.WithClient(http.Client{Transport: Transport(http.DefaultTransport)}))
	if err != nil {
		t.Fatal(err)
	}
	client, err := cloudevents.NewClient(p)
	if err != nil {
		t.Fatal(err)
	}
	req := httptest.NewRequest(http.MethodPost, "/github", nil)
	req.Header.Set("traceparent", senderParent)
	req, intake := StartRequest(req, "webhook intake")
	e := cloudevents.NewEvent()
	e.SetID("delivery-1")
	e.SetType("com.github.push")
	e.SetSource("test")
	ctx, publish := StartPublish(req.Context(), &e)
	if res := client.Send(ctx, e); !cloudevents.IsACK(res) {
		t.Fatal(res)
	}
	publish.End()
	intake.End()
	spans := rec.Ended()
	if len(spans) != 2 {
		t.Fatalf("%d spans, want 2", len(spans))
	}
	pub, in := spans[0], spans[1]
	if in.Parent().SpanID().String() != senderSpan || in.SpanContext().TraceID().String() != senderTrace {
		t.Errorf("intake span does not continue the sender's traceparent: parent %s", in.Parent().SpanID())
	}
	if pub.Parent().SpanID() != in.SpanContext().SpanID() {
		t.Errorf("publish span's parent %s, want the intake %s", pub.Parent().SpanID(), in.SpanContext().SpanID())
	}
	for _, h := range []string{"traceparent", "ce-traceparent"} {
		sc := trace.SpanContextFromContext(w3c.Extract(context.Background(), propagation.MapCarrier{"traceparent": got.Get(h)}))
		if sc.SpanID() != pub.SpanContext().SpanID() {
			t.Errorf("%s %q names span %s, want the publish span %s", h, got.Get(h), sc.SpanID(), pub.SpanContext().SpanID())
		}
	}
}

func TestConfigured(t *testing.T) {
	cases := []struct {
		name string
		env  map[string]string
		want bool
	}{
		{"nothing set: off", nil, false},
		{"endpoint set: on", map[string]string{EnvEndpoint: "http://collector:4318"}, true},
		{"traces endpoint set: on", map[string]string{EnvTracesEndpoint: "http://collector:4318/v1/traces"}, true},
		{"SDK disabled wins", map[string]string{EnvEndpoint: "http://collector:4318", EnvSDKDisabled: "true"}, false},
		{"exporter none wins", map[string]string{EnvEndpoint: "http://collector:4318", EnvTracesExporter: "none"}, false},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if got := Configured(func(k string) string { return c.env[k] }); got != c.want {
				t.Errorf("Configured = %v, want %v", got, c.want)
			}
		})
	}
}

// TestFlushSendsTheBatchNow: with a batch delay far longer than the test, Flush sends the
// spans ended so far at once; without an exporting provider it does nothing.
func TestFlushSendsTheBatchNow(t *testing.T) {
	tests := []struct {
		name      string
		setup     bool
		wantPosts int
	}{
		{"exporting provider", true, 1},
		{"no provider", false, 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var posts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) { posts.Add(1) }))
			defer srv.Close()
			t.Setenv("OTEL_BSP_SCHEDULE_DELAY", "600000")
			prevTP := otel.GetTracerProvider()
			defer otel.SetTracerProvider(prevTP)
			if tc.setup {
				shutdown, err := Setup(Options{Service: "flush-test", EndpointURL: srv.URL + "/v1/traces"})
				if err != nil {
					t.Fatal(err)
				}
				defer func() { _ = shutdown(context.Background()) }()
			}
			_, span := Tracer().Start(context.Background(), "ended before the flush")
			span.End()
			if err := Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := posts.Load(); got != int32(tc.wantPosts) {
				t.Errorf("%d exports after Flush, want %d", got, tc.wantPosts)
			}
		})
	}
}

// TestTraceParentRoundTrip: TraceParent writes the span context of ctx as a W3C traceparent,
// and SpanContextOf reads it back.
func TestTraceParentRoundTrip(t *testing.T) {
	tests := []struct {
		name        string
		traceparent string // the context's, "" for none
		want        string
	}{
		{"a sampled span context", senderParent, senderParent},
		{"an unsampled one keeps its flags", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00", "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"},
		{"none", "", ""},
		{"malformed", "00-zz-zz-01", ""},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ctx := trace.ContextWithSpanContext(context.Background(), SpanContextOf(tc.traceparent))
			got := TraceParent(ctx)
			if got != tc.want {
				t.Fatalf("TraceParent %q, want %q", got, tc.want)
			}
			if sc := SpanContextOf(got); sc.IsValid() != (tc.want != "") {
				t.Errorf("SpanContextOf(%q) valid %v", got, sc.IsValid())
			}
		})
	}
}
