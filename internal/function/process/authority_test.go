package process

import (
	"context"
	"errors"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
)

// snapshot renders every key a transition of inst or its approval task can touch, so a test can
// prove that an event changed nothing.
func (h *harness) snapshot(inst string) string {
	h.t.Helper()
	ctx := context.Background()
	var b strings.Builder
	hash := func(key string) {
		m := h.rdb.HGetAll(ctx, key).Val()
		keys := make([]string, 0, len(m))
		for k := range m {
			keys = append(keys, k)
		}
		sort.Strings(keys)
		for _, k := range keys {
			fmt.Fprintf(&b, "%s %s=%s\n", key, k, m[k])
		}
	}
	hash(KeyInstancePrefix + inst)
	hash(KeyTaskPrefix + inst + ":approve:1")
	hash(deadline.KeyPayloads)
	seen := h.rdb.SMembers(ctx, KeySeenPrefix+inst).Val()
	sort.Strings(seen)
	fmt.Fprintln(&b, "seen", seen)
	fmt.Fprintln(&b, "timeline", h.rdb.LRange(ctx, KeyTimelinePrefix+inst, 0, -1).Val())
	fmt.Fprintln(&b, "outbox", h.rdb.LRange(ctx, KeyOutboxPrefix+inst, 0, -1).Val())
	fmt.Fprintln(&b, "open", h.rdb.ZRangeWithScores(ctx, KeyOpenTasks, 0, -1).Val())
	fmt.Fprintln(&b, "deadlines", h.rdb.ZRangeWithScores(ctx, deadline.KeyDeadlines, 0, -1).Val())
	fmt.Fprintln(&b, "unknown", h.rdb.LRange(ctx, KeyUnknown, 0, -1).Val())
	return b.String()
}

// awaitApproval starts inst above the approval amount and pays it: its task inst:approve:1 opens.
func (h *harness) awaitApproval(inst string) string {
	h.t.Helper()
	h.start(inst, 500)
	eq(h.t, "paid", h.reply(inst, "test.paid"), []string{TypeTaskCreated})
	return inst + ":approve:1"
}

func TestForgedDecisionsAreRefused(t *testing.T) {
	ctx := context.Background()
	signedBy := func(keys *SigningKeys, ev Event) Event {
		at, _ := strconv.ParseInt(ev.Decided, 10, 64)
		ev.Signature = keys.Sign(TaskDecision{Task: ev.Command, Decision: DecisionOf(ev.Type), Actor: ev.Actor, At: at})
		return ev
	}
	tests := []struct {
		name string
		// forge returns the forged event, given the genuine signed decision on task big:approve:1
		// (recorded by the tasks function) and one on task other:approve:1.
		forge func(h *harness, genuine, other Event) Event
		want  string // part of the refusal
	}{
		{"no signature, no task id, any actor (the reported attack)", func(h *harness, _, _ Event) Event {
			return Event{Type: TypeTaskCompleted, Subject: "big", Actor: "mallory"}
		}, "knfaascommand"},
		{"no signature", func(h *harness, g, _ Event) Event {
			g.Signature = ""
			return g
		}, "knfaassignature is missing"},
		{"no decision time", func(h *harness, g, _ Event) Event {
			g.Decided = ""
			return g
		}, "knfaasdecided"},
		{"signed with another key", func(h *harness, g, _ Event) Event {
			return signedBy(mustKeys("attacker-key-0123456789abcdef012345", ""), g)
		}, "does not match"},
		{"tampered actor", func(h *harness, g, _ Event) Event {
			g.Actor = "mallory"
			return g
		}, "does not match"},
		{"tampered decision", func(h *harness, g, _ Event) Event {
			g.Type = TypeTaskRejected
			return g
		}, "does not match"},
		{"tampered task id", func(h *harness, g, _ Event) Event {
			g.Command = "big:approve:2"
			return g
		}, "does not match"},
		{"tampered time", func(h *harness, g, _ Event) Event {
			g.Decided += "1"
			return g
		}, "does not match"},
		{"another task's signature on this task", func(h *harness, g, o Event) Event {
			o.ID, o.Subject, o.Command = g.ID+"-replayed", g.Subject, g.Command
			return o
		}, "does not match"},
		{"another task's signed decision sent to this instance", func(h *harness, g, o Event) Event {
			o.Subject = g.Subject
			return o
		}, "belongs to instance other"},
		{"validly signed, but not the decision the tasks function recorded", func(h *harness, g, _ Event) Event {
			g.ID, g.Actor = "leaked-key", "mallory"
			return signedBy(testKeys, g)
		}, "records completed by alice"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			h := newHarness(t)
			id := h.awaitApproval("big")
			other := h.awaitApproval("other")
			h.advance(time.Second)
			genuine := h.decide(id, DecisionCompleted, "alice", `{"ok":true}`)
			otherGenuine := h.decide(other, DecisionRejected, "bob", `{}`)
			forged := tc.forge(h, genuine, otherGenuine)
			if forged.ID == genuine.ID {
				forged.ID += "-forged"
			}
			if forged.Source == "" {
				forged.Source = "/attacker"
			}
			before := h.snapshot("big")

			res, err := h.e.Apply(ctx, forged)

			if !errors.Is(err, ErrForbidden) || !strings.Contains(err.Error(), tc.want) || res.Status != StatusRefused {
				t.Fatalf("forged decision: %s %v, want refused with ErrForbidden containing %q", res.Status, err, tc.want)
			}
			if after := h.snapshot("big"); after != before {
				t.Fatalf("a refused decision changed state:\nbefore %s\nafter  %s", before, after)
			}
			// The genuine decision still applies, once.
			_, types := h.send(genuine)
			eq(t, "genuine decision after the forgery", types, []string{"test.cook"})
		})
	}
}

func TestForgedTimerFireIsRefused(t *testing.T) {
	h := newHarness(t)
	id := h.awaitApproval("big")
	before := h.snapshot("big")
	// The deadline id is predictable: <command>:deadline. Forged before functions/timer took it.
	res, err := h.e.Apply(context.Background(), Event{ID: id + ":deadline", Source: "/knfaas/timer", Type: deadline.TypeFired, Subject: "big", Command: id})
	if !errors.Is(err, ErrForbidden) || res.Status != StatusRefused {
		t.Fatalf("forged timer fire: %s %v, want refused", res.Status, err)
	}
	if after := h.snapshot("big"); after != before {
		t.Fatalf("a refused timer fire changed state:\nbefore %s\nafter  %s", before, after)
	}
	if task, err := GetTask(context.Background(), h.rdb, id); err != nil || task.State != "open" {
		t.Fatalf("task after a forged fire: %+v %v, want open", task, err)
	}
	// When due, the timer takes it and the real fire expires the task.
	h.advance(11 * time.Minute)
	eq(t, "due fire", h.fireDue(), []string{"test.order.failed", "test.refund"})
}

func TestDecisionAppliesOnce(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	id := h.awaitApproval("big")
	genuine := h.decide(id, DecisionCompleted, "alice", `{}`)

	res, types := h.send(genuine)
	if res.Status != StatusApplied {
		t.Fatalf("genuine decision: %s %s", res.Status, res.Message)
	}
	eq(t, "genuine decision", types, []string{"test.cook"})
	task, err := GetTask(ctx, h.rdb, id)
	if err != nil || task.Applied != DecisionCompleted {
		t.Fatalf("task after the decision: %+v %v, want applied", task, err)
	}

	// A redelivery of the same event is a duplicate: 2xx, nothing changes.
	res, types = h.send(genuine)
	if res.Status != StatusDuplicate || len(types) != 0 {
		t.Errorf("redelivered decision: %s %v, want duplicate", res.Status, types)
	}
	// The same valid decision under a new event id is ignored: the task was decided.
	replay := genuine
	replay.ID = "replayed"
	res, types = h.send(replay)
	if res.Status != StatusStale || len(types) != 0 || !strings.Contains(res.Message, "already completed") {
		t.Errorf("replayed decision: %s %q %v, want stale, already completed", res.Status, res.Message, types)
	}
	// A second decision through the tasks API is refused there, never signed.
	d := TaskDecision{Task: id, Decision: DecisionRejected, Actor: "ops", At: h.now.Load()}
	if _, err := DecideTask(ctx, h.rdb, d, DecisionReply(*task, d, "/knfaas/tasks", `{}`, testKeys)); !errors.Is(err, ErrTaskDecided) {
		t.Errorf("second decision through the tasks store: %v, want ErrTaskDecided", err)
	}
}

func TestConcurrentDecisionsOneWins(t *testing.T) {
	ctx := context.Background()
	h := newHarness(t)
	id := h.awaitApproval("big")
	task, err := GetTask(ctx, h.rdb, id)
	if err != nil {
		t.Fatal(err)
	}
	// Eight people decide at once through the tasks store; each one that wins delivers its
	// event, under several event ids, concurrently.
	const n = 8
	var wg sync.WaitGroup
	var mu sync.Mutex
	var recorded []Event
	for i := range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			decision := []string{DecisionCompleted, DecisionRejected}[i%2]
			d := TaskDecision{Task: id, Decision: decision, Actor: fmt.Sprintf("m%d", i), At: h.now.Load()}
			em, err := DecideTask(ctx, h.rdb, d, DecisionReply(*task, d, "/knfaas/tasks", `{}`, testKeys))
			if errors.Is(err, ErrTaskDecided) {
				return
			}
			if err != nil {
				t.Error(err)
				return
			}
			mu.Lock()
			recorded = append(recorded, EventFrom(em.Event()))
			mu.Unlock()
		}()
	}
	wg.Wait()
	if len(recorded) != 1 {
		t.Fatalf("%d decisions recorded, want 1", len(recorded))
	}
	// The recorded decision arrives 3n times under n event ids, racing n forged decisions of
	// the opposite outcome (unsigned, or carrying the recorded decision's signature).
	genuine := recorded[0]
	opposite := map[string]string{TypeTaskCompleted: TypeTaskRejected, TypeTaskRejected: TypeTaskCompleted}[genuine.Type]
	statuses := make(chan Status, 3*n)
	forgedErrs := make(chan error, n)
	for i := range 4 * n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			ev := genuine
			if i >= 3*n {
				ev.ID, ev.Type, ev.Actor = fmt.Sprintf("forged-%d", i), opposite, "mallory"
				if i%2 == 0 {
					ev.Signature = ""
				}
				_, err := h.e.Apply(ctx, ev)
				forgedErrs <- err
				return
			}
			ev.ID = fmt.Sprintf("%s-%d", ev.ID, i%n)
			res, err := h.e.Apply(ctx, ev)
			if err != nil {
				t.Error(err)
			}
			statuses <- res.Status
		}()
	}
	wg.Wait()
	close(statuses)
	close(forgedErrs)
	count := map[Status]int{}
	for s := range statuses {
		count[s]++
	}
	if count[StatusApplied] != 1 || count[StatusApplied]+count[StatusStale]+count[StatusDuplicate] != 3*n {
		t.Fatalf("statuses %v, want exactly one applied, the rest stale or duplicate", count)
	}
	for err := range forgedErrs {
		if !errors.Is(err, ErrForbidden) {
			t.Errorf("a forged decision racing the genuine one: %v, want ErrForbidden", err)
		}
	}
	want := map[string]string{TypeTaskCompleted: "test.cook", TypeTaskRejected: "test.order.failed"}[genuine.Type]
	var moved []string
	for _, e := range h.timeline(t, "big") {
		if e.Kind == "out" && (e.Type == "test.cook" || e.Type == "test.order.failed") {
			moved = append(moved, e.Type)
		}
	}
	if len(moved) != 1 || moved[0] != want {
		t.Errorf("the instance moved %v, want once: %s", moved, want)
	}
}
