package broker

import (
	"context"
	"fmt"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// typedFields is a stream entry holding an event with id and type typ.
func typedFields(t *testing.T, id, typ string) []any {
	t.Helper()
	return paddedFields(t, id, typ, 0)
}

// paddedFields is a stream entry holding an event with id, type typ and size bytes of data.
func paddedFields(t testing.TB, id, typ string, size int) []any {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType(typ)
	e.SetSource("/test")
	if size > 0 {
		if err := e.SetData("text/plain", strings.Repeat("x", size)); err != nil {
			t.Fatal(err)
		}
	}
	entry, err := EncodeEntry(&e)
	if err != nil {
		t.Fatal(err)
	}
	return entry.Fields()
}

// startConsumer runs a consumer for trig until the returned stop is called or the test ends.
func startConsumer(t *testing.T, rdb redis.UniversalClient, trig *Trigger, opts ConsumerOptions) (stop func()) {
	t.Helper()
	if opts.Block == 0 {
		opts.Block = 50 * time.Millisecond
	}
	c := NewConsumer(trig, rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), quietLog(), metrics.New(), opts)
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { _ = c.Run(ctx); close(done) }()
	stopped := false
	stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-done
		}
	}
	t.Cleanup(stop)
	return stop
}

// typeFilter delivers events of type typ.
func typeFilter(typ string) *eventingv1.TriggerFilter {
	return &eventingv1.TriggerFilter{Attributes: eventingv1.TriggerFilterAttributes{"type": typ}}
}

// TestManyTriggersShareTheirConnections: 50 Triggers on one stream deliver through a handful
// of Redis connections, not one blocked connection each (counted on the real redis-server with
// CLIENT LIST, the consumers' client allowed a pool far larger than 50), and Redis sends each
// entry to the runtime about once, not once per Trigger (INFO's total_net_output_bytes).
func TestManyTriggersShareTheirConnections(t *testing.T) {
	const triggers, events, bound, size = 50, 20, 8, 4 << 10
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 500, ClientName: "fanout-consumers"})
	t.Cleanup(func() { _ = rdb.Close() })
	observer := srv.Client()
	ctx := context.Background()
	sub := newRawCapture(t, always(http.StatusOK))
	stream := StreamKey("ns", "b")
	for i := range triggers {
		trig := &Trigger{Namespace: "ns", Name: fmt.Sprint("t", i), Broker: "b", Subscriber: addressable(t, sub.URL+"/"+fmt.Sprint(i)),
			Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
		if i%2 == 1 {
			trig.Filter = TriggerFilter(typeFilter("odd"), nil)
		}
		if err := EnsureGroup(ctx, observer, stream, trig.Group()); err != nil {
			t.Fatal(err)
		}
		startConsumer(t, rdb, trig, ConsumerOptions{})
	}
	// Every consumer has read its (empty) history and waits for new entries.
	eventually(t, "every consumer in its group", func() bool {
		for i := range triggers {
			c, err := observer.XInfoConsumers(ctx, stream, fmt.Sprintf("trigger:ns/t%d", i)).Result()
			if err != nil || len(c) == 0 {
				return false
			}
		}
		return true
	})
	sentBefore := redisStat(t, observer, "stats", "total_net_output_bytes")
	for i := range events {
		observer.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: paddedFields(t, fmt.Sprint("e", i), "even", size)})
	}
	eventually(t, "every event delivered to the 25 matching Triggers", func() bool {
		sub.mu.Lock()
		defer sub.mu.Unlock()
		for i := range events {
			if sub.calls[fmt.Sprint("e", i)] < triggers/2 {
				return false
			}
		}
		return true
	})
	eventually(t, "every group acknowledged everything", func() bool {
		for i := range triggers {
			p, err := observer.XPending(ctx, stream, fmt.Sprintf("trigger:ns/t%d", i)).Result()
			if err != nil || p.Count != 0 {
				return false
			}
		}
		return true
	})
	sent := redisStat(t, observer, "stats", "total_net_output_bytes") - sentBefore
	t.Logf("Redis sent %d bytes for %d entries of %d bytes read by %d groups", sent, events, size, triggers)
	if limit := int64(4 * events * size); sent > limit {
		t.Errorf("Redis sent %d bytes for %d entries of %d bytes, want at most %d: every group's read carries the entries again", sent, events, size, limit)
	}
	list, err := observer.ClientList(ctx).Result()
	if err != nil {
		t.Fatal(err)
	}
	// Idle connections stay in the pool: the count is the most the consumers ever used at once.
	n := strings.Count(list, "name=fanout-consumers ")
	t.Logf("%d Triggers used %d Redis connections", triggers, n)
	if n > bound {
		t.Fatalf("%d Triggers on one stream use %d Redis connections, want at most %d:\n%s", triggers, n, bound, list)
	}
}

// TestTriggersWithFiltersGetTheirEventsOnce: Triggers with different filters on one stream each
// receive exactly the events they match, once each: entries their groups had read before a
// restart and never acknowledged, entries added while they run, and entries added while they
// were stopped. Nothing stays pending in any group. On a real redis-server and on the embedded
// Redis of `knfaas up` (miniredis).
func TestTriggersWithFiltersGetTheirEventsOnce(t *testing.T) {
	for _, backend := range []struct {
		name  string
		start func(t *testing.T) redis.UniversalClient
	}{
		{name: "redis-server", start: func(t *testing.T) redis.UniversalClient { return redistest.Start(t, redistest.Options{}).Client() }},
		{name: "miniredis", start: func(t *testing.T) redis.UniversalClient {
			rdb := redis.NewClient(&redis.Options{Addr: miniredis.RunT(t).Addr()})
			t.Cleanup(func() { _ = rdb.Close() })
			return rdb
		}},
	} {
		t.Run(backend.name, func(t *testing.T) { filtersGetTheirEventsOnce(t, backend.start(t)) })
	}
}

func filtersGetTheirEventsOnce(t *testing.T, rdb redis.UniversalClient) {
	ctx := context.Background()
	stream := StreamKey("ns", "b")
	types := []string{"a", "b", "c"}
	cases := []struct {
		name   string
		filter *eventingv1.TriggerFilter
		match  func(typ string) bool
	}{
		{name: "all", filter: nil, match: func(string) bool { return true }},
		{name: "only-a", filter: typeFilter("a"), match: func(typ string) bool { return typ == "a" }},
		{name: "only-b", filter: typeFilter("b"), match: func(typ string) bool { return typ == "b" }},
		{name: "none", filter: typeFilter("z"), match: func(string) bool { return false }},
	}
	subs := make([]*rawCapture, len(cases))
	trigs := make([]*Trigger, len(cases))
	for i, tc := range cases {
		subs[i] = newRawCapture(t, always(http.StatusOK))
		trigs[i] = &Trigger{Namespace: "ns", Name: tc.name, Broker: "b", Subscriber: addressable(t, subs[i].URL),
			Filter: TriggerFilter(tc.filter, nil), Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
		if err := EnsureGroup(ctx, rdb, stream, trigs[i].Group()); err != nil {
			t.Fatal(err)
		}
	}
	typeOf := map[string]string{}
	add := func(prefix string, n int) {
		for i := range n {
			id := fmt.Sprintf("%s-%d", prefix, i)
			typeOf[id] = types[i%len(types)]
			if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: typedFields(t, id, typeOf[id])}).Err(); err != nil {
				t.Fatal(err)
			}
		}
	}
	// A runtime read these entries in every group and stopped before delivering them.
	add("pending", 12)
	for _, trig := range trigs {
		if err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: trig.Group(), Consumer: ConsumerName, Streams: []string{stream, ">"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	start := func() (stops []func()) {
		for _, trig := range trigs {
			stops = append(stops, startConsumer(t, rdb, trig, ConsumerOptions{}))
		}
		return stops
	}
	// settled waits until each subscriber got every matching event and no group holds anything
	// pending, then checks that none got one twice or one it does not match.
	settled := func(phase string) {
		t.Helper()
		for i, tc := range cases {
			var want []string
			for id, typ := range typeOf {
				if tc.match(typ) {
					want = append(want, id)
				}
			}
			sort.Strings(want)
			eventually(t, phase+": "+tc.name+" receives its events", func() bool { return subs[i].count() >= len(want) })
			eventually(t, phase+": "+tc.name+" acknowledges everything", func() bool {
				p, err := rdb.XPending(ctx, stream, trigs[i].Group()).Result()
				return err == nil && p.Count == 0
			})
			subs[i].mu.Lock()
			var got []string
			for id, n := range subs[i].calls {
				got = append(got, id)
				if n != 1 {
					t.Errorf("%s: %s received %s %d times, want once", phase, tc.name, id, n)
				}
			}
			subs[i].mu.Unlock()
			sort.Strings(got)
			if strings.Join(got, ",") != strings.Join(want, ",") {
				t.Errorf("%s: %s received %v, want %v", phase, tc.name, got, want)
			}
		}
	}
	stops := start()
	add("live", 30)
	settled("running")
	for _, stop := range stops {
		stop()
	}
	add("while-stopped", 9)
	start()
	add("after-restart", 9)
	settled("restarted")
}

// TestASlowTriggerHoldsBackNoOther: a Trigger whose subscriber never answers, with one delivery
// slot, does not hold back another Trigger of the same stream that shares its reader.
func TestASlowTriggerHoldsBackNoOther(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	stream := StreamKey("ns", "b")
	release := make(chan struct{})
	hung := newRawCapture(t, func(string, int) int { <-release; return http.StatusOK })
	t.Cleanup(func() { close(release) })
	fast := newRawCapture(t, always(http.StatusOK))
	for _, tc := range []struct {
		name        string
		sub         *rawCapture
		parallelism int
	}{
		{name: "slow", sub: hung, parallelism: 1},
		{name: "fast", sub: fast, parallelism: 4},
	} {
		trig := &Trigger{Namespace: "ns", Name: tc.name, Broker: "b", Subscriber: addressable(t, tc.sub.URL), Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
		if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
			t.Fatal(err)
		}
		startConsumer(t, rdb, trig, ConsumerOptions{Parallelism: tc.parallelism, ShutdownGrace: 50 * time.Millisecond})
	}
	for i := range 40 {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: typedFields(t, fmt.Sprint("e", i), "t")})
	}
	eventually(t, "the fast Trigger receives all 40 events", func() bool { return fast.count() == 40 })
}

// redisStat reads one integer field of an INFO section.
func redisStat(t *testing.T, rdb *redis.Client, section, field string) int64 {
	t.Helper()
	info, err := rdb.Info(context.Background(), section).Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, err := strconv.ParseInt(v, 10, 64)
			if err != nil {
				t.Fatal(err)
			}
			return n
		}
	}
	t.Fatalf("INFO %s has no %s", section, field)
	return 0
}
