package broker

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math/rand"
	"net"
	"net/http"
	"net/http/httptest"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/ptr"

	"github.com/knfaas/knfaas/internal/function/eventsize"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// rawCapture records the exact bodies it receives, by ce-id, and answers with status(id).
type rawCapture struct {
	*httptest.Server
	mu     sync.Mutex
	bodies map[string][]byte
	calls  map[string]int
}

func newRawCapture(t *testing.T, status func(id string, call int) int) *rawCapture {
	c := &rawCapture{bodies: map[string][]byte{}, calls: map[string]int{}}
	c.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		id := r.Header.Get("Ce-Id")
		c.mu.Lock()
		c.calls[id]++
		call := c.calls[id]
		c.bodies[id] = body
		c.mu.Unlock()
		w.WriteHeader(status(id, call))
	}))
	t.Cleanup(c.Close)
	return c
}

func (c *rawCapture) body(id string) ([]byte, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	b, ok := c.bodies[id]
	return b, ok
}

func (c *rawCapture) count() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return len(c.bodies)
}

func always(code int) func(string, int) int { return func(string, int) int { return code } }

func quietLog() *slog.Logger { return slog.New(slog.NewTextHandler(io.Discard, nil)) }

// runConsumer runs a consumer for trig until the test ends.
func runConsumer(t *testing.T, rdb redis.UniversalClient, trig *Trigger, m *metrics.Runtime, opts ConsumerOptions) {
	t.Helper()
	if err := EnsureGroup(context.Background(), rdb, StreamKey(trig.Namespace, trig.Broker), trig.Group()); err != nil {
		t.Fatal(err)
	}
	if opts.Block == 0 {
		opts.Block = 50 * time.Millisecond
	}
	c := NewConsumer(trig, rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), quietLog(), m, opts)
	ctx, stop := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	t.Cleanup(func() { stop(); <-done })
}

// eventually polls cond until it holds; the deadline only bounds a broken test's run time.
func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// randomJSON writes a JSON value with random whitespace between tokens and strings full of
// HTML characters and escapes, the bytes json.Marshal would rewrite.
func randomJSON(r *rand.Rand, depth int) string {
	ws := func() string { return []string{"", " ", "  ", "\n", "\t", "\r\n  "}[r.Intn(6)] }
	str := func() string {
		parts := []string{"<", ">", "&", "a", "é", `\u003c`, `\"`, `\\`, "&amp;", " ", "\u2028", "😀"}
		var b strings.Builder
		b.WriteByte('"')
		for i := r.Intn(8); i > 0; i-- {
			b.WriteString(parts[r.Intn(len(parts))])
		}
		b.WriteByte('"')
		return b.String()
	}
	if depth > 2 {
		return str()
	}
	switch r.Intn(5) {
	case 0:
		var items []string
		for i := r.Intn(4); i > 0; i-- {
			items = append(items, ws()+str()+ws()+":"+ws()+randomJSON(r, depth+1)+ws())
		}
		return "{" + strings.Join(items, ",") + ws() + "}"
	case 1:
		var items []string
		for i := r.Intn(4); i > 0; i-- {
			items = append(items, ws()+randomJSON(r, depth+1)+ws())
		}
		return "[" + strings.Join(items, ",") + "]"
	case 2:
		return []string{"1.50", "-0", "1e3", "12345678901234567890", "0.1000"}[r.Intn(5)]
	case 3:
		return []string{"true", "false", "null"}[r.Intn(3)]
	}
	return str()
}

func randomText(r *rand.Rand) string {
	runes := []rune("abc <>&\"'\\\n\té€😀\u0000\u2028")
	var b strings.Builder
	for i := r.Intn(64); i > 0; i-- {
		b.WriteRune(runes[r.Intn(len(runes))])
	}
	return b.String()
}

// sentEvent is one request to the ingress and the data bytes it carries.
type sentEvent struct {
	id   string
	req  *http.Request
	data []byte
}

// randomEvent builds a request in binary or structured mode with random data of a random kind.
func randomEvent(r *rand.Rand, id string, structured bool) sentEvent {
	var contentType string
	var data []byte
	kind := r.Intn(3)
	switch kind {
	case 0:
		contentType, data = "application/json", []byte(randomJSON(r, 0))
		if !structured && r.Intn(2) == 0 {
			data = append(data, '\n') // a trailing newline is part of a binary-mode body
		}
	case 1:
		contentType, data = "text/plain; charset=utf-8", []byte(randomText(r))
	default:
		contentType = "application/octet-stream"
		data = make([]byte, r.Intn(512))
		r.Read(data)
	}
	if !structured {
		req := httptest.NewRequest(http.MethodPost, "/ns/b", bytes.NewReader(data))
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", id)
		req.Header.Set("Ce-Type", "t")
		req.Header.Set("Ce-Source", "/s")
		req.Header.Set("Content-Type", contentType)
		return sentEvent{id: id, req: req, data: data}
	}
	envelope := `{"specversion":"1.0","id":"` + id + `","type":"t","source":"/s","datacontenttype":"` + contentType + `",`
	switch kind {
	case 0:
		// The whitespace after the colon belongs to the envelope; the value is the data.
		envelope += `"data":` + []string{"", " ", "\n  "}[r.Intn(3)] + string(data)
	case 1:
		s, _ := json.Marshal(string(data)) // escapes <, >, &: the decoded string is the data
		envelope += `"data": ` + string(s)
	default:
		envelope += `"data_base64": "` + base64.StdEncoding.EncodeToString(data) + `"`
	}
	envelope += "}"
	req := httptest.NewRequest(http.MethodPost, "/ns/b", strings.NewReader(envelope))
	req.Header.Set("Content-Type", "application/cloudevents+json")
	return sentEvent{id: id, req: req, data: data}
}

// TestDataArrivesByteForByte is a property test: random bodies (JSON with whitespace and HTML
// characters, text, random bytes) sent in binary and structured mode arrive at the subscriber,
// and at a dead-letter sink, exactly as sent.
func TestDataArrivesByteForByte(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := NewStore(rdb)
	go store.Run(ctx, 2)
	m := metrics.New()
	in := NewIngress(store, quietLog(), m)
	in.Add("ns", "b", 0)

	sub := newRawCapture(t, always(http.StatusAccepted))
	failing := newRawCapture(t, always(http.StatusBadRequest))
	dls := newRawCapture(t, always(http.StatusAccepted))
	dl := addressable(t, dls.URL)
	runConsumer(t, rdb, &Trigger{Namespace: "ns", Name: "ok", Broker: "b", Subscriber: addressable(t, sub.URL),
		ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}, m, ConsumerOptions{})
	runConsumer(t, rdb, &Trigger{Namespace: "ns", Name: "dl", Broker: "b", Subscriber: addressable(t, failing.URL), DeadLetter: &dl,
		ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}, m, ConsumerOptions{})

	r := rand.New(rand.NewSource(10))
	var sent []sentEvent
	for i := 0; i < 200; i++ {
		structured := i%2 == 1
		e := randomEvent(r, fmt.Sprint("e-", i), structured)
		w := httptest.NewRecorder()
		in.ServeHTTP(w, e.req)
		if w.Code != http.StatusAccepted {
			t.Fatalf("event %s (structured %v) answered %d: %s", e.id, structured, w.Code, w.Body)
		}
		sent = append(sent, e)
	}
	eventually(t, "every event delivered and dead-lettered", func() bool { return sub.count() == len(sent) && dls.count() == len(sent) })
	for _, e := range sent {
		for who, c := range map[string]*rawCapture{"subscriber": sub, "dead-letter sink": dls} {
			got, _ := c.body(e.id)
			if !bytes.Equal(got, e.data) {
				t.Errorf("%s: %s received %q, sent %q", e.id, who, got, e.data)
			}
		}
	}
}

// TestVersion1EntriesAreStillDelivered: entries written by an earlier release (one field "e"
// holding the whole event as JSON) and still pending after an upgrade are delivered.
func TestVersion1EntriesAreStillDelivered(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	sub := newRawCapture(t, always(http.StatusAccepted))
	trig := &Trigger{Namespace: "ns", Name: "old", Broker: "b", Subscriber: addressable(t, sub.URL), ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	e := cloudevents.NewEvent()
	e.SetID("v1")
	e.SetType("t")
	e.SetSource("/s")
	_ = e.SetData("application/json", []byte(`{"a":1}`))
	old, _ := json.Marshal(e) // what the earlier ingress stored
	if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{"e", old}}).Err(); err != nil {
		t.Fatal(err)
	}
	runConsumer(t, rdb, trig, metrics.New(), ConsumerOptions{})
	eventually(t, "the version 1 entry delivered", func() bool { return sub.count() == 1 })
	if got, _ := sub.body("v1"); string(got) != `{"a":1}` {
		t.Fatalf("subscriber received %q", got)
	}
	eventually(t, "the version 1 entry acknowledged", func() bool { return rdb.XPending(ctx, stream, trig.Group()).Val().Count == 0 })
}

// countingReader yields n bytes and counts what was read.
type countingReader struct {
	n, read int64
}

func (c *countingReader) Read(p []byte) (int, error) {
	if c.read >= c.n {
		return 0, io.EOF
	}
	k := int64(len(p))
	if k > c.n-c.read {
		k = c.n - c.read
	}
	for i := range p[:k] {
		p[i] = 'x'
	}
	c.read += k
	return int(k), nil
}

// TestIngressRefusesEventsNoSubscriberCanReceive: oversized attributes and events are refused
// with a 4xx naming the attribute or the bound; nothing is stored for them.
func TestIngressRefusesEventsNoSubscriberCanReceive(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := NewStore(rdb)
	go store.Run(ctx, 1)
	in := NewIngress(store, quietLog(), metrics.New())
	in.Add("ns", "b", 0)
	in.Add("ns", "small", 2000)

	binary := func(broker string, headers map[string]string, body io.Reader) *http.Request {
		req := httptest.NewRequest(http.MethodPost, "/ns/"+broker, body)
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Id", "1")
		req.Header.Set("Ce-Type", "t")
		req.Header.Set("Ce-Source", "/s")
		req.Header.Set("Content-Type", "application/octet-stream")
		for k, v := range headers {
			req.Header.Set(k, v)
		}
		return req
	}
	structured := func(broker, extra string) *http.Request {
		req := httptest.NewRequest(http.MethodPost, "/ns/"+broker, strings.NewReader(`{"specversion":"1.0","id":"1","type":"t","source":"/s"`+extra+`}`))
		req.Header.Set("Content-Type", "application/cloudevents+json")
		return req
	}
	big := strings.Repeat("x", 1200_000)
	attr := strings.Repeat("y", eventsize.MaxAttributeValueBytes-100)
	var many strings.Builder
	for i := 0; i < 5; i++ {
		fmt.Fprintf(&many, `,"ext%d":"%s"`, i, attr)
	}
	huge := &countingReader{n: 100 << 20}
	tests := map[string]struct {
		req      *http.Request
		want     int
		wantText string
	}{
		"1.2 MB extension, structured":                     {req: structured("b", `,"poison":"`+big+`"`), want: 400, wantText: `attribute "poison"`},
		"5 KB extension, binary":                           {req: binary("b", map[string]string{"Ce-Poison": attr + strings.Repeat("z", 200)}, nil), want: 400, wantText: `attribute "poison"`},
		"subject over the bound":                           {req: structured("b", `,"subject":"`+attr+strings.Repeat("z", 200)+`"`), want: 400, wantText: `attribute "subject"`},
		"attributes over the total":                        {req: structured("b", many.String()), want: 400, wantText: "attributes are"},
		"data over the broker's max, binary":               {req: binary("small", nil, strings.NewReader(strings.Repeat("d", 2001))), want: 413, wantText: "ns/small accepts events of at most 2000 bytes"},
		"event over the broker's max, attributes and data": {req: binary("small", nil, strings.NewReader(strings.Repeat("d", 1990))), want: 413, wantText: "ns/small accepts events of at most 2000 bytes"},
		"structured over the broker's max":                 {req: structured("small", `,"datacontenttype":"text/plain","data":"`+strings.Repeat("d", 2100)+`"`), want: 413, wantText: "at most 2000 bytes"},
		"100 MB body":                                      {req: binary("b", nil, huge), want: 413, wantText: "max-event-bytes"},
		"under the broker's max":                           {req: binary("small", nil, strings.NewReader(strings.Repeat("d", 1800))), want: 202},
		"attributes at the bound":                          {req: structured("b", `,"ok":"`+attr+`"`), want: 202},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := rdb.XLen(ctx, StreamKey("ns", "b")).Val() + rdb.XLen(ctx, StreamKey("ns", "small")).Val()
			w := httptest.NewRecorder()
			in.ServeHTTP(w, tc.req)
			if w.Code != tc.want || !strings.Contains(w.Body.String(), tc.wantText) {
				t.Fatalf("answered %d %q, want %d naming %q", w.Code, w.Body, tc.want, tc.wantText)
			}
			after := rdb.XLen(ctx, StreamKey("ns", "b")).Val() + rdb.XLen(ctx, StreamKey("ns", "small")).Val()
			if stored := after - before; (tc.want == 202) != (stored == 1) {
				t.Fatalf("%d entries stored for an event answered %d", stored, w.Code)
			}
		})
	}
	if huge.read > eventsize.DefaultMaxEventBytes+64<<10 {
		t.Fatalf("the ingress read %d bytes of a 100 MB body; it must stop at the broker's max (%d)", huge.read, eventsize.DefaultMaxEventBytes)
	}
}

func TestParseMaxEventBytes(t *testing.T) {
	tests := map[string]struct {
		in   string
		want int64
		bad  bool
	}{
		"bytes":            {in: "1048576", want: 1 << 20},
		"quantity":         {in: "512Ki", want: 512 << 10},
		"the default":      {in: "4Mi", want: eventsize.DefaultMaxEventBytes},
		"over the default": {in: "5Mi", bad: true},
		"zero":             {in: "0", bad: true},
		"negative":         {in: "-1", bad: true},
		"not a number":     {in: "lots", bad: true},
		"fraction":         {in: "0.5", bad: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ParseMaxEventBytes(tc.in)
			if tc.bad != (err != nil) || got != tc.want {
				t.Fatalf("ParseMaxEventBytes(%q) = %d, %v; want %d (error: %v)", tc.in, got, err, tc.want, tc.bad)
			}
		})
	}
}

func TestMaxEventBytesOf(t *testing.T) {
	tests := map[string]struct {
		annotations map[string]string
		want        int64
		wantErr     string
	}{
		"no annotation": {want: eventsize.DefaultMaxEventBytes},
		"lowered":       {annotations: map[string]string{MaxEventBytesAnnotation: "64Ki"}, want: 64 << 10},
		"bad value":     {annotations: map[string]string{MaxEventBytesAnnotation: "big"}, wantErr: "metadata.annotations[knfaas.dev/max-event-bytes]: \"big\""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := MaxEventBytesOf(tc.annotations)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want one naming %s", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("MaxEventBytesOf = %d, %v; want %d", got, err, tc.want)
			}
		})
	}
}

// fakeParker records parked events; fail makes Park fail while it is true.
type fakeParker struct {
	mu     sync.Mutex
	parked []Parked
	calls  int
	fail   bool
}

func (f *fakeParker) Park(_ context.Context, p Parked) error {
	f.mu.Lock()
	defer f.mu.Unlock()
	f.calls++
	if f.fail {
		return errors.New("parked-event store unavailable")
	}
	f.parked = append(f.parked, p)
	return nil
}

func (f *fakeParker) state() (calls int, parked []Parked) {
	f.mu.Lock()
	defer f.mu.Unlock()
	return f.calls, append([]Parked(nil), f.parked...)
}

func (f *fakeParker) setFail(v bool) {
	f.mu.Lock()
	f.fail = v
	f.mu.Unlock()
}

// postBinary stores an event through the ingress.
func postBinary(t *testing.T, in *Ingress, id string, headers map[string]string, data string) {
	t.Helper()
	req := httptest.NewRequest(http.MethodPost, "/ns/b", strings.NewReader(data))
	req.Header.Set("Ce-Specversion", "1.0")
	req.Header.Set("Ce-Id", id)
	req.Header.Set("Ce-Type", "t")
	req.Header.Set("Ce-Source", "/s")
	req.Header.Set("Content-Type", "application/json")
	for k, v := range headers {
		req.Header.Set(k, v)
	}
	w := httptest.NewRecorder()
	in.ServeHTTP(w, req)
	if w.Code != http.StatusAccepted {
		t.Fatalf("posting %s answered %d: %s", id, w.Code, w.Body)
	}
}

// TestPoisonEventIsParked: an event both the subscriber and the dead-letter sink refuse every
// time is parked after MaxRounds rounds with the last answers, acknowledged and trimmed; the
// events after it are delivered.
func TestPoisonEventIsParked(t *testing.T) {
	for name, dlsStatus := range map[string]int{"dead-letter sink fails": 500, "dead-letter store full": 503} {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			rdb := srv.Client()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			store := NewStore(rdb)
			go store.Run(ctx, 1)
			m := metrics.New()
			in := NewIngress(store, quietLog(), m)
			in.Add("ns", "b", 0)
			sub := newRawCapture(t, func(id string, _ int) int {
				if id == "poison" {
					return http.StatusRequestHeaderFieldsTooLarge
				}
				return http.StatusAccepted
			})
			dls := newRawCapture(t, always(dlsStatus))
			dl := addressable(t, dls.URL)
			parker := &fakeParker{}
			trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), DeadLetter: &dl,
				ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}
			runConsumer(t, rdb, trig, m, ConsumerOptions{RedeliverAfter: 100 * time.Millisecond, MaxRounds: 3, Parker: parker})

			postBinary(t, in, "poison", map[string]string{"Ce-Big": "x"}, `{"a" : "<b>"}`)
			for i := 0; i < 5; i++ {
				postBinary(t, in, fmt.Sprint("after-", i), nil, `{}`)
			}
			eventually(t, "the poison event parked", func() bool { _, p := parker.state(); return len(p) == 1 })
			eventually(t, "the later events delivered", func() bool { return sub.count() == 6 })
			stream := StreamKey("ns", "b")
			eventually(t, "everything acknowledged", func() bool { return rdb.XPending(ctx, stream, trig.Group()).Val().Count == 0 })

			_, parked := parker.state()
			p := parked[0]
			if p.Reason != ParkUndeliverable || p.Rounds != 3 || p.Trigger != "ns/t" || p.Broker != "ns/b" {
				t.Errorf("parked %+v; want reason %s after 3 rounds on ns/t", p, ParkUndeliverable)
			}
			if p.SubscriberCode != 431 || p.DeadLetterCode != dlsStatus || p.SubscriberURL != sub.URL || p.DeadLetterURL != dls.URL {
				t.Errorf("parked with subscriber %s %d, dead-letter sink %s %d; want the last answers 431 and %d", p.SubscriberURL, p.SubscriberCode, p.DeadLetterURL, p.DeadLetterCode, dlsStatus)
			}
			if p.Event == nil || p.Event.ID() != "poison" || string(p.Event.Data()) != `{"a" : "<b>"}` || p.Entry["d"] != `{"a" : "<b>"}` || p.EntryID == "" {
				t.Errorf("parked event %v, entry %v; want the event with its data intact", p.Event, p.Entry)
			}
			if got := testutil.ToFloat64(m.EventsParked.WithLabelValues("ns/b", "ns/t", ParkUndeliverable)); got != 1 {
				t.Errorf("parked metric = %v, want 1", got)
			}
			if got := testutil.ToFloat64(m.DeadLetterFailures.WithLabelValues("ns/b", "ns/t", fmt.Sprint(dlsStatus))); got != 3 {
				t.Errorf("dead-letter failures with code %d = %v, want 3", dlsStatus, got)
			}
			eventually(t, "the round counter dropped", func() bool { return rdb.HLen(ctx, RoundsKey(stream, trig.Group())).Val() == 0 })
			if _, err := Trim(ctx, rdb, stream); err != nil {
				t.Fatal(err)
			}
			if msgs := rdb.XRange(ctx, stream, p.EntryID, p.EntryID).Val(); len(msgs) != 0 {
				t.Fatalf("the parked entry is still in the stream after trim")
			}
		})
	}
}

// TestParkingFailureKeepsTheEventPending: while Park fails (or there is no Parker) the entry
// stays pending; once Park succeeds it is acknowledged.
func TestParkingFailureKeepsTheEventPending(t *testing.T) {
	for name, withParker := range map[string]bool{"park fails": true, "no parker": false} {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			rdb := srv.Client()
			ctx := context.Background()
			sub := newRawCapture(t, always(http.StatusBadRequest))
			dls := newRawCapture(t, always(http.StatusInternalServerError))
			dl := addressable(t, dls.URL)
			parker := &fakeParker{fail: true}
			opts := ConsumerOptions{RedeliverAfter: 100 * time.Millisecond, MaxRounds: 2}
			if withParker {
				opts.Parker = parker
			}
			trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), DeadLetter: &dl,
				ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}
			stream := StreamKey("ns", "b")
			if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
				t.Fatal(err)
			}
			e := cloudevents.NewEvent()
			e.SetID("stuck")
			e.SetType("t")
			e.SetSource("/s")
			entry, _ := EncodeEntry(&e)
			rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: entry.Fields()})
			m := metrics.New()
			runConsumer(t, rdb, trig, m, opts)
			rounds := func() float64 { return testutil.ToFloat64(m.EventsFailed.WithLabelValues("ns/b", "ns/t")) }
			eventually(t, "rounds past the maximum", func() bool { return rounds() >= 4 })
			if n := rdb.XPending(ctx, stream, trig.Group()).Val().Count; n != 1 {
				t.Fatalf("%d entries pending; an event that could not be parked must stay pending", n)
			}
			if got := testutil.ToFloat64(m.EventsParked.WithLabelValues("ns/b", "ns/t", ParkUndeliverable)); got != 0 {
				t.Fatalf("parked metric = %v while parking failed", got)
			}
			if !withParker {
				return
			}
			if calls, _ := parker.state(); calls < 2 {
				t.Fatalf("Park called %d times; a failed park is retried on later rounds", calls)
			}
			parker.setFail(false)
			eventually(t, "the event parked once Park succeeds", func() bool { return rdb.XPending(ctx, stream, trig.Group()).Val().Count == 0 })
		})
	}
}

// TestUndecodableEntriesAreParked: entries no event can be read from are parked with their raw
// fields, never acknowledged silently.
func TestUndecodableEntriesAreParked(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	sub := newRawCapture(t, always(http.StatusAccepted))
	parker := &fakeParker{}
	trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), ReplyURL: "http://127.0.0.1:1/ns/b", Retry: kncloudevents.NoRetries()}
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	entries := map[string][]any{
		"no event field":          {"x", "y"},
		"version 1, not an event": {"e", "not json"},
		"unknown version":         {"v", "9", "a", "{}", "d", "\x00\xff"},
	}
	want := map[string]map[string]string{}
	for name, fields := range entries {
		id := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: fields}).Val()
		want[id] = asStrings(asStored(fields))
		_ = name
	}
	m := metrics.New()
	runConsumer(t, rdb, trig, m, ConsumerOptions{Parker: parker})
	eventually(t, "every undecodable entry parked", func() bool { _, p := parker.state(); return len(p) == len(entries) })
	eventually(t, "parked entries acknowledged", func() bool { return rdb.XPending(ctx, stream, trig.Group()).Val().Count == 0 })
	_, parked := parker.state()
	for _, p := range parked {
		if p.Reason != ParkUndecodable || p.Event != nil || p.Detail == "" {
			t.Errorf("parked %+v; want reason %s with a detail", p, ParkUndecodable)
		}
		if !reflect.DeepEqual(p.Entry, want[p.EntryID]) {
			t.Errorf("parked entry %s holds %v, stored %v", p.EntryID, p.Entry, want[p.EntryID])
		}
	}
	if got := testutil.ToFloat64(m.EventsParked.WithLabelValues("ns/b", "ns/t", ParkUndecodable)); got != 3 {
		t.Fatalf("parked metric = %v, want 3", got)
	}
	if sub.count() != 0 {
		t.Fatalf("the subscriber received %d undecodable entries", sub.count())
	}
}

func asStrings(in map[string]any) map[string]string {
	out := map[string]string{}
	for k, v := range in {
		out[k] = fmt.Sprint(v)
	}
	return out
}

// TestRetriedCountsSubscriberDeliveries: knfaas_trigger_events_retried_total counts deliveries
// to the subscriber that needed more than one attempt, once each; retries of replies and dead
// letters are not counted.
func TestRetriedCountsSubscriberDeliveries(t *testing.T) {
	linear := eventingduckv1.BackoffPolicyLinear
	retry, err := kncloudevents.RetryConfigFromDeliverySpec(eventingduckv1.DeliverySpec{Retry: ptr.Int32(2), BackoffPolicy: &linear, BackoffDelay: ptr.String("PT0.01S")})
	if err != nil {
		t.Fatal(err)
	}
	replyEvent := func(w http.ResponseWriter) {
		w.Header().Set("Ce-Specversion", "1.0")
		w.Header().Set("Ce-Id", "reply")
		w.Header().Set("Ce-Type", "reply")
		w.Header().Set("Ce-Source", "/r")
		w.WriteHeader(http.StatusOK)
	}
	tests := map[string]struct {
		subscriber  func(call int, w http.ResponseWriter)
		replyStatus int
		dlsStatus   int
		want        float64
	}{
		"first attempt succeeds": {subscriber: func(int, http.ResponseWriter) {}, want: 0},
		"second attempt succeeds": {subscriber: func(call int, w http.ResponseWriter) {
			if call == 1 {
				w.WriteHeader(http.StatusServiceUnavailable)
			}
		}, want: 1},
		"every attempt fails, dead-lettered": {subscriber: func(_ int, w http.ResponseWriter) { w.WriteHeader(http.StatusInternalServerError) }, dlsStatus: 202, want: 1},
		"not retryable, dead-letter sink retried": {subscriber: func(_ int, w http.ResponseWriter) { w.WriteHeader(http.StatusBadRequest) },
			dlsStatus: 503, want: 0},
		"reply forwarding retried": {subscriber: func(_ int, w http.ResponseWriter) { replyEvent(w) }, replyStatus: 503, dlsStatus: 202, want: 0},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			rdb := srv.Client()
			ctx := context.Background()
			var mu sync.Mutex
			calls := 0
			sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				mu.Lock()
				calls++
				call := calls
				mu.Unlock()
				tc.subscriber(call, w)
			}))
			defer sub.Close()
			replies := newRawCapture(t, always(tc.replyStatus))
			trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL),
				ReplyURL: replies.URL + "/ns/b", Retry: retry}
			if tc.dlsStatus != 0 {
				dls := newRawCapture(t, always(tc.dlsStatus))
				dl := addressable(t, dls.URL)
				trig.DeadLetter = &dl
			}
			e := cloudevents.NewEvent()
			e.SetID("r")
			e.SetType("t")
			e.SetSource("/s")
			entry, _ := EncodeEntry(&e)
			stream := StreamKey("ns", "b")
			if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
				t.Fatal(err)
			}
			rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: entry.Fields()})
			m := metrics.New()
			runConsumer(t, rdb, trig, m, ConsumerOptions{RedeliverAfter: time.Hour, Parker: &fakeParker{}})
			done := func() float64 {
				return testutil.ToFloat64(m.EventsDelivered.WithLabelValues("ns/b", "ns/t")) +
					testutil.ToFloat64(m.EventsDeadLettered.WithLabelValues("ns/b", "ns/t")) +
					testutil.ToFloat64(m.EventsFailed.WithLabelValues("ns/b", "ns/t"))
			}
			eventually(t, "the delivery finished", func() bool { return done() == 1 })
			if got := testutil.ToFloat64(m.EventsRetried.WithLabelValues("ns/b", "ns/t")); got != tc.want {
				t.Fatalf("retried = %v, want %v", got, tc.want)
			}
		})
	}
}

// triggerSnapshot describes every field reachable from t, pointed-to values and the identity of
// functions included, so that any write through t shows as a difference.
func triggerSnapshot(t *Trigger) string {
	fn := func(f any) uintptr {
		v := reflect.ValueOf(f)
		if !v.IsValid() || v.IsNil() {
			return 0
		}
		return v.Pointer()
	}
	deref := func(p any) string {
		v := reflect.ValueOf(p)
		if v.IsNil() {
			return "<nil>"
		}
		return fmt.Sprintf("%+v", v.Elem().Interface())
	}
	dl := "<nil>"
	if t.DeadLetter != nil {
		dl = fmt.Sprintf("%+v url=%s", *t.DeadLetter, t.DeadLetter.URL)
	}
	r := t.Retry
	return fmt.Sprintf("%s/%s broker=%s filter=%v sub=%+v url=%s dl=%s reply=%s retry{max=%d delay=%s policy=%s check=%x backoff=%x timeout=%s after=%s}",
		t.Namespace, t.Name, t.Broker, t.Filter, t.Subscriber, t.Subscriber.URL, dl, t.ReplyURL,
		r.RetryMax, deref(r.BackoffDelay), deref(r.BackoffPolicy), fn(r.CheckRetry), fn(r.Backoff), r.RequestTimeout, deref(r.RetryAfterMaxDuration))
}

// TestNewConsumerLeavesItsInputAlone: neither NewConsumer nor the consumer's deliveries (with
// retries and dead-lettering) write to the Trigger they were given; the consumer works on its
// own copy.
func TestNewConsumerLeavesItsInputAlone(t *testing.T) {
	linear := eventingduckv1.BackoffPolicyLinear
	retry, err := kncloudevents.RetryConfigFromDeliverySpec(eventingduckv1.DeliverySpec{Retry: ptr.Int32(1), BackoffPolicy: &linear, BackoffDelay: ptr.String("PT0.01S")})
	if err != nil {
		t.Fatal(err)
	}
	tests := map[string]struct {
		deliver bool // run the consumer through a failing delivery that is dead-lettered
	}{
		"constructed":                          {},
		"after a retried, dead-lettered event": {deliver: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			sub := newRawCapture(t, always(http.StatusInternalServerError))
			dls := newRawCapture(t, always(http.StatusAccepted))
			dl := addressable(t, dls.URL)
			trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), DeadLetter: &dl,
				ReplyURL: "http://127.0.0.1:1/ns/b", Retry: retry}
			before := triggerSnapshot(trig)
			if !tc.deliver {
				NewConsumer(trig, nil, nil, quietLog(), metrics.New(), ConsumerOptions{})
			} else {
				srv := redistest.Start(t, redistest.Options{})
				rdb := srv.Client()
				m := metrics.New()
				runConsumer(t, rdb, trig, m, ConsumerOptions{RedeliverAfter: time.Hour})
				e := cloudevents.NewEvent()
				e.SetID("i")
				e.SetType("t")
				e.SetSource("/s")
				entry, _ := EncodeEntry(&e)
				rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: StreamKey("ns", "b"), Values: entry.Fields()})
				eventually(t, "the event was dead-lettered", func() bool {
					return testutil.ToFloat64(m.EventsDeadLettered.WithLabelValues("ns/b", "ns/t")) == 1
				})
			}
			if after := triggerSnapshot(trig); after != before {
				t.Fatalf("the caller's Trigger changed:\nbefore %s\nafter  %s", before, after)
			}
		})
	}
}

// TestIngressAnswersASlowBody408AndCloses: a body that does not arrive within the server's read
// timeout gets 408 and the connection is closed, so it can hold nothing; nothing is stored.
func TestIngressAnswersASlowBody408AndCloses(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := NewStore(rdb)
	go store.Run(ctx, 1)
	in := NewIngress(store, quietLog(), metrics.New())
	in.Add("ns", "b", 0)
	hs := httptest.NewUnstartedServer(in)
	hs.Config.ReadTimeout = 300 * time.Millisecond
	hs.Start()
	defer hs.Close()

	for name, body := range map[string]string{"binary": "{\"slow\": 1", "structured": `{"specversion":"1.0","id":"1","type":"t","source":"/s","data":`} {
		t.Run(name, func(t *testing.T) {
			conn, err := net.Dial("tcp", hs.Listener.Addr().String())
			if err != nil {
				t.Fatal(err)
			}
			defer conn.Close()
			ctype := "application/json\r\nCe-Specversion: 1.0\r\nCe-Id: 1\r\nCe-Type: t\r\nCe-Source: /s"
			if name == "structured" {
				ctype = "application/cloudevents+json"
			}
			fmt.Fprintf(conn, "POST /ns/b HTTP/1.1\r\nHost: x\r\nContent-Type: %s\r\nContent-Length: 1000\r\n\r\n%s", ctype, body)
			_ = conn.SetReadDeadline(time.Now().Add(30 * time.Second))
			resp, err := http.ReadResponse(bufio.NewReader(conn), nil)
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != http.StatusRequestTimeout || !resp.Close {
				t.Fatalf("slow body: %d (close %v), want 408 with the connection closed", resp.StatusCode, resp.Close)
			}
		})
	}
	if n := rdb.XLen(ctx, StreamKey("ns", "b")).Val(); n != 0 {
		t.Fatalf("%d entries stored for slow bodies", n)
	}
}
