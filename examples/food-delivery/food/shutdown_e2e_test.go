//go:build e2e

package food

import (
	"context"
	"fmt"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

func deadLetters(t *testing.T, rdb *redis.Client) []deadletter.Letter {
	t.Helper()
	letters, err := deadletter.NewStore(rdb, deadletter.Options{}).List(context.Background(), deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return letters
}

// TestShutdownDrainsWithoutDeadLetters stops knfaas up with SIGINT while food orders are in
// the middle of their flow (the services' replies and the process manager's K_SINK publishes
// in flight), restarts it on the same Redis, and checks that every order completes or
// compensates with each step issued once, and that nothing was dead-lettered: a graceful
// shutdown must keep the reply and publish paths open until deliveries and functions stopped.
func TestShutdownDrainsWithoutDeadLetters(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: e2ePaths, RedisURL: srv.URL(), RedeliverAfter: 2 * time.Second})

	type order struct {
		amount   float64
		simulate map[string]string
		status   string
		commands string
	}
	happy := "payment.authorize kitchen.prepare courier.deliver order.completed"
	orders := map[string]order{
		"declined":      {amount: 5000, status: "compensated", commands: "payment.authorize order.failed order.compensated"},
		"courier-fails": {amount: 30, simulate: map[string]string{"courier": ModeFail}, status: "compensated", commands: "payment.authorize kitchen.prepare courier.deliver order.failed kitchen.cancel payment.release order.compensated"},
		"approved":      {amount: 250, status: "completed", commands: "payment.authorize tasks.created kitchen.prepare courier.deliver order.completed"},
	}
	for i := range 40 {
		orders[fmt.Sprintf("happy-%d", i)] = order{amount: 20 + float64(i), status: "completed", commands: happy}
	}
	for id, o := range orders {
		placeOrder(t, rt, id, o.amount, o.simulate)
	}

	// SIGINT once kitchens are preparing: their replies (after KITCHEN_DELAY) and the process
	// manager's next commands are then in flight while the runtime shuts down.
	runtimetest.Eventually(t, 3*time.Minute, "an order reached the kitchen", func() bool {
		for id := range orders {
			if status(rdb, id) == "" {
				continue
			}
			if out := commandsOut(t, rdb, id); len(out) >= 2 && out[1] == "kitchen.prepare" {
				return true
			}
		}
		return false
	})
	rt.Stop()
	if !strings.Contains(rt.Output(), "stopped") {
		t.Fatalf("knfaas up did not shut down cleanly:\n%s", rt.Output())
	}
	unfinished := 0
	for id, o := range orders {
		if status(rdb, id) != o.status {
			unfinished++
		}
	}
	t.Logf("%d of %d orders unfinished at shutdown", unfinished, len(orders))
	if unfinished == 0 {
		t.Fatal("every order finished before the shutdown: the test did not interrupt the flow")
	}
	if letters := deadLetters(t, rdb); len(letters) > 0 {
		for _, l := range letters {
			t.Errorf("dead-lettered during shutdown: %s %s → %s (%d)", l.EventType, l.EventID, l.Dest, l.Code)
		}
		t.FailNow()
	}

	rt.Restart()
	runtimetest.Eventually(t, 3*time.Minute, "the approval task is open", func() bool {
		code, _ := decideTask(t, rt, "approved:manager-approval:1", "complete")
		return code == http.StatusOK
	})
	runtimetest.Eventually(t, 3*time.Minute, "every order finished", func() bool {
		for id, o := range orders {
			if status(rdb, id) != o.status {
				return false
			}
		}
		return true
	})
	for id, o := range orders {
		if out := commandsOut(t, rdb, id); strings.Join(out, " ") != o.commands {
			t.Errorf("%s emitted %s\nwant %s (each step once)", id, strings.Join(out, " "), o.commands)
		}
	}
	for _, l := range deadLetters(t, rdb) {
		t.Errorf("dead-lettered: %s %s → %s (%d)", l.EventType, l.EventID, l.Dest, l.Code)
	}
}
