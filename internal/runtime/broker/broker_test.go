package broker

import (
	"context"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/eventing/pkg/kncloudevents/attributes"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/ptr"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

func TestMain(m *testing.M) {
	_ = os.Setenv("SYSTEM_NAMESPACE", "knative-eventing")
	os.Exit(m.Run())
}

// captureServer records the events it receives and answers status.
type captureServer struct {
	*httptest.Server
	mu     sync.Mutex
	events []cloudevents.Event
}

func newCapture(t *testing.T, status int, body string) *captureServer {
	c := &captureServer{}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err == nil {
			c.mu.Lock()
			c.events = append(c.events, *e)
			c.mu.Unlock()
		}
		w.WriteHeader(status)
		_, _ = io.WriteString(w, body)
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *captureServer) received() []cloudevents.Event {
	c.mu.Lock()
	defer c.mu.Unlock()
	return append([]cloudevents.Event(nil), c.events...)
}

func addressable(t *testing.T, raw string) duckv1.Addressable {
	u, err := apis.ParseURL(raw)
	if err != nil {
		t.Fatal(err)
	}
	return duckv1.Addressable{URL: u}
}

// TestDeadLetterExtensionsMatchKnative sends the same failing delivery through Knative's own
// dispatcher with a dead-letter sink, and through our path, and compares the dead letters.
func TestDeadLetterExtensionsMatchKnative(t *testing.T) {
	for name, tc := range map[string]struct {
		status int
		body   string
	}{
		"server error with body": {status: 500, body: "boom"},
		"bad request":            {status: 400, body: `{"reason":"missing field"}`},
	} {
		t.Run(name, func(t *testing.T) {
			sub := newCapture(t, tc.status, tc.body)
			knDLS := newCapture(t, 202, "")
			ourDLS := newCapture(t, 202, "")
			d := kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil)
			e := cloudevents.NewEvent()
			e.SetID("dl-1")
			e.SetType("t")
			e.SetSource("/s")
			_ = e.SetData("application/json", []byte(`{"a":1}`))
			rc := kncloudevents.NoRetries()
			dls := addressable(t, knDLS.URL)

			if _, err := d.SendEvent(context.Background(), e, addressable(t, sub.URL), kncloudevents.WithRetryConfig(&rc), kncloudevents.WithDeadLetterSink(&dls)); err != nil {
				t.Fatalf("Knative dispatcher: %v", err)
			}
			subscriber := addressable(t, sub.URL)
			info, err := d.SendEvent(context.Background(), e, subscriber, kncloudevents.WithRetryConfig(&rc))
			if err == nil {
				t.Fatal("delivery to a failing subscriber succeeded")
			}
			if _, err := d.SendEvent(context.Background(), e, addressable(t, ourDLS.URL), kncloudevents.WithTransformers(ErrorTransformers(subscriber.URL, info)...)); err != nil {
				t.Fatal(err)
			}

			kn, ours := knDLS.received(), ourDLS.received()
			if len(kn) != 1 || len(ours) != 1 {
				t.Fatalf("dead letters: knative %d, ours %d; want 1 each", len(kn), len(ours))
			}
			for _, ext := range []string{"knativeerrordest", "knativeerrorcode", "knativeerrordata"} {
				want, got := kn[0].Extensions()[ext], ours[0].Extensions()[ext]
				if fmt.Sprint(want) != fmt.Sprint(got) || want == nil {
					t.Errorf("%s = %v, Knative sets %v", ext, got, want)
				}
			}
			if string(ours[0].Data()) != `{"a":1}` || ours[0].ID() != "dl-1" {
				t.Errorf("dead letter is not the original event: %v", ours[0])
			}
		})
	}
}

// TestRetrySemantics checks the retry decisions and backoff Knative's delivery spec gives.
// TestDeadLetterDataIsTruncated covers a failure body longer than Knative's limit. Knative
// v0.50.0's dispatcher panics on it (it base64-encodes the whole body into a buffer sized for
// the limit), so the expectation is Knative's documented encoding: base64, cut to
// KnativeErrorDataExtensionMaxLength.
func TestDeadLetterDataIsTruncated(t *testing.T) {
	body := []byte(strings.Repeat("x", 2000))
	dest, _ := apis.ParseURL("http://sub.example/")
	e := cloudevents.NewEvent()
	e.SetID("1")
	e.SetType("t")
	e.SetSource("/s")
	msg := binding.ToMessage(&e)
	got, err := binding.ToEvent(context.Background(), msg, ErrorTransformers(dest, &kncloudevents.DispatchInfo{ResponseCode: 503, ResponseBody: body})...)
	if err != nil {
		t.Fatal(err)
	}
	want := base64.StdEncoding.EncodeToString(body)[:attributes.KnativeErrorDataExtensionMaxLength]
	if data := fmt.Sprint(got.Extensions()["knativeerrordata"]); data != want {
		t.Fatalf("knativeerrordata has %d characters, want the first %d of the base64 body", len(data), len(want))
	}
	if code := fmt.Sprint(got.Extensions()["knativeerrorcode"]); code != "503" {
		t.Fatalf("knativeerrorcode = %s", code)
	}
}

func TestRetrySemantics(t *testing.T) {
	exp, lin := eventingduckv1.BackoffPolicyExponential, eventingduckv1.BackoffPolicyLinear
	tests := []struct {
		name        string
		spec        eventingduckv1.DeliverySpec
		wantRetries int
		wantBackoff []time.Duration // for attempts 1..n
	}{
		{name: "exponential doubles", spec: eventingduckv1.DeliverySpec{Retry: ptr.Int32(3), BackoffPolicy: &exp, BackoffDelay: ptr.String("PT0.2S")},
			wantRetries: 3, wantBackoff: []time.Duration{400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond}},
		{name: "linear grows by the delay", spec: eventingduckv1.DeliverySpec{Retry: ptr.Int32(3), BackoffPolicy: &lin, BackoffDelay: ptr.String("PT1S")},
			wantRetries: 3, wantBackoff: []time.Duration{time.Second, 2 * time.Second, 3 * time.Second}},
		{name: "no retry", spec: eventingduckv1.DeliverySpec{}, wantRetries: 0},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			rc, err := kncloudevents.RetryConfigFromDeliverySpec(tc.spec)
			if err != nil {
				t.Fatal(err)
			}
			if rc.RetryMax != tc.wantRetries {
				t.Errorf("RetryMax = %d, want %d", rc.RetryMax, tc.wantRetries)
			}
			for i, want := range tc.wantBackoff {
				if got := rc.Backoff(i+1, nil); got != want {
					t.Errorf("backoff of attempt %d = %v, want %v", i+1, got, want)
				}
			}
		})
	}
	codes := map[int]bool{200: false, 400: false, 401: false, 404: true, 408: true, 409: true, 429: true, 500: true, 502: true, 503: true}
	for code, want := range codes {
		got, _ := kncloudevents.SelectiveRetry(context.Background(), &http.Response{StatusCode: code}, nil)
		if got != want {
			t.Errorf("status %d retried = %v, want %v", code, got, want)
		}
	}
}

// TestConsumerDeliversAndTrims runs a consumer against a real redis-server.
func TestConsumerDeliversAndTrims(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := NewStore(rdb)
	go store.Run(ctx, 2)
	sub := newCapture(t, 202, "")
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	m := metrics.New()
	trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	c := NewConsumer(trig, rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), log, m, ConsumerOptions{Block: 100 * time.Millisecond})
	done := make(chan struct{})
	cctx, stop := context.WithCancel(ctx)
	go func() { _ = c.Run(cctx); close(done) }()

	for i := 0; i < 50; i++ {
		e := cloudevents.NewEvent()
		e.SetID(fmt.Sprint(i))
		e.SetType("t")
		e.SetSource("/s")
		entry, err := EncodeEntry(&e)
		if err != nil {
			t.Fatal(err)
		}
		if _, err := store.Append(ctx, stream, entry.Fields()...); err != nil {
			t.Fatal(err)
		}
	}
	deadline := time.Now().Add(10 * time.Second)
	for len(sub.received()) < 50 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-done
	if n := len(sub.received()); n != 50 {
		t.Fatalf("subscriber received %d events, want 50", n)
	}
	pending, err := rdb.XPending(ctx, stream, trig.Group()).Result()
	if err != nil {
		t.Fatal(err)
	}
	if pending.Count != 0 {
		t.Fatalf("%d entries still pending after delivery; want all acknowledged", pending.Count)
	}
	if _, err := Trim(ctx, rdb, stream); err != nil {
		t.Fatal(err)
	}
	if n := rdb.XLen(ctx, stream).Val(); n > 1 {
		t.Fatalf("stream holds %d entries after every group acknowledged them; want at most 1", n)
	}
}

func TestTrimKeepsPendingEntries(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	stream := StreamKey("ns", "trim")
	for _, g := range []string{"fast", "slow"} {
		if err := EnsureGroup(ctx, rdb, stream, g); err != nil {
			t.Fatal(err)
		}
	}
	var ids []string
	for i := 0; i < 10; i++ {
		id, _ := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventField, "x"}}).Result()
		ids = append(ids, id)
	}
	// fast reads and acknowledges everything; slow reads everything but acknowledges only 4.
	for _, g := range []string{"fast", "slow"} {
		res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "c", Streams: []string{stream, ">"}}).Result()
		if err != nil || len(res[0].Messages) != 10 {
			t.Fatalf("reading as %s: %v", g, err)
		}
	}
	rdb.XAck(ctx, stream, "fast", ids...)
	rdb.XAck(ctx, stream, "slow", ids[:4]...)
	if _, err := Trim(ctx, rdb, stream); err != nil {
		t.Fatal(err)
	}
	msgs, _ := rdb.XRange(ctx, stream, "-", "+").Result()
	if len(msgs) != 6 || msgs[0].ID != ids[4] {
		t.Fatalf("after trim the stream holds %d entries starting at %v; want the 6 still pending in slow, from %s", len(msgs), msgs, ids[4])
	}
}

// TestShutdownHandsBackSlowDeliveries stops a consumer while its subscriber hangs: after the
// grace the delivery is cut off, the entry stays pending for a restart, and nothing is
// dead-lettered.
func TestShutdownHandsBackSlowDeliveries(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	hang := make(chan struct{})
	defer close(hang)
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-hang:
		case <-r.Context().Done():
		}
	}))
	defer sub.Close()
	dls := newCapture(t, 202, "")
	dl := addressable(t, dls.URL)
	trig := &Trigger{Namespace: "ns", Name: "slow", Broker: "b", Subscriber: addressable(t, sub.URL), DeadLetter: &dl,
		ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	e := cloudevents.NewEvent()
	e.SetID("slow-1")
	e.SetType("t")
	e.SetSource("/s")
	data, _ := json.Marshal(e)
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventField, data}}).Err(); err != nil {
		t.Fatal(err)
	}
	c := NewConsumer(trig, rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New(),
		ConsumerOptions{Block: 50 * time.Millisecond, ShutdownGrace: 200 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = c.Run(runCtx); close(done) }()
	for rdb.XPending(ctx, stream, trig.Group()).Val().Count == 0 {
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	select {
	case <-done:
	case <-time.After(20 * time.Second):
		t.Fatal("Run did not return after its shutdown grace")
	}
	if n := rdb.XPending(ctx, stream, trig.Group()).Val().Count; n != 1 {
		t.Fatalf("pending entries after shutdown = %d, want the cut-off delivery still pending", n)
	}
	if n := len(dls.received()); n != 0 {
		t.Fatalf("%d dead letters; a delivery cut off by shutdown must not be dead-lettered", n)
	}
}

// TestBacklogLimitPushesBack fills a broker whose only trigger reads nothing: once the stream
// is over the limit the ingress answers 503, and it accepts again once the trigger caught up.
func TestBacklogLimitPushesBack(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := NewStore(rdb)
	go store.Run(ctx, 1)
	in := NewIngress(store, slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
	in.Add("ns", "b", 0)
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, "trigger:ns/slow"); err != nil {
		t.Fatal(err)
	}
	post := func(id string) int {
		req := httptest.NewRequest("POST", "/ns/b", strings.NewReader(`{}`))
		req.Header.Set("Ce-Id", id)
		req.Header.Set("Ce-Type", "t")
		req.Header.Set("Ce-Source", "/s")
		req.Header.Set("Ce-Specversion", "1.0")
		w := httptest.NewRecorder()
		in.ServeHTTP(w, req)
		return w.Code
	}
	for i := 0; i < 10; i++ {
		if code := post(fmt.Sprint(i)); code != 202 {
			t.Fatalf("event %d answered %d before the limit, want 202", i, code)
		}
	}
	in.maintainOnce(ctx, rdb, 5)
	if code := post("over"); code != 503 {
		t.Fatalf("event over the backlog limit answered %d, want 503", code)
	}
	if n := rdb.XLen(ctx, stream).Val(); n != 10 {
		t.Fatalf("stream holds %d entries; pending events must never be trimmed", n)
	}
	// The trigger catches up: reads and acknowledges everything.
	res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: "trigger:ns/slow", Consumer: "c", Streams: []string{stream, ">"}}).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range res[0].Messages {
		rdb.XAck(ctx, stream, "trigger:ns/slow", m.ID)
	}
	in.maintainOnce(ctx, rdb, 5)
	if code := post("after"); code != 202 {
		t.Fatalf("event after the trigger caught up answered %d, want 202", code)
	}
}

// TestNoDeadLetterSinkDropsAfterRetries follows Knative: without a dead-letter sink, an event
// whose retries are exhausted is acknowledged and counted as dropped, not kept pending.
func TestNoDeadLetterSinkDropsAfterRetries(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	sub := newCapture(t, 500, "no")
	m := metrics.New()
	trig := &Trigger{Namespace: "ns", Name: "nodls", Broker: "b", Subscriber: addressable(t, sub.URL), ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	e := cloudevents.NewEvent()
	e.SetID("x")
	e.SetType("t")
	e.SetSource("/s")
	data, _ := json.Marshal(e)
	rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventField, data}})
	c := NewConsumer(trig, rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), slog.New(slog.NewTextHandler(io.Discard, nil)), m, ConsumerOptions{Block: 50 * time.Millisecond})
	runCtx, stop := context.WithCancel(ctx)
	done := make(chan struct{})
	go func() { _ = c.Run(runCtx); close(done) }()
	deadline := time.Now().Add(10 * time.Second)
	for testutil.ToFloat64(m.EventsDropped.WithLabelValues("ns/b", "ns/nodls")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the failed event was not counted as dropped")
		}
		time.Sleep(10 * time.Millisecond)
	}
	stop()
	<-done
	if n := rdb.XPending(ctx, stream, trig.Group()).Val().Count; n != 0 {
		t.Fatalf("%d entries pending; a dropped event is acknowledged", n)
	}
	if got := testutil.ToFloat64(m.EventsFailed.WithLabelValues("ns/b", "ns/nodls")); got != 0 {
		t.Fatalf("failed = %v; a drop is not a pending failure", got)
	}
}
