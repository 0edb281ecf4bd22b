//go:build e2e

package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// TestNotifyWhileRedisIsFrozen freezes the real redis-server (SIGSTOP: connections stay open,
// nothing is answered, as a hung Redis does) while a delivery is in flight and events arrive.
// The function uses the production Redis client (REDIS_URL, with its read timeout): each event
// is answered with a 5xx while Redis is still frozen, so the Broker retries it instead of
// waiting on a hung request. After SIGCONT the Broker's retries are accepted, and every event is
// delivered exactly once: the one in flight is not sent again, the refused ones once.
func TestNotifyWhileRedisIsFrozen(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	rdb, err := redisconn.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	var mu sync.Mutex
	got := map[string]int{}
	inFlight, release := make(chan string, 1), make(chan struct{})
	receiver := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		id := r.Header.Get(notify.HeaderID)
		mu.Lock()
		got[id]++
		mu.Unlock()
		if r.Header.Get("ce-id") == "in-flight" {
			inFlight <- id
			<-release
		}
		w.WriteHeader(http.StatusOK)
	}))
	defer receiver.Close()
	t.Setenv("SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	eps, err := notify.Parse([]byte("endpoints:\n- {name: shop, url: '"+receiver.URL+"', types: ['*'], secretEnv: [SECRET]}\n"), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Retention: time.Hour, Poll: 10 * time.Millisecond, Batch: 10, DrainTimeout: 5 * time.Second, schedule: notify.Schedule{time.Second},
		BreakerFailures: 5, BreakerRatio: 0.5, BreakerMinRequests: 20, BreakerWindow: time.Minute, BreakerOpen: time.Second}
	f := New()
	g := &notify.Guard{Loopback: true}
	f.start(cfg, rdb, eps, Client(g), g)
	defer f.Stop(context.Background())
	fn := httptest.NewServer(http.HandlerFunc(f.Handle))
	defer fn.Close()
	post := func(id string) (int, time.Duration) {
		req, _ := http.NewRequest(http.MethodPost, fn.URL, strings.NewReader(`{}`))
		for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": id, "ce-source": "/t", "ce-type": "com.example.order.created", "Content-Type": "application/json"} {
			req.Header.Set(k, v)
		}
		start := time.Now()
		// A safety net far above the client's read timeout: the test must end even if the
		// handler hangs, and then fails below.
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			return 0, time.Since(start)
		}
		resp.Body.Close()
		return resp.StatusCode, time.Since(start)
	}

	if code, _ := post("in-flight"); code != http.StatusAccepted {
		t.Fatalf("event before the freeze answered %d", code)
	}
	var inFlightID string
	select {
	case inFlightID = <-inFlight:
	case <-time.After(30 * time.Second):
		t.Fatal("the first delivery did not start")
	}
	srv.Stop()
	frozen := true
	defer func() {
		if frozen {
			srv.Cont()
		}
	}()
	close(release) // the receiver answers 200 while Redis is frozen: the delivery cannot be recorded yet
	refused := []string{"frozen-1", "frozen-2", "frozen-3"}
	for _, id := range refused {
		code, took := post(id)
		// Redis is still frozen here: the answer came without it.
		if code < 500 {
			t.Errorf("event %s while Redis is frozen answered %d, want a 5xx the Broker retries", id, code)
		}
		t.Logf("event %s answered %d after %s with Redis frozen", id, code, took.Round(10*time.Millisecond))
	}
	srv.Cont()
	frozen = false

	// The Broker retries what was refused; a new event arrives too.
	for _, id := range append(refused, "after") {
		if code, _ := post(id); code != http.StatusAccepted {
			t.Errorf("event %s after SIGCONT answered %d", id, code)
		}
	}
	want := map[string]bool{inFlightID: true}
	for _, id := range append(refused, "after") {
		want[notify.MessageID("/t", id)] = true
	}
	ctx := context.Background()
	deadline := time.Now().Add(30 * time.Second)
	for {
		states := map[string]string{}
		for id := range want {
			st, err := f.store.States(ctx, id)
			if err == nil {
				states[id] = st["shop"]
			}
		}
		done := true
		for _, st := range states {
			done = done && st == notify.StateDelivered
		}
		if done && len(states) == len(want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("states after SIGCONT: %v; want every message delivered", states)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := f.d.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	for id := range want {
		if got[id] != 1 {
			t.Errorf("message %s reached the endpoint %d times, want once", id, got[id])
		}
	}
	if len(got) != len(want) {
		t.Errorf("the endpoint got %d messages, want %d: %v", len(got), len(want), got)
	}
}
