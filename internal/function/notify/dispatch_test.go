package notify

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// receiver is a webhook endpoint that answers what answer says for each request.
type receiver struct {
	*httptest.Server
	mu     sync.Mutex
	got    []*http.Request
	bodies []string
	answer func(n int, w http.ResponseWriter)
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter)) *receiver {
	r := &receiver{answer: answer}
	r.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		body, _ := io.ReadAll(req.Body)
		r.mu.Lock()
		r.got = append(r.got, req)
		r.bodies = append(r.bodies, string(body))
		n := len(r.got)
		r.mu.Unlock()
		if r.answer == nil {
			w.WriteHeader(http.StatusNoContent)
			return
		}
		r.answer(n, w)
	}))
	t.Cleanup(r.Close)
	return r
}

func (r *receiver) count() int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return len(r.got)
}

func (r *receiver) requests() ([]*http.Request, []string) {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*http.Request(nil), r.got...), append([]string(nil), r.bodies...)
}

func status(code int) func(int, http.ResponseWriter) {
	return func(_ int, w http.ResponseWriter) { w.WriteHeader(code) }
}

type fixture struct {
	rdb   *redis.Client
	store *Store
	dead  *deadletter.Store
	d     *Dispatcher
}

func endpoint(name, url string, concurrency int) *Endpoint {
	return &Endpoint{Name: name, URL: url, Types: []string{"*"}, Timeout: 2 * time.Second, Concurrency: concurrency,
		Headers: map[string]string{"X-Tenant": "t1"}, Signer: NewSigner([]byte("0123456789abcdef0123"))}
}

func start(t *testing.T, schedule Schedule, eps ...*Endpoint) *fixture {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	f := &fixture{rdb: rdb, store: NewStore(rdb, time.Hour), dead: deadletter.NewStore(rdb, deadletter.Options{})}
	f.d = NewDispatcher(f.store, f.dead, eps, Options{Schedule: schedule, Poll: 10 * time.Millisecond})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func newEvent(id string) event.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/test")
	e.SetType("com.example.order.created")
	e.SetSubject("order-" + id)
	_ = e.SetData("application/json", []byte(`{ "id" : "`+id+`" }`))
	return e
}

func (f *fixture) enqueue(t *testing.T, e event.Event, redriveTo string, eps ...string) []string {
	t.Helper()
	_, added, err := f.store.Enqueue(context.Background(), e, eps, redriveTo, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.d.Wake()
	return added
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(10 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting until %s", what)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

func (f *fixture) state(t *testing.T, e event.Event, ep string) string {
	st, err := f.store.States(context.Background(), MessageID(e.Source(), e.ID()))
	if err != nil {
		t.Fatal(err)
	}
	return st[ep]
}

func TestDeliveredOnceSignedByteForByte(t *testing.T) {
	rcv := newReceiver(t, nil)
	f := start(t, Schedule{10 * time.Millisecond}, endpoint("a", rcv.URL, 4))
	e := newEvent("1")
	if added := f.enqueue(t, e, "", "a"); len(added) != 1 {
		t.Fatalf("added %v", added)
	}
	eventually(t, "delivered", func() bool { return f.state(t, e, "a") == StateDelivered })
	// The same event again (a Broker redelivery) and a redrive naming the endpoint send nothing.
	if added := f.enqueue(t, e, "", "a"); len(added) != 0 {
		t.Errorf("redelivery added %v", added)
	}
	if added := f.enqueue(t, e, "a", "a"); len(added) != 0 {
		t.Errorf("redrive of a delivered pair added %v", added)
	}
	time.Sleep(100 * time.Millisecond)
	reqs, bodies := rcv.requests()
	if len(reqs) != 1 {
		t.Fatalf("%d requests, want 1", len(reqs))
	}
	h := reqs[0].Header
	checks := map[string][2]string{
		"body":          {bodies[0], `{ "id" : "1" }`},
		"content type":  {h.Get("Content-Type"), "application/json"},
		"webhook-id":    {h.Get(HeaderID), MessageID("/test", "1")},
		"ce-type":       {h.Get("ce-type"), "com.example.order.created"},
		"ce-subject":    {h.Get("ce-subject"), "order-1"},
		"custom header": {h.Get("X-Tenant"), "t1"},
	}
	for name, c := range checks {
		if c[0] != c[1] {
			t.Errorf("%s = %q, want %q", name, c[0], c[1])
		}
	}
	ts := h.Get(HeaderTimestamp)
	want := NewSigner([]byte("0123456789abcdef0123")).Sign(h.Get(HeaderID), parseUnix(t, ts), []byte(bodies[0]))
	if h.Get(HeaderSignature) != want {
		t.Errorf("signature %q, want %q", h.Get(HeaderSignature), want)
	}
	attempts, err := f.store.Attempts(context.Background(), MessageID("/test", "1"), "a")
	if err != nil || len(attempts) != 1 || attempts[0].Outcome != OutcomeDelivered || attempts[0].Status != 204 || attempts[0].Number != 1 {
		t.Errorf("attempts = %+v, %v", attempts, err)
	}
}

func parseUnix(t *testing.T, s string) time.Time {
	var sec int64
	for _, c := range s {
		if c < '0' || c > '9' {
			t.Fatalf("timestamp %q", s)
		}
		sec = sec*10 + int64(c-'0')
	}
	return time.Unix(sec, 0)
}

func TestRetriesKeepTheWebhookID(t *testing.T) {
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n < 3 {
			w.WriteHeader(http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	f := start(t, Schedule{10 * time.Millisecond, 10 * time.Millisecond, 10 * time.Millisecond}, endpoint("a", rcv.URL, 4))
	e := newEvent("2")
	f.enqueue(t, e, "", "a")
	eventually(t, "delivered", func() bool { return f.state(t, e, "a") == StateDelivered })
	reqs, _ := rcv.requests()
	if len(reqs) != 3 {
		t.Fatalf("%d requests, want 3", len(reqs))
	}
	for i, r := range reqs {
		if r.Header.Get(HeaderID) != MessageID("/test", "2") {
			t.Errorf("attempt %d: webhook-id %q", i+1, r.Header.Get(HeaderID))
		}
	}
	attempts, _ := f.store.Attempts(context.Background(), MessageID("/test", "2"), "a")
	var outcomes []string
	for _, a := range attempts {
		outcomes = append(outcomes, a.Outcome)
	}
	if strings.Join(outcomes, ",") != "retry,retry,delivered" {
		t.Errorf("outcomes %v", outcomes)
	}
}

func TestLastAttemptDeadLettersAndRedriveResendsOnlyThere(t *testing.T) {
	var healed atomic.Bool
	bad := newReceiver(t, func(_ int, w http.ResponseWriter) {
		if healed.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "upstream down")
	})
	good := newReceiver(t, nil)
	f := start(t, Schedule{10 * time.Millisecond}, endpoint("bad", bad.URL, 4), endpoint("good", good.URL, 4))
	e := newEvent("3")
	f.enqueue(t, e, "", "bad", "good")
	eventually(t, "dead at bad", func() bool { return f.state(t, e, "bad") == StateDead })
	eventually(t, "delivered at good", func() bool { return f.state(t, e, "good") == StateDelivered })
	if bad.count() != 2 {
		t.Errorf("bad got %d attempts, want 2 (schedule of one retry)", bad.count())
	}
	letters, err := f.dead.List(context.Background(), deadletter.Filter{})
	if err != nil || len(letters) != 1 {
		t.Fatalf("letters %+v, %v", letters, err)
	}
	l := letters[0]
	if l.Dest != bad.URL || l.Code != 502 || l.ErrorData != "upstream down" || !strings.Contains(l.Detail, "notify endpoint bad") ||
		!strings.Contains(l.Detail, "2 attempts") || l.EventID != "3" {
		t.Errorf("letter %+v", l)
	}
	orig, err := l.OriginalEvent()
	if err != nil || orig.Extensions()[ExtEndpoint] != "bad" || string(orig.Data()) != `{ "id" : "3" }` {
		t.Errorf("letter event %v (%v)", orig, err)
	}
	// A redrive of the letter (the event with the endpoint extension) goes to bad only.
	healed.Store(true)
	if added := f.enqueue(t, orig, "bad", "bad", "good"); len(added) != 1 || added[0] != "bad" {
		t.Fatalf("redrive added %v, want [bad]", added)
	}
	eventually(t, "redriven to bad", func() bool { return f.state(t, e, "bad") == StateDelivered })
	if good.count() != 1 {
		t.Errorf("good got %d requests, want 1", good.count())
	}
}

func TestGoneDisablesTheEndpoint(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusGone))
	f := start(t, Schedule{10 * time.Millisecond, 10 * time.Millisecond}, endpoint("a", rcv.URL, 4))
	e1, e2 := newEvent("4"), newEvent("5")
	f.enqueue(t, e1, "", "a")
	eventually(t, "dead", func() bool { return f.state(t, e1, "a") == StateDead })
	disabled, _ := f.store.Disabled(context.Background())
	if !strings.Contains(disabled["a"], "410 Gone") {
		t.Fatalf("disabled = %v", disabled)
	}
	f.enqueue(t, e2, "", "a")
	eventually(t, "second message dead", func() bool { return f.state(t, e2, "a") == StateDead })
	if rcv.count() != 1 {
		t.Errorf("a disabled endpoint got %d requests, want 1", rcv.count())
	}
	attempts, _ := f.store.Attempts(context.Background(), MessageID("/test", "5"), "a")
	if len(attempts) != 1 || !strings.Contains(attempts[0].Error, "endpoint disabled: 410 Gone") {
		t.Errorf("attempts %+v", attempts)
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	for name, code := range map[string]int{"429": http.StatusTooManyRequests, "503": http.StatusServiceUnavailable} {
		t.Run(name, func(t *testing.T) {
			rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
				if n == 1 {
					w.Header().Set("Retry-After", "1")
					w.WriteHeader(code)
					return
				}
				w.WriteHeader(http.StatusOK)
			})
			f := start(t, Schedule{10 * time.Millisecond}, endpoint("a", rcv.URL, 4))
			e := newEvent("6")
			f.enqueue(t, e, "", "a")
			eventually(t, "delivered", func() bool { return f.state(t, e, "a") == StateDelivered })
			attempts, _ := f.store.Attempts(context.Background(), MessageID("/test", "6"), "a")
			if len(attempts) != 2 {
				t.Fatalf("attempts %+v", attempts)
			}
			if gap := attempts[1].At.Sub(attempts[0].At); gap < time.Second {
				t.Errorf("second attempt %s after the first, Retry-After said 1s", gap)
			}
		})
	}
}

func TestSlowEndpointDoesNotHoldUpOthers(t *testing.T) {
	release := make(chan struct{})
	slow := newReceiver(t, func(_ int, w http.ResponseWriter) { <-release; w.WriteHeader(http.StatusOK) })
	fast := newReceiver(t, nil)
	f := start(t, Schedule{10 * time.Millisecond}, endpoint("slow", slow.URL, 2), endpoint("fast", fast.URL, 4))
	defer close(release)
	for i := range 30 {
		f.enqueue(t, newEvent("b"+string(rune('a'+i))), "", "slow", "fast")
	}
	eventually(t, "the fast endpoint got all 30", func() bool { return fast.count() == 30 })
	if n := slow.count(); n > 2 {
		t.Errorf("slow endpoint has %d requests in flight, its bulkhead is 2", n)
	}
}

func TestLeasedJobIsDueAgainAfterACrash(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	s := NewStore(srv.Client(), time.Hour)
	ctx := context.Background()
	now := time.Now()
	if _, _, err := s.Enqueue(ctx, newEvent("7"), []string{"a"}, "", now); err != nil {
		t.Fatal(err)
	}
	jobs, err := s.Claim(ctx, now, time.Minute, 10)
	if err != nil || len(jobs) != 1 || jobs[0].Endpoint != "a" || jobs[0].Event.ID() != "7" {
		t.Fatalf("claim = %+v, %v", jobs, err)
	}
	// The instance dies without finishing: nothing is due until the lease runs out.
	for name, tc := range map[string]struct {
		at   time.Time
		want int
	}{"within the lease": {now.Add(59 * time.Second), 0}, "after the lease": {now.Add(61 * time.Second), 1}} {
		n, err := s.Due(ctx, tc.at)
		if err != nil || int(n) != tc.want {
			t.Errorf("%s: due = %d, %v; want %d", name, n, err, tc.want)
		}
	}
}

func TestRetriesAndLeasesArmATimerDeadline(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	s := NewStore(rdb, time.Hour)
	ctx := context.Background()
	now := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	if _, _, err := s.Enqueue(ctx, newEvent("8"), []string{"a"}, "", now); err != nil {
		t.Fatal(err)
	}
	jobs, err := s.Claim(ctx, now, 30*time.Second, 10)
	if err != nil || len(jobs) != 1 {
		t.Fatalf("claim = %+v, %v", jobs, err)
	}
	if _, err := s.finish(ctx, jobs[0], outcomeRetry, now.Add(5*time.Minute), &Attempt{Number: 1, Outcome: OutcomeRetry}, "failed", now); err != nil {
		t.Fatal(err)
	}
	got, err := rdb.ZRangeWithScores(ctx, deadline.KeyDeadlines, 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	want := []redis.Z{ // the lease's end (03:04:35 → 03:05) and the retry (03:09:05 → 03:10)
		{Member: "notify:wake:" + strconv.FormatInt(now.Add(55*time.Second).Unix(), 10), Score: float64(now.Add(55 * time.Second).UnixMilli())},
		{Member: "notify:wake:" + strconv.FormatInt(now.Add(5*time.Minute+55*time.Second).Unix(), 10), Score: float64(now.Add(5*time.Minute + 55*time.Second).UnixMilli())},
	}
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("deadlines %v, want %v", got, want)
	}
	fired, err := deadline.Take(ctx, rdb, now.Add(time.Hour), 10)
	if err != nil || len(fired) != 2 || fired[0].Payload.Owner != Owner {
		t.Errorf("fired %+v, %v", fired, err)
	}
}

func TestUnknownEndpointIsRetriedThenDeadLettered(t *testing.T) {
	f := start(t, Schedule{10 * time.Millisecond, 10 * time.Millisecond})
	e := newEvent("9")
	f.enqueue(t, e, "", "removed")
	eventually(t, "dead", func() bool { return f.state(t, e, "removed") == StateDead })
	attempts, _ := f.store.Attempts(context.Background(), MessageID("/test", "9"), "removed")
	if len(attempts) != 3 || attempts[2].Outcome != OutcomeDead || !strings.Contains(attempts[0].Error, "not configured") {
		t.Errorf("attempts %+v", attempts)
	}
}

func TestEndpointFailingTooLongIsDisabledAndSaysSo(t *testing.T) {
	rcv := newReceiver(t, status(http.StatusInternalServerError))
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	store := NewStore(rdb, time.Hour)
	var told atomic.Int32
	var reason atomic.Value
	d := NewDispatcher(store, deadletter.NewStore(rdb, deadletter.Options{}), []*Endpoint{endpoint("a", rcv.URL, 4)}, Options{
		Schedule: Schedule{50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond, 50 * time.Millisecond},
		Poll:     10 * time.Millisecond, DisableAfter: 150 * time.Millisecond,
		Breaker: breaker.Settings{ConsecutiveFailures: 1000, FailureRatio: 1, MinRequests: 1000, Window: time.Minute, OpenFor: time.Second},
		OnDisabled: func(_ context.Context, ep *Endpoint, why string, _ time.Time) {
			told.Add(1)
			reason.Store(ep.Name + ": " + why)
		},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); d.Run(ctx) }()
	defer func() { cancel(); <-done }()
	for _, id := range []string{"d1", "d2", "d3"} {
		if _, _, err := store.Enqueue(ctx, newEvent(id), []string{"a"}, "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	d.Wake()
	eventually(t, "every message dead", func() bool {
		for _, id := range []string{"d1", "d2", "d3"} {
			st, _ := store.States(ctx, MessageID("/test", id))
			if st["a"] != StateDead {
				return false
			}
		}
		return true
	})
	disabled, _ := store.Disabled(ctx)
	if !strings.Contains(disabled["a"], "every attempt failed since") {
		t.Errorf("disabled = %v", disabled)
	}
	if told.Load() != 1 || !strings.Contains(reason.Load().(string), "a: every attempt failed since") {
		t.Errorf("told %d times: %v", told.Load(), reason.Load())
	}
	if n := rcv.count(); n >= 3*7 {
		t.Errorf("%d attempts: the endpoint was not disabled before the schedules ran out", n)
	}
}

func TestASuccessResetsFailingSince(t *testing.T) {
	var fail atomic.Bool
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		if fail.Load() {
			w.WriteHeader(http.StatusBadGateway)
			return
		}
		w.WriteHeader(http.StatusOK)
	})
	f := start(t, Schedule{10 * time.Millisecond}, endpoint("a", rcv.URL, 4))
	fail.Store(true)
	f.enqueue(t, newEvent("f1"), "", "a")
	eventually(t, "failing recorded", func() bool { return f.rdb.HExists(context.Background(), keyFailing, "a").Val() })
	fail.Store(false)
	f.enqueue(t, newEvent("f2"), "", "a")
	eventually(t, "a success clears it", func() bool { return !f.rdb.HExists(context.Background(), keyFailing, "a").Val() })
}

func TestTimeoutIsRetried(t *testing.T) {
	rcv := newReceiver(t, func(n int, w http.ResponseWriter) {
		if n == 1 {
			time.Sleep(time.Second) // longer than the endpoint's timeout
		}
		w.WriteHeader(http.StatusOK)
	})
	ep := endpoint("slow", rcv.URL, 4)
	ep.Timeout = 100 * time.Millisecond
	f := start(t, Schedule{10 * time.Millisecond}, ep)
	e := newEvent("t1")
	f.enqueue(t, e, "", "slow")
	eventually(t, "delivered on the retry", func() bool { return f.state(t, e, "slow") == StateDelivered })
	attempts, _ := f.store.Attempts(context.Background(), MessageID("/test", "t1"), "slow")
	if len(attempts) != 2 || attempts[0].Outcome != OutcomeRetry || !strings.Contains(attempts[0].Error, "deadline exceeded") ||
		attempts[0].Latency < 100 || attempts[1].Outcome != OutcomeDelivered {
		t.Errorf("attempts %+v", attempts)
	}
}

func TestRateLimitCapsAttemptsPerSecond(t *testing.T) {
	var mu sync.Mutex
	perSecond := map[int64]int{}
	rcv := newReceiver(t, func(_ int, w http.ResponseWriter) {
		mu.Lock()
		perSecond[time.Now().Unix()]++
		mu.Unlock()
		w.WriteHeader(http.StatusOK)
	})
	ep := endpoint("capped", rcv.URL, 8)
	ep.RateLimit = 5
	f := start(t, Schedule{time.Hour}, ep)
	const n = 12
	for i := range n {
		f.enqueue(t, newEvent("r"+strconv.Itoa(i)), "", "capped")
	}
	eventually(t, "all delivered", func() bool { return rcv.count() == n })
	// An attempt is logged once its answer is read, a moment after the receiver counted it.
	logged := func(i int) []Attempt {
		attempts, _ := f.store.Attempts(context.Background(), MessageID("/test", "r"+strconv.Itoa(i)), "capped")
		return attempts
	}
	eventually(t, "every attempt logged", func() bool {
		for i := range n {
			if len(logged(i)) == 0 {
				return false
			}
		}
		return true
	})
	mu.Lock()
	defer mu.Unlock()
	// The cap is counted per second of the dispatcher's clock when the attempt is let through;
	// the receiver's second may differ by the delivery's latency, so one receiver-second can
	// hold the end of one window and the start of the next, never more.
	for sec, c := range perSecond {
		if c > 2*5 {
			t.Errorf("%d attempts in second %d, the cap is 5", c, sec)
		}
	}
	if len(perSecond) < 3 {
		t.Errorf("12 messages at 5/s spread over %d seconds, want at least 3", len(perSecond))
	}
	for i := range n {
		if attempts := logged(i); len(attempts) != 1 {
			t.Errorf("message %d: %d attempts logged, want 1 (waiting for the rate uses none)", i, len(attempts))
		}
	}
}
