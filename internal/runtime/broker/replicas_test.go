package broker

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// TestConsumerReadsUnderItsName: a consumer reads under ConsumerOptions.Name, or under
// ConsumerName without one, so that dispatcher replicas sharing a group are told apart.
func TestConsumerReadsUnderItsName(t *testing.T) {
	for _, tc := range []struct {
		name, option, want string
	}{
		{name: "default", option: "", want: ConsumerName},
		{name: "pod name", option: "dispatcher-7d9f-abcde", want: "dispatcher-7d9f-abcde"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			rdb := srv.Client()
			sub := newRawCapture(t, always(http.StatusOK))
			trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
			runConsumer(t, rdb, trig, metrics.New(), ConsumerOptions{Name: tc.option})
			stream := StreamKey("ns", "b")
			rdb.XAdd(context.Background(), &redis.XAddArgs{Stream: stream, Values: eventFields(t, "e1")})
			eventually(t, "the delivery", func() bool { return sub.count() == 1 })
			consumers, err := rdb.XInfoConsumers(context.Background(), stream, trig.Group()).Result()
			if err != nil {
				t.Fatal(err)
			}
			if len(consumers) != 1 || consumers[0].Name != tc.want {
				t.Fatalf("group consumers %+v, want exactly %q", consumers, tc.want)
			}
		})
	}
}

// eventFields is a stream entry holding a minimal event with id.
func eventFields(t *testing.T, id string) []any {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType("dev.knfaas.test")
	e.SetSource("/test")
	entry, err := EncodeEntry(&e)
	if err != nil {
		t.Fatal(err)
	}
	return entry.Fields()
}

// TestReplicaClaimsWhatAGoneReplicaLeftPending: replica "a" read entries and vanished without
// acknowledging them; replica "b", under another name in the same group, delivers them after
// RedeliverAfter, besides the entries it reads itself.
func TestReplicaClaimsWhatAGoneReplicaLeftPending(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	sub := newRawCapture(t, always(http.StatusOK))
	trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	for i := range 5 {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: eventFields(t, fmt.Sprint("left-", i))})
	}
	// Replica a reads the five and is gone.
	if _, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: trig.Group(), Consumer: "a", Streams: []string{stream, ">"}}).Result(); err != nil {
		t.Fatal(err)
	}
	runConsumer(t, rdb, trig, metrics.New(), ConsumerOptions{Name: "b", RedeliverAfter: 300 * time.Millisecond})
	for i := range 3 {
		rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: eventFields(t, fmt.Sprint("new-", i))})
	}
	eventually(t, "all eight events delivered by b", func() bool { return sub.count() == 8 })
	eventually(t, "nothing pending", func() bool {
		p, err := rdb.XPending(ctx, stream, trig.Group()).Result()
		return err == nil && p.Count == 0
	})
}

// countTrims counts the trim scripts a client runs (an EVALSHA Redis answered NOSCRIPT ran
// nothing).
type countTrims struct{ n atomic.Int64 }

func (c *countTrims) DialHook(next redis.DialHook) redis.DialHook { return next }
func (c *countTrims) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}
func (c *countTrims) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		args := cmd.Args()
		if len(args) > 1 && (strings.EqualFold(fmt.Sprint(args[0]), "evalsha") && args[1] == trimScript.Hash() ||
			strings.EqualFold(fmt.Sprint(args[0]), "eval") && strings.Contains(fmt.Sprint(args[1]), "XTRIM")) {
			err := next(ctx, cmd)
			if !redis.HasErrorPrefix(err, "NOSCRIPT") {
				c.n.Add(1)
			}
			return err
		}
		return next(ctx, cmd)
	}
}

// TestTrimLease: of ingress replicas sharing trims, only the lease holder trims a stream; the
// lease passes on when its holder stops (released) or vanishes (lapsed), and an ingress that
// does not share trims always trims.
func TestTrimLease(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	ctx := context.Background()
	type replica struct {
		in     *Ingress
		rdb    *redis.Client
		trims  *countTrims
		cancel context.CancelFunc
	}
	newReplica := func(owner string, ttl time.Duration) *replica {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		c := &countTrims{}
		rdb.AddHook(c)
		in := NewIngress(NewStore(rdb), quietLog(), metrics.New())
		in.Add("ns", "b", 0)
		if owner != "" {
			in.ShareTrims(owner, ttl)
		}
		return &replica{in: in, rdb: rdb, trims: c}
	}
	round := func(r *replica) int64 {
		before := r.trims.n.Load()
		r.in.maintainOnce(ctx, r.rdb, 0)
		return r.trims.n.Load() - before
	}
	for _, tc := range []struct {
		name string
		run  func(t *testing.T)
	}{
		{name: "only the holder trims", run: func(t *testing.T) {
			a, b := newReplica("a", time.Minute), newReplica("b", time.Minute)
			for i := range 3 {
				if n := round(a); n != 1 {
					t.Fatalf("round %d: holder a trimmed %d times, want 1", i, n)
				}
				if n := round(b); n != 0 {
					t.Fatalf("round %d: b trimmed %d times while a holds the lease, want 0", i, n)
				}
			}
		}},
		{name: "a stopped holder releases", run: func(t *testing.T) {
			a, b := newReplica("a", time.Minute), newReplica("b", time.Minute)
			runCtx, cancel := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { a.in.Maintain(runCtx, a.rdb, time.Hour, 0); close(done) }()
			eventually(t, "a holds the lease", func() bool {
				return a.rdb.Get(ctx, TrimLeaseKey(StreamKey("ns", "b"))).Val() == "a"
			})
			cancel()
			<-done
			if n := round(b); n != 1 {
				t.Fatalf("b trimmed %d times after a stopped, want 1", n)
			}
		}},
		{name: "a vanished holder's lease lapses", run: func(t *testing.T) {
			a, b := newReplica("a", 200*time.Millisecond), newReplica("b", 200*time.Millisecond)
			round(a)
			if n := round(b); n != 0 {
				t.Fatalf("b trimmed %d times while a holds the lease, want 0", n)
			}
			eventually(t, "b takes over after the ttl", func() bool { return round(b) == 1 })
		}},
		{name: "unshared ingress always trims", run: func(t *testing.T) {
			a, solo := newReplica("a", time.Minute), newReplica("", 0)
			round(a)
			if n := round(solo); n != 1 {
				t.Fatalf("an ingress without ShareTrims trimmed %d times, want 1", n)
			}
		}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv.Client().FlushAll(ctx)
			tc.run(t)
		})
	}
}

// TestExternalGroupsAreNeverCreated: with ExternalGroups a consumer creates no group, neither
// at start nor when its group vanished; it delivers once the owner created it. Without it, a
// missing group is created.
func TestExternalGroupsAreNeverCreated(t *testing.T) {
	for _, tc := range []struct {
		name      string
		external  bool
		wantGroup bool
	}{
		{name: "knfaas up creates its groups", external: false, wantGroup: true},
		{name: "the class controller owns them", external: true, wantGroup: false},
	} {
		t.Run(tc.name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			rdb := srv.Client()
			ctx := context.Background()
			sub := newRawCapture(t, always(http.StatusOK))
			trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
			stream := StreamKey("ns", "b")
			c := NewConsumer(trig, rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), quietLog(), metrics.New(),
				ConsumerOptions{Name: "d-1", ExternalGroups: tc.external, Block: 50 * time.Millisecond})
			runCtx, stop := context.WithCancel(ctx)
			done := make(chan struct{})
			go func() { _ = c.Run(runCtx); close(done) }()
			t.Cleanup(func() { stop(); <-done })
			time.Sleep(300 * time.Millisecond) // several reads
			groups, _ := rdb.XInfoGroups(ctx, stream).Result()
			if got := len(groups) == 1; got != tc.wantGroup {
				t.Fatalf("groups after the consumer ran: %+v; want a group: %v", groups, tc.wantGroup)
			}
			if tc.external {
				if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
					t.Fatal(err)
				}
			}
			rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: eventFields(t, "e1")})
			eventually(t, "the delivery", func() bool { return sub.count() == 1 })
		})
	}
}
