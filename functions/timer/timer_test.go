package main

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/http/httptest"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

var t0 = time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)

type capture struct {
	mu     sync.Mutex
	ids    []string
	failID string
}

func (c *capture) send(_ context.Context, e event.Event) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if e.ID() == c.failID {
		return errors.New("broker down")
	}
	c.ids = append(c.ids, e.ID())
	return nil
}

func (c *capture) take() []string {
	c.mu.Lock()
	defer c.mu.Unlock()
	out := c.ids
	c.ids = nil
	sort.Strings(out)
	return out
}

func setup(t testing.TB, now time.Time) (*Function, *capture, *redis.Client) {
	srv := redistest.Start(t, redistest.Options{})
	c := &capture{}
	f := New()
	f.now = func() time.Time { return now }
	f.start(Config{Batch: 3, Concurrency: 4}, srv.Client(), c.send)
	return f, c, srv.Client()
}

func schedule(t testing.TB, rdb *redis.Client, id string, due time.Time) {
	if err := deadline.Schedule(context.Background(), rdb, id, deadline.Payload{Subject: "inst-" + id, Command: id, Owner: "process", Due: due.UnixMilli()}); err != nil {
		t.Fatal(err)
	}
}

func ping(slot time.Time) event.Event {
	e := cloudevents.NewEvent()
	e.SetID("ping-" + slot.Format(time.RFC3339))
	e.SetType(TypePing)
	e.SetSource("/apis/v1/namespaces/knfaas/pingsources/timer-ping")
	e.SetTime(slot)
	return e
}

func TestTick(t *testing.T) {
	f, c, rdb := setup(t, t0.Add(3*time.Minute))
	for i, due := range []time.Duration{-3 * time.Hour, -time.Minute, 0, 30 * time.Second, 90 * time.Second, 2 * time.Hour} {
		schedule(t, rdb, fmt.Sprintf("d%d", i), t0.Add(due))
	}
	// extra overdue ones so the catch-up spans several batches (Batch is 3)
	for i := range 5 {
		schedule(t, rdb, fmt.Sprintf("old%d", i), t0.Add(-24*time.Hour))
	}
	steps := []struct {
		name string
		slot time.Time
		want string
	}{
		{"tick at 12:00 fires the overdue (catch-up) and the due", t0, "[d0 d1 d2 old0 old1 old2 old3 old4]"},
		{"the same tick delivered again fires nothing", t0, "[]"},
		{"12:01 fires what fell due within the minute", t0.Add(time.Minute), "[d3]"},
		{"an older tick delivered late fires nothing", t0, "[]"},
		{"12:02", t0.Add(2 * time.Minute), "[d4]"},
		{"12:03", t0.Add(3 * time.Minute), "[]"},
	}
	for _, s := range steps {
		if _, err := f.Handle(context.Background(), ping(s.slot)); err != nil {
			t.Fatalf("%s: %v", s.name, err)
		}
		if got := fmt.Sprint(c.take()); got != s.want {
			t.Errorf("%s: fired %s, want %s", s.name, got, s.want)
		}
	}
	if n := rdb.ZCard(context.Background(), deadline.KeyDeadlines).Val(); n != 1 {
		t.Errorf("%d deadlines pending, want 1 (d5, due in 2h)", n)
	}
}

func TestSlotTimeNeverAfterNow(t *testing.T) {
	f, c, rdb := setup(t, t0)
	schedule(t, rdb, "soon", t0.Add(30*time.Second))
	if _, err := f.Handle(context.Background(), ping(t0.Add(time.Minute))); err != nil {
		t.Fatal(err)
	}
	if got := c.take(); len(got) != 0 {
		t.Errorf("a tick stamped in the future fired %v before its time", got)
	}
}

func TestFailedSendIsFiredByTheNextTick(t *testing.T) {
	f, c, rdb := setup(t, t0)
	schedule(t, rdb, "a", t0.Add(-time.Second))
	schedule(t, rdb, "b", t0.Add(-time.Second))
	c.failID = "b"
	if _, err := f.Handle(context.Background(), ping(t0)); err == nil {
		t.Fatal("a failed send must fail the tick so the broker retries it")
	}
	if got := fmt.Sprint(c.take()); got != "[a]" {
		t.Errorf("first tick sent %s", got)
	}
	c.failID = ""
	if _, err := f.Handle(context.Background(), ping(t0)); err != nil {
		t.Fatal(err)
	}
	if got := fmt.Sprint(c.take()); got != "[b]" {
		t.Errorf("retried tick sent %s, want [b] only", got)
	}
	if n := rdb.HLen(context.Background(), deadline.KeyOutbox).Val(); n != 0 {
		t.Errorf("outbox holds %d after all were sent", n)
	}
}

func TestFiredEvent(t *testing.T) {
	e := FiredEvent(deadline.Fired{ID: "o1:pay:1:deadline", Raw: `{"due":1}`, Payload: deadline.Payload{Subject: "o1", Command: "o1:pay:1", Owner: "food-process", Due: 1}})
	ext := e.Extensions()
	if e.ID() != "o1:pay:1:deadline" || e.Type() != deadline.TypeFired || e.Subject() != "o1" || ext["knfaasowner"] != "food-process" || ext["knfaascommand"] != "o1:pay:1" {
		t.Errorf("fired event = %v", e)
	}
	if err := e.Validate(); err != nil {
		t.Errorf("fired event invalid: %v", err)
	}
}

func TestRefusesOtherEvents(t *testing.T) {
	f, _, _ := setup(t, t0)
	e := ping(t0)
	e.SetType("com.example.other")
	_, err := f.Handle(context.Background(), e)
	var r *cehttp.Result
	if !errors.As(err, &r) || r.StatusCode != http.StatusBadRequest {
		t.Errorf("Handle(other type) = %v, want 400", err)
	}
}

// BenchmarkTick100k fires 100,000 due deadlines in one tick through Handle, sending over HTTP to
// a local sink, beside the raw Redis work (Take + Ack of the same batches, no sending).
func BenchmarkTick100k(b *testing.B) {
	const pending = 100_000
	srv := redistest.Start(b, redistest.Options{})
	rdb := srv.Client()
	var received atomic.Int64
	hs := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		received.Add(1)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer hs.Close()
	s, err := sink.New(hs.URL, 0)
	if err != nil {
		b.Fatal(err)
	}
	fill := func() {
		b.StopTimer()
		rdb.FlushAll(context.Background())
		for i := 0; i < pending; i += 1000 {
			_, err := rdb.Pipelined(context.Background(), func(p redis.Pipeliner) error {
				for j := i; j < i+1000; j++ {
					id := fmt.Sprintf("inst-%d:step:1:deadline", j)
					p.ZAdd(context.Background(), deadline.KeyDeadlines, redis.Z{Score: float64(t0.UnixMilli() - int64(j)), Member: id})
					p.HSet(context.Background(), deadline.KeyPayloads, id, fmt.Sprintf(`{"subject":"inst-%d","command":"inst-%d:step:1","owner":"process","due":%d}`, j, j, t0.UnixMilli()))
				}
				return nil
			})
			if err != nil {
				b.Fatal(err)
			}
		}
		b.StartTimer()
	}
	var raw, full time.Duration
	for b.Loop() {
		fill()
		start := time.Now()
		for {
			batch, err := deadline.Take(context.Background(), rdb, t0, 1000)
			if err != nil {
				b.Fatal(err)
			}
			ids := make([]string, len(batch))
			for i, d := range batch {
				ids[i] = d.ID
			}
			if err := deadline.Ack(context.Background(), rdb, ids...); err != nil {
				b.Fatal(err)
			}
			if len(batch) < 1000 {
				break
			}
		}
		raw += time.Since(start)

		fill()
		f := New()
		f.now = func() time.Time { return t0 }
		f.start(Config{Batch: 1000, Concurrency: 64}, rdb, s.Send)
		start = time.Now()
		n, err := f.Tick(context.Background(), t0)
		full += time.Since(start)
		if err != nil || n != pending {
			b.Fatalf("Tick fired %d (%v), want %d", n, err, pending)
		}
	}
	runs := float64(b.N)
	b.ReportMetric(pending*runs/full.Seconds(), "fired/s")
	b.ReportMetric(pending*runs/raw.Seconds(), "raw-redis/s")
	b.ReportMetric(full.Seconds()/runs, "s/tick")
	b.ReportMetric(raw.Seconds()/full.Seconds(), "ratio-vs-raw")
}

// TestStartReadsConfiguration: an unset TIMER_* variable takes its tag's default; a bad value
// stops Start with an error naming the variable (so main exits non-zero) instead of being
// replaced by the default, as it was.
func TestStartReadsConfiguration(t *testing.T) {
	defaults := Config{Batch: 1000, Concurrency: 64, SendTimeout: 10 * time.Second, Sink: "http://127.0.0.1:1"}
	withBatch := func(n int) Config { c := defaults; c.Batch = n; return c }
	tests := map[string]struct {
		env  map[string]string
		want Config // the configuration started with; the zero Config when Start must fail
		err  string // what the error says; "" when Start must succeed
	}{
		"unset":                   {want: defaults},
		"batch at MaxBatch":       {env: map[string]string{"TIMER_BATCH": "2000"}, want: withBatch(MaxBatch)},
		"batch one":               {env: map[string]string{"TIMER_BATCH": "1"}, want: withBatch(1)},
		"batch not a number":      {env: map[string]string{"TIMER_BATCH": "many"}, err: "TIMER_BATCH"},
		"batch zero":              {env: map[string]string{"TIMER_BATCH": "0"}, err: "TIMER_BATCH (0) must be from 1 to 2000"},
		"batch negative":          {env: map[string]string{"TIMER_BATCH": "-5"}, err: "TIMER_BATCH (-5) must be from 1 to 2000"},
		"batch above MaxBatch":    {env: map[string]string{"TIMER_BATCH": "2001"}, err: "TIMER_BATCH (2001) must be from 1 to 2000"},
		"batch absurd":            {env: map[string]string{"TIMER_BATCH": "1000000000"}, err: "TIMER_BATCH (1000000000) must be from 1 to 2000"},
		"concurrency zero":        {env: map[string]string{"TIMER_CONCURRENCY": "0"}, err: "TIMER_CONCURRENCY (0) must be at least 1"},
		"concurrency not number":  {env: map[string]string{"TIMER_CONCURRENCY": "lots"}, err: "TIMER_CONCURRENCY"},
		"send timeout zero":       {env: map[string]string{"TIMER_SEND_TIMEOUT": "0s"}, err: "TIMER_SEND_TIMEOUT (0s) must be positive"},
		"send timeout negative":   {env: map[string]string{"TIMER_SEND_TIMEOUT": "-1s"}, err: "TIMER_SEND_TIMEOUT (-1s) must be positive"},
		"send timeout not a time": {env: map[string]string{"TIMER_SEND_TIMEOUT": "10"}, err: "TIMER_SEND_TIMEOUT"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			env := map[string]string{"K_SINK": defaults.Sink, "REDIS_URL": "redis://127.0.0.1:1"}
			maps.Copy(env, tc.env)
			for k, v := range env {
				t.Setenv(k, v)
			}
			f := New()
			err := f.Start(context.Background(), nil)
			defer f.Stop(context.Background())
			got := fmt.Sprint(err)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("Start = %v, want it to start with %+v", err, tc.want)
			case tc.err != "" && !strings.Contains(got, tc.err):
				t.Fatalf("Start = %v, want an error saying %q", err, tc.err)
			case f.cfg != tc.want:
				t.Errorf("started with %+v, want %+v", f.cfg, tc.want)
			}
		})
	}
}
