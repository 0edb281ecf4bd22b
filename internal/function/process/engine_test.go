package process

import (
	"context"
	"errors"
	"fmt"
	"os"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/roundtrips"
)

// harness drives an Engine against a real redis-server with a manual clock.
type harness struct {
	t   *testing.T
	e   *Engine
	rdb *redis.Client
	now atomic.Int64
	seq atomic.Int64
}

func newHarness(t *testing.T) *harness {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	b, err := os.ReadFile("testdata/order.yaml")
	if err != nil {
		t.Fatal(err)
	}
	d, err := Parse(b)
	if err != nil {
		t.Fatal(err)
	}
	set, err := NewSet(d)
	if err != nil {
		t.Fatal(err)
	}
	h := &harness{t: t, rdb: srv.Client()}
	h.now.Store(time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC).UnixMilli())
	h.e = NewEngine(h.rdb, set, Options{Owner: "test", Keys: testKeys, Now: func() time.Time { return time.UnixMilli(h.now.Load()) }})
	return h
}

// testKeys sign and verify task decisions in tests.
var testKeys = mustKeys("test-signing-key-0123456789abcdef", "")

func mustKeys(current, previous string) *SigningKeys {
	k, err := NewSigningKeys(current, previous)
	if err != nil {
		panic(err)
	}
	return k
}

// decide records decision by actor on task id as the tasks API does, and returns the signed
// reply as the engine receives it.
func (h *harness) decide(id, decision, actor, data string) Event {
	h.t.Helper()
	ctx := context.Background()
	task, err := GetTask(ctx, h.rdb, id)
	if err != nil {
		h.t.Fatal(err)
	}
	d := TaskDecision{Task: id, Decision: decision, Actor: actor, At: h.now.Load()}
	em, err := DecideTask(ctx, h.rdb, d, DecisionReply(*task, d, "/knfaas/tasks", data, testKeys))
	if err != nil {
		h.t.Fatal(err)
	}
	return EventFrom(em.Event())
}

func (h *harness) advance(d time.Duration) { h.now.Add(d.Milliseconds()) }

// send applies an event, acknowledges what it emitted and returns the emitted types.
func (h *harness) send(ev Event) (Result, []string) {
	h.t.Helper()
	if ev.ID == "" {
		ev.ID = fmt.Sprintf("ev-%d", h.seq.Add(1))
	}
	if ev.Source == "" {
		ev.Source = "/test"
	}
	res, err := h.e.Apply(context.Background(), ev)
	if err != nil {
		h.t.Fatalf("Apply(%s %s): %v", ev.Type, ev.Subject, err)
	}
	var types []string
	var acks []Acked
	for _, em := range res.Outbox {
		types = append(types, em.Type)
		acks = append(acks, em.Acked(ev.Subject))
	}
	if err := Ack(context.Background(), h.rdb, acks...); err != nil {
		h.t.Fatal(err)
	}
	return res, types
}

func (h *harness) reply(inst, typ string) []string {
	h.t.Helper()
	_, types := h.send(Event{Type: typ, Subject: inst})
	return types
}

func (h *harness) start(inst string, amount int) []string {
	h.t.Helper()
	res, types := h.send(Event{Type: "test.order.placed", Subject: inst, Data: fmt.Appendf(nil, `{"amount":%d}`, amount)})
	if res.Status != StatusStarted {
		h.t.Fatalf("start %s: status %s (%s)", inst, res.Status, res.Message)
	}
	return types
}

// fireDue runs the timer's work: take due deadlines and apply them as fired events.
func (h *harness) fireDue() []string {
	h.t.Helper()
	fired, err := deadline.Take(context.Background(), h.rdb, time.UnixMilli(h.now.Load()), 1000)
	if err != nil {
		h.t.Fatal(err)
	}
	var all []string
	for _, f := range fired {
		_, types := h.send(Event{ID: f.ID, Source: "/knfaas/timer", Type: deadline.TypeFired, Subject: f.Payload.Subject, Command: f.Payload.Command})
		all = append(all, types...)
		if err := deadline.Ack(context.Background(), h.rdb, f.ID); err != nil {
			h.t.Fatal(err)
		}
	}
	return all
}

func (h *harness) status(inst string) string {
	return h.rdb.HGet(context.Background(), KeyInstancePrefix+inst, "status").Val()
}

func eq(t *testing.T, what string, got, want []string) {
	t.Helper()
	if fmt.Sprint(got) != fmt.Sprint(want) {
		t.Errorf("%s: emitted %v, want %v", what, got, want)
	}
}

func TestHappyPath(t *testing.T) {
	h := newHarness(t)
	eq(t, "start", h.start("o1", 10), []string{"test.pay"})
	eq(t, "paid (approval skipped: amount 10)", h.reply("o1", "test.paid"), []string{"test.cook"})
	eq(t, "cooked", h.reply("o1", "test.cooked"), []string{"test.ship"})
	eq(t, "shipped", h.reply("o1", "test.shipped"), []string{"test.order.completed"})
	if s := h.status("o1"); s != "completed" {
		t.Errorf("status %q, want completed", s)
	}
	if n := h.rdb.ZCard(context.Background(), deadline.KeyDeadlines).Val(); n != 0 {
		t.Errorf("%d deadlines left pending after completion", n)
	}
	if ttl := h.rdb.PTTL(context.Background(), KeyInstancePrefix+"o1").Val(); ttl <= 0 {
		t.Errorf("finished instance has no TTL (%v)", ttl)
	}
}

func TestEmittedIDsAreDeterministic(t *testing.T) {
	h := newHarness(t)
	res, _ := h.send(Event{Type: "test.order.placed", Subject: "o1", Data: []byte(`{"amount":1}`)})
	if len(res.Outbox) != 1 {
		t.Fatalf("outbox %v", res.Outbox)
	}
	em := res.Outbox[0]
	if em.ID != "o1:pay:1" || em.Extensions["knfaascommand"] != "o1:pay:1" || em.Extensions["knfaasprocess"] != "order" || em.Subject != "o1" || em.Data != `{"amount":1}` {
		t.Errorf("command = %+v", em)
	}
	h.advance(61 * time.Second)
	h.fireDue()
	var ids []string
	for _, e := range h.timeline(t, "o1") {
		if e.Kind == "out" {
			ids = append(ids, e.ID)
		}
	}
	eq(t, "retried command ids", ids, []string{"o1:pay:1", "o1:pay:2"})
}

func (h *harness) timeline(t *testing.T, inst string) []TimelineEntry {
	t.Helper()
	in, err := ReadInstance(context.Background(), h.rdb, inst)
	if err != nil {
		t.Fatal(err)
	}
	return in.Timeline
}

func TestFailuresCompensateCompletedStepsInReverse(t *testing.T) {
	tests := []struct {
		name   string
		amount int
		drive  func(h *harness) []string // returns what the failing event emitted
		want   []string
		status string
	}{
		{"payment declined: nothing to undo", 10, func(h *harness) []string {
			return h.reply("o", "test.declined")
		}, []string{"test.order.failed", "test.order.compensated"}, "compensated"},
		{"payment times out after its retry", 10, func(h *harness) []string {
			h.advance(61 * time.Second)
			eq(h.t, "first timeout retries", h.fireDue(), []string{"test.pay"})
			h.advance(61 * time.Second)
			return h.fireDue()
		}, []string{"test.order.failed", "test.order.compensated"}, "compensated"},
		{"approval rejected: refund only", 500, func(h *harness) []string {
			h.reply("o", "test.paid")
			_, types := h.send(h.decide("o:approve:1", DecisionRejected, "boss", `{}`))
			return types
		}, []string{"test.order.failed", "test.refund"}, "compensating"},
		{"kitchen burns: refund", 10, func(h *harness) []string {
			h.reply("o", "test.paid")
			return h.reply("o", "test.burnt")
		}, []string{"test.order.failed", "test.refund"}, "compensating"},
		{"kitchen times out: refund", 10, func(h *harness) []string {
			h.reply("o", "test.paid")
			h.advance(3 * time.Minute)
			return h.fireDue()
		}, []string{"test.order.failed", "test.refund"}, "compensating"},
		{"shipping times out: uncook then refund", 10, func(h *harness) []string {
			h.reply("o", "test.paid")
			h.reply("o", "test.cooked")
			h.advance(6 * time.Minute)
			return h.fireDue()
		}, []string{"test.order.failed", "test.uncook", "test.refund"}, "compensating"},
		{"shipping lost: uncook then refund", 10, func(h *harness) []string {
			h.reply("o", "test.paid")
			h.reply("o", "test.cooked")
			return h.reply("o", "test.lost")
		}, []string{"test.order.failed", "test.uncook", "test.refund"}, "compensating"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			h.start("o", tc.amount)
			eq(t, "failing event", tc.drive(h), tc.want)
			if s := h.status("o"); s != tc.status {
				t.Fatalf("status %q, want %q", s, tc.status)
			}
			if tc.status == "compensating" {
				eq(t, "refunded", h.reply("o", "test.refunded"), []string{"test.order.compensated"})
				if s := h.status("o"); s != "compensated" {
					t.Errorf("status after refund %q", s)
				}
			}
		})
	}
}

func TestCompensationTimeoutRetriesThenGivesUp(t *testing.T) {
	h := newHarness(t)
	h.start("o", 10)
	h.reply("o", "test.paid")
	eq(t, "burnt", h.reply("o", "test.burnt"), []string{"test.order.failed", "test.refund"})
	h.advance(61 * time.Second)
	eq(t, "refund retried", h.fireDue(), []string{"test.refund"})
	h.advance(61 * time.Second)
	eq(t, "refund given up", h.fireDue(), []string{"test.order.compensated"})
	if s := h.status("o"); s != "compensation_incomplete" {
		t.Errorf("status %q, want compensation_incomplete", s)
	}
}

func TestDuplicateAndOutOfOrderReplies(t *testing.T) {
	h := newHarness(t)
	h.start("o", 10)

	res, types := h.send(Event{ID: "early", Type: "test.cooked", Subject: "o", Command: "o:cook:1"})
	if res.Status != StatusStale || len(types) != 0 {
		t.Errorf("reply before its step: %s %v, want stale and nothing emitted", res.Status, types)
	}
	res, types = h.send(Event{ID: "wrong-cmd", Type: "test.paid", Subject: "o", Command: "o:ship:1"})
	if res.Status != StatusStale || len(types) != 0 {
		t.Errorf("reply naming another step's command: %s %v", res.Status, types)
	}
	res, types = h.send(Event{ID: "paid-1", Type: "test.paid", Subject: "o", Command: "o:pay:1"})
	eq(t, "paid", types, []string{"test.cook"})
	res, types = h.send(Event{ID: "paid-1", Type: "test.paid", Subject: "o", Command: "o:pay:1"})
	if res.Status != StatusDuplicate || len(types) != 0 {
		t.Errorf("redelivered reply: %s %v, want duplicate and nothing emitted", res.Status, types)
	}
	res, types = h.send(Event{ID: "paid-2", Type: "test.paid", Subject: "o", Command: "o:pay:1"})
	if res.Status != StatusStale || len(types) != 0 {
		t.Errorf("second reply to a finished step: %s %v", res.Status, types)
	}
	// the stale pay deadline, cancelled when the reply came, must not fire; cook's must not yet.
	h.advance(61 * time.Second)
	eq(t, "fired after cancel", h.fireDue(), nil)
	eq(t, "cooked", h.reply("o", "test.cooked"), []string{"test.ship"})
	eq(t, "shipped", h.reply("o", "test.shipped"), []string{"test.order.completed"})
	res, types = h.send(Event{Type: "test.shipped", Subject: "o"})
	if res.Status != StatusStale || len(types) != 0 {
		t.Errorf("reply after completion: %s %v", res.Status, types)
	}
	ignored := 0
	for _, e := range h.timeline(t, "o") {
		if e.Kind == "in" && e.Note != "" && e.Note != "started" {
			ignored++
		}
	}
	if ignored != 4 {
		t.Errorf("timeline records %d ignored replies, want 4", ignored)
	}
}

func TestLateTimerAfterReplyIsIgnored(t *testing.T) {
	h := newHarness(t)
	h.start("o", 10)
	fired, err := deadline.Take(context.Background(), h.rdb, time.UnixMilli(h.now.Load()+time.Hour.Milliseconds()), 10)
	if err != nil || len(fired) != 1 {
		t.Fatalf("Take: %v %v", fired, err)
	}
	h.reply("o", "test.paid") // the reply wins the race with the already-taken deadline
	res, types := h.send(Event{ID: fired[0].ID, Source: "/knfaas/timer", Type: deadline.TypeFired, Subject: "o", Command: fired[0].Payload.Command})
	if res.Status != StatusTimer || len(types) != 0 {
		t.Errorf("late timer: %s %v, want timer and nothing emitted", res.Status, types)
	}
}

func TestBadInput(t *testing.T) {
	h := newHarness(t)
	_, err := h.e.Apply(context.Background(), Event{ID: "1", Source: "s", Type: "test.order.placed"})
	if !errors.Is(err, ErrBadEvent) {
		t.Errorf("start without subject: %v, want ErrBadEvent", err)
	}
	_, err = h.e.Apply(context.Background(), Event{ID: "1", Source: "s", Type: "test.order.placed", Subject: "x", Data: []byte("{")})
	if !errors.Is(err, ErrBadEvent) {
		t.Errorf("start with bad JSON: %v, want ErrBadEvent", err)
	}
	res, _ := h.send(Event{Type: "test.paid", Subject: "nobody"})
	if res.Status != StatusUnknown {
		t.Errorf("reply for unknown instance: %s", res.Status)
	}
	if n := h.rdb.LLen(context.Background(), KeyUnknown).Val(); n != 1 {
		t.Errorf("unknown events recorded: %d, want 1", n)
	}
	h.start("o", 1)
	res, _ = h.send(Event{ID: "other", Type: "test.order.placed", Subject: "o"})
	if res.Status != StatusConflict {
		t.Errorf("second start of o: %s", res.Status)
	}
}

func TestHumanTaskRecordsActorAndExpires(t *testing.T) {
	h := newHarness(t)
	h.start("big", 500)
	eq(t, "paid", h.reply("big", "test.paid"), []string{TypeTaskCreated})
	task, err := GetTask(context.Background(), h.rdb, "big:approve:1")
	if err != nil {
		t.Fatal(err)
	}
	if task.State != "open" || task.Group != "managers" || task.Instance != "big" {
		t.Errorf("task = %+v", task)
	}
	_, types := h.send(h.decide("big:approve:1", DecisionCompleted, "alice", `{"ok":true}`))
	eq(t, "approved", types, []string{"test.cook"})
	if task, err := GetTask(context.Background(), h.rdb, "big:approve:1"); err != nil || task.State != "completed" || task.Applied != "completed" {
		t.Errorf("decided task: %+v %v, want completed and applied", task, err)
	}
	found := false
	for _, e := range h.timeline(t, "big") {
		if e.Type == TypeTaskCompleted && e.Actor == "alice" && e.Data == `{"ok":true}` {
			found = true
		}
	}
	if !found {
		t.Error("timeline does not record who completed the task with its payload")
	}
	h.reply("big", "test.cooked")
	h.reply("big", "test.shipped")

	h.start("late", 500)
	h.reply("late", "test.paid")
	h.advance(11 * time.Minute)
	eq(t, "approval timeout", h.fireDue(), []string{"test.order.failed", "test.refund"})
	task, err = GetTask(context.Background(), h.rdb, "late:approve:1")
	if err != nil || task.State != "expired" {
		t.Errorf("timed-out task: %+v %v, want expired", task, err)
	}
}

func TestCrashBeforePublishRepublishesOnRedelivery(t *testing.T) {
	h := newHarness(t)
	h.start("o", 10)
	// deliver the reply but "crash" before publishing: no Ack.
	res, err := h.e.Apply(context.Background(), Event{ID: "paid", Source: "/t", Type: "test.paid", Subject: "o"})
	if err != nil || len(res.Outbox) != 1 {
		t.Fatalf("Apply: %v %v", res, err)
	}
	// the broker redelivers: nothing advances twice, and the unpublished command comes back.
	res2, err := h.e.Apply(context.Background(), Event{ID: "paid", Source: "/t", Type: "test.paid", Subject: "o"})
	if err != nil {
		t.Fatal(err)
	}
	if res2.Status != StatusDuplicate || len(res2.Outbox) != 1 || res2.Outbox[0].ID != res.Outbox[0].ID {
		t.Fatalf("redelivery: %s %+v, want duplicate re-offering %s", res2.Status, res2.Outbox, res.Outbox[0].ID)
	}
	if err := Ack(context.Background(), h.rdb, res2.Outbox[0].Acked("o")); err != nil {
		t.Fatal(err)
	}
	if n := h.rdb.LLen(context.Background(), KeyOutboxPrefix+"o").Val(); n != 0 {
		t.Errorf("outbox holds %d after ack", n)
	}
}

func TestManyConcurrentInstances(t *testing.T) {
	h := newHarness(t)
	const n = 200
	var wg sync.WaitGroup
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			inst := fmt.Sprintf("c%d", i)
			h.start(inst, i) // amounts above 100 need approval
			h.reply(inst, "test.paid")
			if i > 100 {
				h.send(h.decide(inst+":approve:1", DecisionCompleted, "m", `{}`))
			}
			// every reply delivered twice, concurrently
			var rw sync.WaitGroup
			for range 2 {
				rw.Add(1)
				go func() { defer rw.Done(); h.send(Event{ID: inst + "-cooked", Type: "test.cooked", Subject: inst}) }()
			}
			rw.Wait()
			if i%10 == 0 {
				h.reply(inst, "test.lost")
				h.reply(inst, "test.refunded")
			} else {
				h.reply(inst, "test.shipped")
			}
		}()
	}
	wg.Wait()
	for i := range n {
		inst := fmt.Sprintf("c%d", i)
		want := "completed"
		if i%10 == 0 {
			want = "compensated"
		}
		if s := h.status(inst); s != want {
			t.Errorf("%s: status %q, want %q", inst, s, want)
		}
		// ship was issued exactly once although cooked arrived twice
		ships := 0
		for _, e := range h.timeline(t, inst) {
			if e.Kind == "out" && e.Type == "test.ship" {
				ships++
			}
		}
		if ships != 1 {
			t.Errorf("%s: ship issued %d times", inst, ships)
		}
	}
}

func TestOneRoundTripPerTransition(t *testing.T) {
	h := newHarness(t)
	h.start("warm", 10) // loads the script once (EVALSHA → NOSCRIPT → EVAL)
	var rt roundtrips.Counter
	h.rdb.AddHook(&rt)
	for i := range 20 {
		inst := fmt.Sprintf("o%d", i)
		if _, err := h.e.Apply(context.Background(), Event{ID: "s" + inst, Source: "/t", Type: "test.order.placed", Subject: inst, Data: []byte(`{}`)}); err != nil {
			t.Fatal(err)
		}
		if _, err := h.e.Apply(context.Background(), Event{ID: "p" + inst, Source: "/t", Type: "test.paid", Subject: inst}); err != nil {
			t.Fatal(err)
		}
	}
	if got := rt.Count(); got != 40 {
		t.Errorf("%d round trips for 40 transitions, want 40", got)
	}
}
