package mail

import (
	"context"
	"encoding/json"
	"errors"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/duequeue"
	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// fakeSender records the mails it is asked to send and fails as fail says for the nth attempt
// at a mail.
type fakeSender struct {
	mu   sync.Mutex
	sent map[string]int
	fail func(id string, n int) error
}

func (s *fakeSender) Send(_ context.Context, m *Mail) error {
	s.mu.Lock()
	s.sent[m.ID]++
	n := s.sent[m.ID]
	s.mu.Unlock()
	if s.fail != nil {
		return s.fail(m.ID, n)
	}
	return nil
}

func (s *fakeSender) count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.sent[id]
}

var errDown = errors.New("dial failed: connection refused")

type fixture struct {
	rdb    *redis.Client
	store  *Store
	dead   *deadletter.Store
	sender *fakeSender
	d      *Dispatcher
}

var testServer = Server{Host: "smtp.test", Port: 2525}

func start(t *testing.T, schedule notify.Schedule, circuit breaker.Settings, fail func(string, int) error) *fixture {
	t.Helper()
	rdb := redistest.Start(t, redistest.Options{}).Client()
	f := &fixture{rdb: rdb, store: NewStore(rdb, time.Hour), dead: deadletter.NewStore(rdb, deadletter.Options{}),
		sender: &fakeSender{sent: map[string]int{}, fail: fail}}
	f.d = NewDispatcher(f.store, f.dead, Options{Server: testServer, Sender: f.sender, Schedule: schedule,
		Timeout: time.Second, Concurrency: 2, Poll: 10 * time.Millisecond, Breaker: circuit})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { defer close(done); f.d.Run(ctx) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

// enqueue asks for the mail of event id and returns what Enqueue answered.
func (f *fixture) enqueue(t *testing.T, id string, redrive bool) (*Mail, string) {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/test")
	e.SetType(TypeRequested)
	_ = e.SetData(cloudevents.ApplicationJSON, []byte(`{"to":["ada@example.com"],"template":"welcome","data":{"name":"Ada"}}`))
	l, err := deadletter.FromEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	m := &Mail{ID: MessageID(MessageKey(Request{}, "/test", id)), Template: "welcome", From: "noreply@example.com",
		To: []string{"ada@example.com"}, Subject: "Welcome", Text: "Hello", Date: time.Now()}
	st, err := f.store.Enqueue(context.Background(), m, l.Event, redrive, time.Now())
	if err != nil {
		t.Fatal(err)
	}
	f.d.Wake()
	return m, st
}

func (f *fixture) state(t *testing.T, id string) string {
	st, err := f.store.State(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return st
}

func (f *fixture) attempts(t *testing.T, id string) []Attempt {
	a, err := f.store.Attempts(context.Background(), id)
	if err != nil {
		t.Fatal(err)
	}
	return a
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

func outcomes(as []Attempt) string {
	var s []string
	for _, a := range as {
		s = append(s, a.Outcome)
	}
	return strings.Join(s, ",")
}

func TestDispatch(t *testing.T) {
	tests := []struct {
		name         string
		schedule     notify.Schedule
		fail         func(string, int) error
		wantState    string
		wantSends    int
		wantOutcomes string
		// wantLetter is part of the dead letter's detail; "" when there must be none.
		wantLetter string
		wantCode   int
	}{
		{name: "sent at once", schedule: notify.Schedule{time.Hour}, wantState: StateDelivered, wantSends: 1, wantOutcomes: "delivered"},
		{name: "retried on the schedule until the server answers", schedule: notify.Schedule{20 * time.Millisecond, 20 * time.Millisecond, time.Hour},
			fail: func(_ string, n int) error {
				if n <= 2 {
					return errDown
				}
				return nil
			}, wantState: StateDelivered, wantSends: 3, wantOutcomes: "retry,retry,delivered"},
		{name: "dead-lettered after the last attempt", schedule: notify.Schedule{20 * time.Millisecond, 20 * time.Millisecond},
			fail:      func(string, int) error { return &ReplyError{Code: 421, Err: errors.New("421 service not available")} },
			wantState: StateDead, wantSends: 3, wantOutcomes: "retry,retry,dead", wantLetter: "3 attempts; last: 421 service not available", wantCode: 421},
		{name: "a permanent refusal is dead-lettered at once", schedule: notify.Schedule{20 * time.Millisecond},
			fail:      func(string, int) error { return &PermanentError{Code: 550, Err: errors.New("550 no such user")} },
			wantState: StateDead, wantSends: 1, wantOutcomes: "dead", wantLetter: "1 attempts; last: 550 no such user", wantCode: 550},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			f := start(t, tt.schedule, breaker.Settings{ConsecutiveFailures: 100, FailureRatio: 1, MinRequests: 100, Window: time.Minute, OpenFor: time.Second}, tt.fail)
			m, st := f.enqueue(t, "e1", false)
			if st != StateQueued {
				t.Fatalf("enqueue answered %q", st)
			}
			eventually(t, "the mail reaches "+tt.wantState, func() bool { return f.state(t, m.ID) == tt.wantState })
			time.Sleep(50 * time.Millisecond)
			if n := f.sender.count(m.ID); n != tt.wantSends {
				t.Errorf("sent %d times, want %d", n, tt.wantSends)
			}
			as := f.attempts(t, m.ID)
			if got := outcomes(as); got != tt.wantOutcomes {
				t.Errorf("attempts %s, want %s", got, tt.wantOutcomes)
			}
			for i, a := range as {
				if a.Outcome == outcomeRetry && a.Next.Sub(a.At) < tt.schedule[i] {
					t.Errorf("attempt %d: next at %s, before the schedule's %s", a.Number, a.Next.Sub(a.At), tt.schedule[i])
				}
			}
			letters, err := f.dead.List(context.Background(), deadletter.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			if tt.wantLetter == "" {
				if len(letters) != 0 {
					t.Fatalf("dead letters %+v", letters)
				}
				return
			}
			if len(letters) != 1 || !strings.Contains(letters[0].Detail, tt.wantLetter) || letters[0].Code != tt.wantCode ||
				letters[0].Dest != "smtp://smtp.test:2525" || letters[0].EventID != "e1" || letters[0].ErrorData == "" {
				t.Fatalf("dead letters %+v, want one for e1 at smtp://smtp.test:2525 code %d saying %q", letters, tt.wantCode, tt.wantLetter)
			}
		})
	}
}

// One key is one mail: a second enqueue of a pending or delivered mail changes nothing; only a
// redrive sends a dead one again, with a fresh schedule.
func TestEnqueueClaimsTheKeyOnce(t *testing.T) {
	failing := true
	var mu sync.Mutex
	f := start(t, notify.Schedule{}, breaker.Settings{ConsecutiveFailures: 100, FailureRatio: 1, MinRequests: 100, Window: time.Minute, OpenFor: time.Second},
		func(string, int) error {
			mu.Lock()
			defer mu.Unlock()
			if failing {
				return errDown
			}
			return nil
		})
	m, _ := f.enqueue(t, "dup", false)
	eventually(t, "dead", func() bool { return f.state(t, m.ID) == StateDead })
	tests := []struct {
		name    string
		redrive bool
		heal    bool
		want    string
		state   string
		sends   int
	}{
		{name: "a redelivery of a dead mail", want: StateDead, state: StateDead, sends: 1},
		{name: "a redrive of a dead mail", redrive: true, heal: true, want: StateQueued, state: StateDelivered, sends: 2},
		{name: "a redelivery of a delivered mail", want: StateDelivered, state: StateDelivered, sends: 2},
		{name: "a redrive of a delivered mail", redrive: true, want: StateDelivered, state: StateDelivered, sends: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if tt.heal {
				mu.Lock()
				failing = false
				mu.Unlock()
			}
			if _, st := f.enqueue(t, "dup", tt.redrive); st != tt.want {
				t.Fatalf("enqueue answered %q, want %q", st, tt.want)
			}
			eventually(t, tt.state, func() bool { return f.state(t, m.ID) == tt.state })
			time.Sleep(50 * time.Millisecond)
			if n := f.sender.count(m.ID); n != tt.sends {
				t.Fatalf("sent %d times, want %d", n, tt.sends)
			}
		})
	}
}

// The server's circuit opens after consecutive failures: later mails wait without an attempt
// counted, and the state is in Redis for every instance.
func TestBreakerOpensAndMailsWait(t *testing.T) {
	f := start(t, notify.Schedule{time.Hour}, breaker.Settings{ConsecutiveFailures: 2, FailureRatio: 1, MinRequests: 100, Window: time.Minute, OpenFor: time.Hour},
		func(string, int) error { return errDown })
	a, _ := f.enqueue(t, "a", false)
	b, _ := f.enqueue(t, "b", false)
	eventually(t, "both failed once", func() bool { return len(f.attempts(t, a.ID)) == 1 && len(f.attempts(t, b.ID)) == 1 })
	st, err := ReadBreaker(context.Background(), f.rdb, testServer.Name())
	if err != nil || st.State != "open" {
		t.Fatalf("circuit %+v (%v), want open", st, err)
	}
	c, _ := f.enqueue(t, "c", false)
	time.Sleep(200 * time.Millisecond)
	if n, as := f.sender.count(c.ID), f.attempts(t, c.ID); n != 0 || len(as) != 0 {
		t.Fatalf("a mail behind the open circuit was tried %d times (%d attempts logged)", n, len(as))
	}
	if f.state(t, c.ID) != StatePending {
		t.Fatalf("state %q, want pending", f.state(t, c.ID))
	}
	due, err := f.rdb.ZScore(context.Background(), keyDue, c.ID).Result()
	if err != nil || time.UnixMilli(int64(due)).Before(st.Until.Add(-time.Second)) {
		t.Fatalf("the waiting mail is due at %v (%v), want at the circuit's expiry %v", time.UnixMilli(int64(due)), err, st.Until)
	}
}

// A retry due later arms a timer deadline (owner mail) for its minute, so that a function scaled
// to zero or killed is woken for it.
func TestRetryArmsATimerWakeUp(t *testing.T) {
	f := start(t, notify.Schedule{3 * time.Minute}, breaker.Settings{ConsecutiveFailures: 100, FailureRatio: 1, MinRequests: 100, Window: time.Minute, OpenFor: time.Second},
		func(string, int) error { return errDown })
	m, _ := f.enqueue(t, "wake", false)
	eventually(t, "the first attempt failed", func() bool { return len(f.attempts(t, m.ID)) == 1 })
	next := f.attempts(t, m.ID)[0].Next
	w := duequeue.WakeAt(Owner, next)
	if !strings.HasPrefix(w.ID, "mail:wake:") {
		t.Errorf("wake-up id %s, want mail:wake:<unix minute>", w.ID)
	}
	ctx := context.Background()
	due, err := f.rdb.ZScore(ctx, deadline.KeyDeadlines, w.ID).Result()
	if err != nil || int64(due) != w.Due || time.UnixMilli(w.Due).Before(next) || time.UnixMilli(w.Due).Sub(next) >= time.Minute {
		t.Fatalf("wake-up %s due %v (%v), want the minute at or after %s", w.ID, time.UnixMilli(int64(due)), err, next)
	}
	var p deadline.Payload
	raw, err := f.rdb.HGet(ctx, deadline.KeyPayloads, w.ID).Result()
	if err != nil || json.Unmarshal([]byte(raw), &p) != nil || p.Owner != Owner {
		t.Fatalf("wake-up payload %q (%v), want owner %q", raw, err, Owner)
	}
}
