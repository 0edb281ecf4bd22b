package broker

import (
	"context"
	"net/http"
	"net/http/httptest"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/propagation"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/sdk/trace/tracetest"
	"go.opentelemetry.io/otel/trace"
	"go.opentelemetry.io/otel/trace/noop"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/ptr"

	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// hopRecorder answers with status(call) and records the trace headers of every request.
type hopRecorder struct {
	*httptest.Server
	mu   sync.Mutex
	hops []http.Header
}

func newHopRecorder(t *testing.T, status func(call int) int) *hopRecorder {
	h := &hopRecorder{}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		h.mu.Lock()
		h.hops = append(h.hops, r.Header.Clone())
		call := len(h.hops)
		h.mu.Unlock()
		w.WriteHeader(status(call))
	}))
	t.Cleanup(h.Close)
	return h
}

func (h *hopRecorder) headers() []http.Header {
	h.mu.Lock()
	defer h.mu.Unlock()
	return append([]http.Header(nil), h.hops...)
}

// TestTraceFollowsTheEventThroughTheBroker: the ingress continues the sender's traceparent and
// stores its span with the event; each Trigger's delivery is a child of it, every HTTP attempt
// its own span numbered from 1 under the delivery, the dead-letter send a child of the failed
// delivery; the subscriber sees each attempt's span as traceparent header and as the event's
// extension.
func TestTraceFollowsTheEventThroughTheBroker(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	otel.SetTextMapPropagator(tracing.Propagator())
	t.Cleanup(func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) })

	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := NewStore(rdb)
	go store.Run(ctx, 2)
	m := metrics.New()
	in := NewIngress(store, quietLog(), m)
	in.Add("ns", "b", 0)

	retry, err := kncloudevents.RetryConfigFromDeliverySpec(eventingduckv1.DeliverySpec{Retry: ptr.Int32(1), BackoffDelay: ptr.String("PT0.01S")})
	if err != nil {
		t.Fatal(err)
	}
	flaky := newHopRecorder(t, func(call int) int {
		if call == 1 {
			return http.StatusServiceUnavailable
		}
		return http.StatusAccepted
	})
	failing := newHopRecorder(t, func(int) int { return http.StatusInternalServerError })
	dls := newHopRecorder(t, func(int) int { return http.StatusAccepted })
	dl := addressable(t, dls.URL)
	dispatcher := kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil, kncloudevents.WithTraceProvider(AttemptNumbering(otel.GetTracerProvider())))
	for _, trig := range []*Trigger{
		{Namespace: "ns", Name: "flaky", Broker: "b", Subscriber: addressable(t, flaky.URL), ReplyURL: "http://127.0.0.1:1/ns/b", Retry: retry},
		{Namespace: "ns", Name: "failing", Broker: "b", Subscriber: addressable(t, failing.URL), DeadLetter: &dl, ReplyURL: "http://127.0.0.1:1/ns/b", Retry: retry},
	} {
		if err := EnsureGroup(ctx, rdb, StreamKey(trig.Namespace, trig.Broker), trig.Group()); err != nil {
			t.Fatal(err)
		}
		c := NewConsumer(trig, rdb, dispatcher, quietLog(), m, ConsumerOptions{Block: 50 * time.Millisecond})
		cctx, stop := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { _ = c.Run(cctx); close(done) }()
		t.Cleanup(func() { stop(); <-done })
	}

	const sender = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
	postBinary(t, in, "ev-1", map[string]string{"traceparent": sender}, `{}`)
	eventually(t, "both deliveries and the dead letter", func() bool {
		return len(flaky.headers()) == 2 && len(failing.headers()) == 2 && len(dls.headers()) == 1
	})
	spanByID := map[trace.SpanID]sdktrace.ReadOnlySpan{}
	var ingress sdktrace.ReadOnlySpan
	eventually(t, "the deliveries' spans ended", func() bool {
		n := 0
		for _, s := range rec.Ended() {
			if s.Name() == "deliver ns/flaky" || s.Name() == "deliver ns/failing" {
				n++
			}
		}
		return n == 2
	})
	for _, s := range rec.Ended() {
		spanByID[s.SpanContext().SpanID()] = s
		if s.Name() == "broker ingress ns/b" {
			ingress = s
		}
	}
	if ingress == nil {
		t.Fatal("no ingress span")
	}
	if ingress.Parent().SpanID().String() != "00f067aa0ba902b7" || ingress.SpanContext().TraceID().String() != "4bf92f3577b34da6a3ce929d0e0e4736" {
		t.Errorf("ingress span does not continue the sender's traceparent (parent %s)", ingress.Parent().SpanID())
	}
	// ancestor climbs from a hop's traceparent to the first span named one of names.
	ancestor := func(hop http.Header, header string, names ...string) sdktrace.ReadOnlySpan {
		sc := trace.SpanContextFromContext(tracing.Propagator().Extract(context.Background(), propagationOf(hop, header)))
		s := spanByID[sc.SpanID()]
		for s != nil {
			for _, n := range names {
				if s.Name() == n {
					return s
				}
			}
			s = spanByID[s.Parent().SpanID()]
		}
		return nil
	}
	attempt := func(hop http.Header) int {
		sc := trace.SpanContextFromContext(tracing.Propagator().Extract(context.Background(), propagationOf(hop, "traceparent")))
		s := spanByID[sc.SpanID()]
		if s == nil {
			return 0
		}
		for _, a := range s.Attributes() {
			if string(a.Key) == tracing.AttrAttempt {
				return int(a.Value.AsInt64())
			}
		}
		return -1
	}
	cases := []struct {
		name       string
		hop        http.Header
		wantSpan   string
		attempt    int
		deadLetter bool
	}{
		{"flaky: first attempt", flaky.headers()[0], "deliver ns/flaky", 1, false},
		{"flaky: retry", flaky.headers()[1], "deliver ns/flaky", 2, false},
		{"failing: first attempt", failing.headers()[0], "deliver ns/failing", 1, false},
		{"failing: retry", failing.headers()[1], "deliver ns/failing", 2, false},
		{"failing: dead letter", dls.headers()[0], "dead-letter ns/failing", 1, true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			if c.hop.Get("traceparent") == "" || c.hop.Get("traceparent") != c.hop.Get("ce-traceparent") {
				t.Fatalf("traceparent %q and ce-traceparent %q should both name the attempt", c.hop.Get("traceparent"), c.hop.Get("ce-traceparent"))
			}
			d := ancestor(c.hop, "traceparent", c.wantSpan)
			if d == nil {
				t.Fatalf("the attempt's span is not under %q", c.wantSpan)
			}
			if got := attempt(c.hop); got != c.attempt {
				t.Errorf("attempt %d, want %d", got, c.attempt)
			}
			top := d
			if c.deadLetter {
				top = spanByID[d.Parent().SpanID()]
				if top == nil || top.Name() != "deliver ns/failing" {
					t.Fatalf("dead-letter span's parent is not the failed delivery")
				}
			}
			if top.Parent().SpanID() != ingress.SpanContext().SpanID() {
				t.Errorf("delivery's parent %s, want the ingress span %s", top.Parent().SpanID(), ingress.SpanContext().SpanID())
			}
		})
	}
	if flaky.headers()[0].Get("traceparent") == flaky.headers()[1].Get("traceparent") {
		t.Error("a retry reused the first attempt's span")
	}
}

func propagationOf(h http.Header, header string) propagation.MapCarrier {
	return propagation.MapCarrier{"traceparent": h.Get(header)}
}

type discardExporter struct{}

func (discardExporter) ExportSpans(context.Context, []sdktrace.ReadOnlySpan) error { return nil }
func (discardExporter) Shutdown(context.Context) error                             { return nil }

// BenchmarkTracingPerEvent measures what tracing adds to one event's way through the broker:
// the ingress span and the context stored with the event, the delivery span, the dispatcher's
// send span and one numbered HTTP attempt with its headers injected, with tracing off (no-op
// provider), 1 % and 100 % sampled (spans batched to an exporter that drops them).
func BenchmarkTracingPerEvent(b *testing.B) {
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	defer func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) }()
	otel.SetTextMapPropagator(tracing.Propagator())
	c := &Consumer{t: &Trigger{Namespace: "ns", Name: "t"}, brokerKey: "ns/b"}
	for _, bc := range []struct {
		name  string
		ratio float64 // <0: tracing off
	}{{"off", -1}, {"sampled 1%", 0.01}, {"sampled 100%", 1}} {
		b.Run(bc.name, func(b *testing.B) {
			if bc.ratio < 0 {
				otel.SetTracerProvider(noop.NewTracerProvider())
			} else {
				tp := sdktrace.NewTracerProvider(sdktrace.WithSampler(sdktrace.ParentBased(sdktrace.TraceIDRatioBased(bc.ratio))),
					sdktrace.WithBatcher(discardExporter{}))
				defer func() { _ = tp.Shutdown(context.Background()) }()
				otel.SetTracerProvider(tp)
			}
			dispatcherTracer := AttemptNumbering(otel.GetTracerProvider()).Tracer("dispatcher")
			req := httptest.NewRequest(http.MethodPost, "/ns/b", nil)
			b.ReportAllocs()
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				e := cloudevents.NewEvent()
				e.SetID("ev")
				e.SetType("t")
				e.SetSource("/s")
				_, in := startIngressSpan(context.Background(), req, &e, "ns/b")
				in.End()
				ctx, deliver := c.startDeliverySpan(context.Background(), &e, "deliver")
				ctx, send := dispatcherTracer.Start(ctx, "send")
				actx, attempt := dispatcherTracer.Start(ctx, "POST /", trace.WithSpanKind(trace.SpanKindClient))
				h := http.Header{"Ce-Specversion": {"1.0"}}
				otel.GetTextMapPropagator().Inject(actx, propagation.HeaderCarrier(h))
				attempt.End()
				send.End()
				deliver.End()
			}
		})
	}
}

// TestUnsampledEventStartsNoSpans: under the default parent-based sampler, an event whose
// sender's trace context is not sampled starts no span at the ingress nor at its delivery, yet
// the subscriber gets the sender's context as it came (no span of this runtime in between).
func TestUnsampledEventStartsNoSpans(t *testing.T) {
	rec := tracetest.NewSpanRecorder()
	prevTP, prevProp := otel.GetTracerProvider(), otel.GetTextMapPropagator()
	otel.SetTracerProvider(sdktrace.NewTracerProvider(sdktrace.WithSpanProcessor(rec)))
	otel.SetTextMapPropagator(tracing.Propagator())
	t.Cleanup(func() { otel.SetTracerProvider(prevTP); otel.SetTextMapPropagator(prevProp) })

	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := NewStore(rdb)
	go store.Run(ctx, 2)
	m := metrics.New()
	in := NewIngress(store, quietLog(), m)
	in.Add("ns", "b", 0)
	sub := newHopRecorder(t, func(int) int { return http.StatusAccepted })
	trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), ReplyURL: "http://127.0.0.1:1/ns/b"}
	if err := EnsureGroup(ctx, rdb, StreamKey(trig.Namespace, trig.Broker), trig.Group()); err != nil {
		t.Fatal(err)
	}
	dispatcher := kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil, kncloudevents.WithTraceProvider(AttemptNumbering(otel.GetTracerProvider())))
	c := NewConsumer(trig, rdb, dispatcher, quietLog(), m, ConsumerOptions{Block: 50 * time.Millisecond})
	cctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(cctx); close(done) }()
	t.Cleanup(func() { stop(); <-done })

	const sender = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00"
	postBinary(t, in, "ev-unsampled", map[string]string{"traceparent": sender}, `{}`)
	eventually(t, "the delivery", func() bool { return len(sub.headers()) == 1 })
	hop := sub.headers()[0]
	if got := hop.Get("traceparent"); got != sender {
		t.Errorf("subscriber got traceparent %q, want the sender's %q", got, sender)
	}
	if got := hop.Get("Ce-Traceparent"); got != sender {
		t.Errorf("subscriber got the event's traceparent extension %q, want the sender's %q", got, sender)
	}
	if n := len(rec.Started()); n != 0 {
		t.Errorf("%d spans started for an unsampled event, want none", n)
	}
}

// TestUnsampledFollowsTheSampler: which spans are not started, by sampler and parent.
func TestUnsampledFollowsTheSampler(t *testing.T) {
	sampled := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}, TraceFlags: trace.FlagsSampled})
	unsampledParent := trace.NewSpanContext(trace.SpanContextConfig{TraceID: trace.TraceID{1}, SpanID: trace.SpanID{1}})
	for _, tc := range []struct {
		name    string
		sampler string
		parent  trace.SpanContext
		skip    bool
	}{
		{"default sampler, sampled parent", "", sampled, false},
		{"default sampler, unsampled parent", "", unsampledParent, true},
		{"default sampler, no parent", "", trace.SpanContext{}, false},
		{"parent-based ratio, unsampled parent", "parentbased_traceidratio", unsampledParent, true},
		{"parent-based ratio, no parent", "parentbased_traceidratio", trace.SpanContext{}, false},
		{"always off, no parent", "always_off", trace.SpanContext{}, true},
		{"always off, sampled parent", "always_off", sampled, false},
		{"parent-based always off, no parent", "parentbased_always_off", trace.SpanContext{}, true},
		{"always on ignores the parent", "always_on", unsampledParent, false},
		{"ratio ignores the parent", "traceidratio", unsampledParent, false},
		{"unknown sampler", "jaeger_remote", unsampledParent, false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			follows, rootsOff := policyOf(tc.sampler)
			if got := skipped(follows, rootsOff, tc.parent); got != tc.skip {
				t.Errorf("skipped = %v, want %v", got, tc.skip)
			}
		})
	}
}
