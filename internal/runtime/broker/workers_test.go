package broker

import (
	"bytes"
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"runtime"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// goroutineID is the id of the calling goroutine, read from its stack trace's header.
func goroutineID() int64 {
	buf := make([]byte, 64)
	buf = buf[:runtime.Stack(buf, false)]
	buf = bytes.TrimPrefix(buf, []byte("goroutine "))
	id, err := strconv.ParseInt(string(buf[:bytes.IndexByte(buf, ' ')]), 10, 64)
	if err != nil {
		panic(fmt.Sprintf("no goroutine id in %q: %v", buf, err))
	}
	return id
}

// workerGoroutines counts the goroutines running a delivery worker, of any consumer.
func workerGoroutines() int {
	buf := make([]byte, 1<<20)
	for {
		n := runtime.Stack(buf, true)
		if n < len(buf) {
			return bytes.Count(buf[:n], []byte("broker.(*Consumer).work("))
		}
		buf = make([]byte, 2*len(buf))
	}
}

// workerWatch records, through a consumer's test hook, the workers it started and the most
// that were live at once, and in its subscriber's retry check (called by the dispatcher on the
// delivering goroutine) the goroutines deliveries ran on.
type workerWatch struct {
	started atomic.Int64
	mu      sync.Mutex
	peak    int
	on      map[int64]int // deliveries per goroutine id
}

func (w *workerWatch) workerStarted(live int) {
	w.started.Add(1)
	w.mu.Lock()
	w.peak = max(w.peak, live)
	w.mu.Unlock()
}

func (w *workerWatch) delivering() {
	id := goroutineID()
	w.mu.Lock()
	w.on[id]++
	w.mu.Unlock()
}

func (w *workerWatch) goroutines() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return len(w.on)
}

func (w *workerWatch) peakLive() int {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.peak
}

// workerRig is a consumer on a real redis-server whose subscriber answers 202 after hold,
// watched by a workerWatch.
type workerRig struct {
	rdb       *redis.Client
	stream    string
	c         *Consumer
	watch     *workerWatch
	delivered atomic.Int64
	inHandler atomic.Int64
	stop      func()
	done      chan struct{}
}

// startWorkerRig starts the rig's consumer; hold, when set, runs in the subscriber's handler
// before it answers, with the request's context and the number of requests in the handler
// including this one.
func startWorkerRig(t *testing.T, opts ConsumerOptions, idleFor time.Duration, hold func(ctx context.Context, inHandler int64)) *workerRig {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	r := &workerRig{rdb: srv.Client(), stream: StreamKey("ns", "b"), watch: &workerWatch{on: map[int64]int{}}, done: make(chan struct{})}
	sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		n := r.inHandler.Add(1)
		if hold != nil {
			hold(req.Context(), n)
		}
		r.inHandler.Add(-1)
		r.delivered.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(sub.Close)
	retry := kncloudevents.NoRetries()
	check := retry.CheckRetry
	retry.CheckRetry = func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		r.watch.delivering()
		return check(ctx, resp, err)
	}
	trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), Retry: retry, ReplyURL: "http://127.0.0.1:1/ns/b"}
	if err := EnsureGroup(context.Background(), r.rdb, r.stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	if opts.Block == 0 {
		opts.Block = 50 * time.Millisecond
	}
	r.c = NewConsumer(trig, r.rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), quietLog(), metrics.New(), opts)
	r.c.onWorkerStart = r.watch.workerStarted
	if idleFor > 0 {
		r.c.workerIdle = idleFor
	}
	ctx, cancel := context.WithCancel(context.Background())
	go func() { _ = r.c.Run(ctx); close(r.done) }()
	stopped := false
	r.stop = func() {
		if !stopped {
			stopped = true
			cancel()
			<-r.done
		}
	}
	t.Cleanup(r.stop)
	return r
}

// publish adds n events to the stream in one pipeline.
func (r *workerRig) publish(t *testing.T, prefix string, n int) {
	t.Helper()
	pipe := r.rdb.Pipeline()
	for i := range n {
		pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: r.stream, Values: typedFields(t, fmt.Sprint(prefix, i), "t")})
	}
	if _, err := pipe.Exec(context.Background()); err != nil {
		t.Fatal(err)
	}
}

func (r *workerRig) liveWorkers() int {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	return r.c.live
}

func (r *workerRig) idleWorkers() int {
	r.c.mu.Lock()
	defer r.c.mu.Unlock()
	return len(r.c.idle)
}

// TestDeliveriesReuseTheirWorker delivers events one after another: every delivery runs on
// the goroutine of the first, where a goroutine per delivery grew a fresh stack each time.
func TestDeliveriesReuseTheirWorker(t *testing.T) {
	for _, tc := range []struct {
		name        string
		parallelism int
		events      int
	}{
		{"one slot", 1, 5},
		{"many slots", DefaultParallelism, 5},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startWorkerRig(t, ConsumerOptions{Parallelism: tc.parallelism}, 0, nil)
			for i := range tc.events {
				r.publish(t, fmt.Sprint("e", i, "-"), 1)
				// The next event comes once every worker is idle again (a worker is idle only
				// after the subscriber's answer), as in a steady flow with gaps.
				eventually(t, fmt.Sprintf("delivery %d and no worker busy", i+1), func() bool {
					return r.delivered.Load() == int64(i+1) && r.idleWorkers() == r.liveWorkers()
				})
			}
			if n := r.watch.goroutines(); n != 1 {
				t.Errorf("%d deliveries ran on %d goroutines, want all on one", tc.events, n)
			}
			if n := r.watch.started.Load(); n != 1 {
				t.Errorf("%d workers started for %d deliveries one after another, want 1", n, tc.events)
			}
		})
	}
}

// TestWorkersStayWithinTheSlots sends bursts larger than the slots for deliveries in flight:
// the subscriber holds its requests until every slot is taken, so a burst needs as many
// workers as there are slots, and never more are live.
func TestWorkersStayWithinTheSlots(t *testing.T) {
	for _, tc := range []struct {
		name        string
		parallelism int
		bursts      int
	}{
		{"one slot", 1, 3},
		{"four slots", 4, 3},
		{"sixteen slots", 16, 3},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var once sync.Once
			full := make(chan struct{})
			var peakInHandler atomic.Int64
			// Workers idle for an hour: none exits between bursts, so every start is counted
			// against the slots.
			r := startWorkerRig(t, ConsumerOptions{Parallelism: tc.parallelism}, time.Hour, func(_ context.Context, n int64) {
				for p := peakInHandler.Load(); n > p && !peakInHandler.CompareAndSwap(p, n); p = peakInHandler.Load() {
				}
				if n == int64(tc.parallelism) {
					once.Do(func() { close(full) })
				}
				<-full
			})
			events := 5 * tc.parallelism
			for b := range tc.bursts {
				r.publish(t, fmt.Sprint("b", b, "-"), events)
				eventually(t, fmt.Sprintf("burst %d delivered", b+1), func() bool { return r.delivered.Load() == int64((b+1)*events) })
			}
			if p := peakInHandler.Load(); p != int64(tc.parallelism) {
				t.Fatalf("at most %d deliveries were in flight at once, want the %d slots filled", p, tc.parallelism)
			}
			if p := r.watch.peakLive(); p > tc.parallelism {
				t.Errorf("%d workers live at once for %d slots", p, tc.parallelism)
			}
			if n := r.watch.started.Load(); n > int64(tc.parallelism) {
				t.Errorf("%d workers started for %d slots, and none exited", n, tc.parallelism)
			}
		})
	}
}

// TestIdleWorkersExit: once deliveries stop, the workers exit after their idle time and the
// consumer holds no delivery goroutine; the next event starts a worker again.
func TestIdleWorkersExit(t *testing.T) {
	const parallelism = 4
	var once sync.Once
	full := make(chan struct{})
	r := startWorkerRig(t, ConsumerOptions{Parallelism: parallelism}, 200*time.Millisecond, func(_ context.Context, n int64) {
		if n == parallelism {
			once.Do(func() { close(full) })
		}
		<-full
	})
	r.publish(t, "burst-", 2*parallelism)
	eventually(t, "the burst delivered", func() bool { return r.delivered.Load() == 2*parallelism })
	// A burst filling the slots needs a worker per slot (more when one exits in a gap of the
	// burst longer than the idle time).
	burstWorkers := r.watch.started.Load()
	if burstWorkers < parallelism {
		t.Fatalf("%d workers started for a burst filling %d slots", burstWorkers, parallelism)
	}
	eventually(t, "the idle workers to exit", func() bool { return r.liveWorkers() == 0 && workerGoroutines() == 0 })
	r.publish(t, "later-", 1)
	eventually(t, "the later event delivered", func() bool { return r.delivered.Load() == 2*parallelism+1 })
	if n := r.watch.started.Load(); n != burstWorkers+1 {
		t.Fatalf("%d workers started in all, want one more than the burst's %d for the event after they exited", n, burstWorkers)
	}
}

// TestRunLeavesNoWorkers stops consumers whose workers are idle, busy, or cut off after the
// shutdown grace: when Run returns, every worker is retired, and their goroutines end. The
// workers' idle time is an hour, so that only Run can have ended them.
func TestRunLeavesNoWorkers(t *testing.T) {
	for _, tc := range []struct {
		name string
		// hold is how long the subscriber takes to answer, unless the delivery is cut off.
		hold  time.Duration
		grace time.Duration
		// busy: stop while deliveries are in flight.
		busy bool
		// pending is the number of entries left pending after Run: the deliveries cut off.
		pending  int64
		parallel int
	}{
		{name: "idle", hold: 0, grace: time.Second, parallel: 4},
		{name: "busy within the grace", hold: 300 * time.Millisecond, grace: 10 * time.Second, busy: true, parallel: 4},
		{name: "cut off after the grace", hold: time.Minute, grace: 100 * time.Millisecond, busy: true, pending: 4, parallel: 4},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := startWorkerRig(t, ConsumerOptions{Parallelism: tc.parallel, ShutdownGrace: tc.grace}, time.Hour, func(ctx context.Context, _ int64) {
				select {
				case <-time.After(tc.hold):
				case <-ctx.Done():
				}
			})
			r.publish(t, "e", tc.parallel)
			if tc.busy {
				eventually(t, "deliveries in flight", func() bool { return r.inHandler.Load() == int64(tc.parallel) })
			} else {
				eventually(t, "deliveries done", func() bool { return r.delivered.Load() == int64(tc.parallel) })
			}
			if n := workerGoroutines(); n == 0 {
				t.Fatal("no worker goroutine while the consumer runs; the test would prove nothing")
			}
			r.stop()
			// Run waits for the workers, each retired before it signals that it ended.
			if n := r.liveWorkers(); n != 0 {
				t.Errorf("%d workers counted live after Run returned", n)
			}
			// A retired worker's goroutine may still be returning when Run returns.
			eventually(t, "no worker goroutine left", func() bool { return workerGoroutines() == 0 })
			pending := r.rdb.XPending(context.Background(), r.stream, r.c.t.Group()).Val().Count
			if pending != tc.pending {
				t.Errorf("%d entries pending after Run returned, want %d", pending, tc.pending)
			}
		})
	}
}
