package duequeue

import (
	"context"
	"encoding/json"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// Two layouts, as the functions use them: notify's items are "<message> <endpoint>" with the
// message a string record; mail's are "<id>" with a hash record.
var (
	stringKeys = Keys{Due: "q:due", Tries: "q:tries", Record: "q:msg:", Failing: "q:failing", Counters: "q:counters"}
	hashKeys   = Keys{Due: "h:due", Tries: "h:tries", Record: "h:msg:", RecordFields: []string{"mail", "event"}}
)

var t0 = time.Date(2030, 1, 2, 3, 4, 5, 0, time.UTC)

func TestClaim(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name    string
		keys    Keys
		records map[string]any // key → string or hash fields
		due     map[string]time.Time
		tries   map[string]string
		limit   int
		want    []Claimed
	}{
		{name: "a string record, read by the item's first word", keys: stringKeys,
			records: map[string]any{"q:msg:m1": "event-1"}, due: map[string]time.Time{"m1 ep": t0}, tries: map[string]string{"m1 ep": "2"},
			limit: 10, want: []Claimed{{Item: "m1 ep", Tries: 2, Record: []string{"event-1"}}}},
		{name: "a hash record, its fields in order", keys: hashKeys,
			records: map[string]any{"h:msg:a": map[string]any{"event": "E", "mail": "M", "state": "pending"}}, due: map[string]time.Time{"a": t0},
			limit: 10, want: []Claimed{{Item: "a", Record: []string{"M", "E"}}}},
		{name: "an expired record reads empty", keys: hashKeys, due: map[string]time.Time{"gone": t0},
			limit: 10, want: []Claimed{{Item: "gone", Record: []string{"", ""}}}},
		{name: "an expired string record reads empty", keys: stringKeys, due: map[string]time.Time{"m9 ep": t0},
			limit: 10, want: []Claimed{{Item: "m9 ep", Record: []string{""}}}},
		{name: "only what is due, earliest first, at most limit", keys: stringKeys,
			due:   map[string]time.Time{"m1 a": t0.Add(-time.Second), "m2 a": t0.Add(-2 * time.Second), "m3 a": t0.Add(-3 * time.Second), "m4 a": t0.Add(time.Millisecond)},
			limit: 2, want: []Claimed{{Item: "m3 a", Record: []string{""}}, {Item: "m2 a", Record: []string{""}}}},
		{name: "nothing due", keys: stringKeys, due: map[string]time.Time{"m1 a": t0.Add(time.Minute)}, limit: 10, want: []Claimed{}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := redistest.Start(t, redistest.Options{}).Client()
			for k, v := range tt.records {
				if s, ok := v.(string); ok {
					rdb.Set(ctx, k, s, 0)
				} else {
					rdb.HSet(ctx, k, v)
				}
			}
			for item, at := range tt.due {
				rdb.ZAdd(ctx, tt.keys.Due, redis.Z{Score: float64(at.UnixMilli()), Member: item})
			}
			for item, n := range tt.tries {
				rdb.HSet(ctx, tt.keys.Tries, item, n)
			}
			q := New(rdb, tt.keys, "owner", time.Hour, 4)
			got, err := q.Claim(ctx, t0, 90*time.Second, tt.limit)
			if err != nil {
				t.Fatal(err)
			}
			if !slices.EqualFunc(got, tt.want, func(a, b Claimed) bool {
				return a.Item == b.Item && a.Tries == b.Tries && slices.Equal(a.Record, b.Record)
			}) {
				t.Fatalf("Claim = %+v, want %+v", got, tt.want)
			}
			// Each claimed item is leased: due again when the lease ends, not before.
			for _, c := range got {
				if at, _ := rdb.ZScore(ctx, tt.keys.Due, c.Item).Result(); int64(at) != t0.Add(90*time.Second).UnixMilli() {
					t.Errorf("%s due at %v after the claim, want the lease's end", c.Item, time.UnixMilli(int64(at)))
				}
			}
			again, _ := q.Claim(ctx, t0, 90*time.Second, 100)
			for _, c := range again {
				if slices.ContainsFunc(got, func(g Claimed) bool { return g.Item == c.Item }) {
					t.Errorf("%s claimed again within the lease", c.Item)
				}
			}
			// A claim that took something arms the wake-up for the lease's end.
			w := WakeAt("owner", t0.Add(90*time.Second))
			_, err = rdb.ZScore(ctx, deadline.KeyDeadlines, w.ID).Result()
			if armed := err == nil; armed != (len(got) > 0 || len(again) > 0) {
				t.Errorf("wake-up %s armed %v after claiming %d", w.ID, armed, len(got))
			}
		})
	}
}

func TestFinish(t *testing.T) {
	ctx := context.Background()
	attempt := []byte(`{"attempt":1}`)
	tests := []struct {
		name       string
		scheduled  bool // the item is still in the queue
		noState    bool // its state hash expired
		finish     Finish
		wantDue    bool
		wantTries  string
		wantState  string
		wantLogged int
		wantCount  string // of "ep <counter>"
	}{
		{name: "a failed attempt is due again and counted", scheduled: true,
			finish:  Finish{Outcome: OutcomeRetry, Attempt: attempt, Health: HealthFailed, Counter: "retry"},
			wantDue: true, wantTries: "1", wantState: "pending", wantLogged: 1, wantCount: "1"},
		{name: "a deferral makes no attempt", scheduled: true,
			finish:  Finish{Outcome: OutcomeDefer, Counter: "deferred"},
			wantDue: true, wantState: "pending", wantCount: "1"},
		{name: "delivered: out of the queue, state written", scheduled: true,
			finish:    Finish{Outcome: "delivered", Attempt: attempt, Health: HealthOK, Counter: "delivered"},
			wantState: "delivered", wantLogged: 1, wantCount: "1"},
		{name: "finished after its state expired: no state hash made without a TTL", scheduled: true, noState: true,
			finish:     Finish{Outcome: "dead", Attempt: attempt, Counter: "dead"},
			wantLogged: 1, wantCount: "1"},
		{name: "finished elsewhere after the lease ran out: nothing changes",
			finish:    Finish{Outcome: "delivered", Attempt: attempt, Counter: "delivered"},
			wantState: "pending"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			rdb := redistest.Start(t, redistest.Options{}).Client()
			q := New(rdb, stringKeys, "owner", time.Hour, 4)
			if tt.scheduled {
				rdb.ZAdd(ctx, stringKeys.Due, redis.Z{Score: float64(t0.UnixMilli()), Member: "m1 ep"})
			}
			if !tt.noState {
				rdb.HSet(ctx, "q:state:m1", "ep", "pending")
				rdb.PExpire(ctx, "q:state:m1", time.Hour)
			}
			f := tt.finish
			f.Item, f.Next, f.StateKey, f.StateField, f.AttemptsKey, f.Target, f.Now = "m1 ep", t0.Add(time.Minute), "q:state:m1", "ep", "q:attempts:m1:ep", "ep", t0
			if _, err := q.Finish(ctx, f); err != nil {
				t.Fatal(err)
			}
			at, err := rdb.ZScore(ctx, stringKeys.Due, "m1 ep").Result()
			if due := err == nil; due != tt.wantDue || (due && int64(at) != f.Next.UnixMilli()) {
				t.Errorf("in the queue %v at %v, want %v at %s", due, time.UnixMilli(int64(at)), tt.wantDue, f.Next)
			}
			if tries, _ := rdb.HGet(ctx, stringKeys.Tries, "m1 ep").Result(); tries != tt.wantTries {
				t.Errorf("tries %q, want %q", tries, tt.wantTries)
			}
			if st, _ := rdb.HGet(ctx, "q:state:m1", "ep").Result(); st != tt.wantState {
				t.Errorf("state %q, want %q", st, tt.wantState)
			}
			if ttl, _ := rdb.PTTL(ctx, "q:state:m1").Result(); ttl == -1 {
				t.Error("the state hash has no TTL: it would never expire")
			}
			if n, _ := rdb.LLen(ctx, "q:attempts:m1:ep").Result(); int(n) != tt.wantLogged {
				t.Errorf("%d attempts logged, want %d", n, tt.wantLogged)
			}
			if c, _ := rdb.HGet(ctx, stringKeys.Counters, "ep "+f.Counter).Result(); c != tt.wantCount {
				t.Errorf("counter %q = %q, want %q", "ep "+f.Counter, c, tt.wantCount)
			}
			w := WakeAt("owner", f.Next)
			if _, err := rdb.ZScore(ctx, deadline.KeyDeadlines, w.ID).Result(); (err == nil) != tt.wantDue {
				t.Errorf("wake-up for the next attempt armed %v, want %v", err == nil, tt.wantDue)
			}
		})
	}
}

// TestFinishFailingSince tracks since when a target's attempts fail: the first failure after a
// success sets it, later failures keep it, an answer clears it.
func TestFinishFailingSince(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	q := New(rdb, stringKeys, "owner", time.Hour, 4)
	steps := []struct {
		name   string
		health string
		at     time.Time
		want   time.Time
	}{
		{name: "first failure", health: HealthFailed, at: t0, want: t0},
		{name: "second failure keeps the first's time", health: HealthFailed, at: t0.Add(time.Minute), want: t0},
		{name: "an answer clears it", health: HealthOK, at: t0.Add(2 * time.Minute)},
		{name: "a failure after it starts again", health: HealthFailed, at: t0.Add(3 * time.Minute), want: t0.Add(3 * time.Minute)},
	}
	for _, s := range steps {
		rdb.ZAdd(ctx, stringKeys.Due, redis.Z{Score: float64(t0.UnixMilli()), Member: "m1 ep"})
		failing, err := q.Finish(ctx, Finish{Item: "m1 ep", Outcome: OutcomeRetry, Next: s.at.Add(time.Second), StateKey: "q:state:m1", StateField: "ep",
			Attempt: []byte(`{}`), AttemptsKey: "q:attempts:m1:ep", Target: "ep", Health: s.health, Now: s.at})
		if err != nil || !failing.Equal(s.want) {
			t.Errorf("%s: failing since %v (%v), want %v", s.name, failing, err, s.want)
		}
	}
}

func TestAttemptsLogKeepsTheLast(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	q := New(rdb, hashKeys, "owner", time.Hour, 3)
	for i := 1; i <= 5; i++ {
		rdb.ZAdd(ctx, hashKeys.Due, redis.Z{Score: 0, Member: "a"})
		b, _ := json.Marshal(map[string]int{"attempt": i})
		if _, err := q.Finish(ctx, Finish{Item: "a", Outcome: OutcomeRetry, Next: t0, StateKey: "h:msg:a", StateField: "state", Attempt: b, AttemptsKey: "h:attempts:a"}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := Attempts[struct{ Attempt int }](ctx, rdb, "h:attempts:a")
	if err != nil || len(got) != 3 || got[0].Attempt != 3 || got[2].Attempt != 5 {
		t.Errorf("Attempts = %+v, %v; want attempts 3, 4, 5", got, err)
	}
	if ttl, _ := rdb.PTTL(ctx, "h:attempts:a").Result(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("attempts log TTL %s, want the retention (1h)", ttl)
	}
	rdb.RPush(ctx, "h:attempts:b", "{not json")
	if _, err := Attempts[struct{ Attempt int }](ctx, rdb, "h:attempts:b"); err == nil {
		t.Error("a garbled attempt was read without an error")
	}
}

func TestWakeAt(t *testing.T) {
	tests := []struct {
		name string
		at   time.Time
		want time.Time
	}{
		{name: "on the minute", at: t0.Truncate(time.Minute), want: t0.Truncate(time.Minute)},
		{name: "within a minute: the next", at: t0, want: t0.Truncate(time.Minute).Add(time.Minute)},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			w := WakeAt("mail", tt.at)
			var p deadline.Payload
			if w.Due != tt.want.UnixMilli() || !strings.HasPrefix(w.ID, "mail:wake:") || json.Unmarshal([]byte(w.Payload), &p) != nil || p.Owner != "mail" || p.Due != w.Due {
				t.Errorf("WakeAt(%s) = %+v, want due %s, owner mail", tt.at, w, tt.want)
			}
		})
	}
}

// TestDrainWaitsForAttempts: Drain returns once nothing is due and the attempts the steps
// started have finished, not as soon as the claims are made.
func TestDrainWaitsForAttempts(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	q := New(rdb, hashKeys, "owner", time.Hour, 3)
	var done atomic.Int32
	var loop *Loop
	loop = NewLoop(q, func(ctx context.Context) (int, error) {
		claimed, err := q.Claim(ctx, time.Now(), time.Minute, 2)
		for _, c := range claimed {
			loop.Go(func() {
				time.Sleep(100 * time.Millisecond)
				if _, err := q.Finish(ctx, Finish{Item: c.Item, Outcome: "delivered", StateKey: "h:msg:" + c.Item, StateField: "state"}); err == nil {
					done.Add(1)
				}
			})
		}
		return len(claimed), err
	}, LoopOptions{Poll: time.Hour, Batch: 2, Log: "test", Items: "items"})
	for _, item := range []string{"a", "b", "c", "d", "e"} {
		rdb.ZAdd(ctx, hashKeys.Due, redis.Z{Score: float64(time.Now().UnixMilli()), Member: item})
	}
	runCtx, cancel := context.WithCancel(ctx)
	stopped := make(chan struct{})
	go func() { defer close(stopped); loop.Run(runCtx) }()
	dctx, dcancel := context.WithTimeout(ctx, 30*time.Second)
	defer dcancel()
	if err := loop.Drain(dctx); err != nil {
		t.Fatal(err)
	}
	if n := done.Load(); n != 5 || loop.Running() != 0 {
		t.Errorf("Drain returned with %d of 5 attempts done, %d running", n, loop.Running())
	}
	cancel()
	<-stopped
}

// TestFinishWhileRedisIsFrozen: an attempt's outcome is recorded once a frozen Redis (SIGSTOP)
// resumes when Finish may try again until the lease's end; without RetryUntil it gives up at
// the first error (the item stays leased and is due again when the lease runs out).
func TestFinishWhileRedisIsFrozen(t *testing.T) {
	ctx := context.Background()
	tests := []struct {
		name     string
		retry    time.Duration // RetryUntil from now; 0: none
		recorded bool
	}{
		{name: "retried until Redis is back", retry: time.Minute, recorded: true},
		{name: "no retry", recorded: false},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), ReadTimeout: 300 * time.Millisecond, WriteTimeout: 300 * time.Millisecond})
			defer rdb.Close()
			q := New(rdb, hashKeys, "owner", time.Hour, 3)
			rdb.ZAdd(ctx, hashKeys.Due, redis.Z{Score: 0, Member: "a"})
			rdb.HSet(ctx, "h:msg:a", "state", "pending")
			srv.Stop()
			done := make(chan error, 1)
			go func() {
				f := Finish{Item: "a", Outcome: "delivered", StateKey: "h:msg:a", StateField: "state", Attempt: []byte(`{}`), AttemptsKey: "h:attempts:a"}
				if tt.retry > 0 {
					f.RetryUntil = time.Now().Add(tt.retry)
				}
				_, err := q.Finish(ctx, f)
				done <- err
			}()
			var err error
			if tt.recorded {
				time.Sleep(time.Second) // several attempts fail while Redis is frozen
				srv.Cont()
				err = <-done
			} else {
				err = <-done // returns while Redis is still frozen
				srv.Cont()
			}
			if (err == nil) != tt.recorded {
				t.Fatalf("Finish = %v, want recorded %v", err, tt.recorded)
			}
			if st, _ := rdb.HGet(ctx, "h:msg:a", "state").Result(); tt.recorded && st != "delivered" {
				t.Errorf("state %q after Finish returned, want delivered", st)
			}
		})
	}
}

func TestCounters(t *testing.T) {
	ctx := context.Background()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	q := New(rdb, stringKeys, "owner", time.Hour, 4)
	for _, c := range []struct{ target, counter string }{{"a", "retry"}, {"a", "retry"}, {"a", "delivered"}, {"b", "deferred"}, {"b", ""}} {
		rdb.ZAdd(ctx, stringKeys.Due, redis.Z{Score: 0, Member: "m " + c.target})
		if _, err := q.Finish(ctx, Finish{Item: "m " + c.target, Outcome: OutcomeDefer, Next: t0, StateKey: "q:state:m", StateField: c.target, Target: c.target, Counter: c.counter}); err != nil {
			t.Fatal(err)
		}
	}
	got, err := q.Counters(ctx)
	if err != nil || len(got) != 2 || got["a"]["retry"] != 2 || got["a"]["delivered"] != 1 || got["b"]["deferred"] != 1 || len(got["b"]) != 1 {
		t.Errorf("Counters = %v, %v; want a: retry 2, delivered 1; b: deferred 1", got, err)
	}
	none, err := New(rdb, hashKeys, "owner", time.Hour, 4).Counters(ctx)
	if err != nil || len(none) != 0 {
		t.Errorf("Counters of a queue that keeps none = %v, %v", none, err)
	}
}
