package notify

import (
	"context"
	"net/http"
	"sync/atomic"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestOpenCircuitHoldsMessagesUntilAProbeSucceeds(t *testing.T) {
	var up atomic.Bool
	down := newReceiver(t, func(_ int, w http.ResponseWriter) {
		if up.Load() {
			w.WriteHeader(http.StatusOK)
			return
		}
		w.WriteHeader(http.StatusServiceUnavailable)
	})
	healthy := newReceiver(t, nil)
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	store := NewStore(rdb, time.Hour)
	schedule := Schedule{}
	for range 30 {
		schedule = append(schedule, 20*time.Millisecond)
	}
	settings := breaker.Settings{ConsecutiveFailures: 3, FailureRatio: 1, MinRequests: 1000, Window: time.Minute, OpenFor: 700 * time.Millisecond}
	run := func(eps ...*Endpoint) *Dispatcher {
		d := NewDispatcher(store, deadletter.NewStore(rdb, deadletter.Options{}), eps, Options{Schedule: schedule, Poll: 10 * time.Millisecond, Breaker: settings})
		ctx, cancel := context.WithCancel(context.Background())
		done := make(chan struct{})
		go func() { defer close(done); d.Run(ctx) }()
		t.Cleanup(func() { cancel(); <-done })
		return d
	}
	d := run(endpoint("down", down.URL, 1), endpoint("healthy", healthy.URL, 4))
	ctx := context.Background()
	const n = 10
	for i := range n {
		if _, _, err := store.Enqueue(ctx, newEvent("c"+string(rune('a'+i))), []string{"down", "healthy"}, "", time.Now()); err != nil {
			t.Fatal(err)
		}
	}
	d.Wake()
	eventually(t, "the circuit opens", func() bool {
		st, _ := ReadBreaker(ctx, rdb, "down")
		return st.State == "open"
	})
	openedAt := time.Now()
	// A second instance (a cold start) sees the open circuit too and sends nothing.
	second := run(endpoint("down", down.URL, 1), endpoint("healthy", healthy.URL, 4))
	second.Wake()
	atOpen := down.count()
	eventually(t, "the healthy endpoint got every message", func() bool { return healthy.count() == n })
	// 3 failures trip it. How many went through the closed circuit is checked below from the
	// attempts log: a count taken here could already include a half-open probe when the machine
	// is slow enough for OpenFor to pass between the open circuit being seen and this line.
	if atOpen < 3 {
		t.Errorf("%d attempts before the circuit opened, want at least 3", atOpen)
	}
	// Probes keep failing while it is down: about one per OpenFor, not one per message every
	// 20ms as the schedule alone would send. The bound grows with the time that really passed,
	// so a slow machine cannot fail it; which attempts were probes the attempts log says below.
	eventually(t, "a half-open probe", func() bool { return down.count() > atOpen })
	time.Sleep(1500 * time.Millisecond)
	probes := down.count() - atOpen
	elapsed := time.Since(openedAt)
	if most := int(elapsed/settings.OpenFor) + 2; probes > most {
		t.Errorf("%d probes in %s with OpenFor %s, want at most %d", probes, elapsed, settings.OpenFor, most)
	}
	up.Store(true)
	eventually(t, "every message is delivered once the probe succeeds", func() bool {
		for i := range n {
			e := newEvent("c" + string(rune('a'+i)))
			st, _ := store.States(ctx, MessageID(e.Source(), e.ID()))
			if st["down"] != StateDelivered {
				return false
			}
		}
		return true
	})
	if st, _ := ReadBreaker(ctx, rdb, "down"); st.State != "closed" {
		t.Errorf("circuit %+v after the endpoint came back", st)
	}
	if letters, _ := deadletter.NewStore(rdb, deadletter.Options{}).List(ctx, deadletter.Filter{}); len(letters) != 0 {
		t.Errorf("%d dead letters: waiting at an open circuit must not use up attempts", len(letters))
	}
	// Nothing reached the endpoint while its circuit was open: every failed attempt was let
	// through either before the circuit opened (closed) or as the one half-open probe.
	var failedClosed, failedProbes int
	for i := range n {
		e := newEvent("c" + string(rune('a'+i)))
		attempts, _ := store.Attempts(ctx, MessageID(e.Source(), e.ID()), "down")
		for _, a := range attempts {
			if a.Breaker == "" {
				t.Errorf("attempt %+v does not say the circuit's state", a)
			}
			if a.Status != http.StatusServiceUnavailable {
				continue
			}
			switch a.Breaker {
			case "closed":
				failedClosed++
			case "half-open probe":
				failedProbes++
			default:
				t.Errorf("attempt %+v reached the endpoint with the circuit %q", a, a.Breaker)
			}
		}
	}
	if failedClosed < 3 || failedClosed > 3+1 { // one attempt in flight may finish after it opens
		t.Errorf("%d failed attempts went through a closed circuit; it opens after 3", failedClosed)
	}
	if failedProbes < 1 {
		t.Errorf("no failed half-open probe logged, though %d probes reached the endpoint", probes)
	}
}
