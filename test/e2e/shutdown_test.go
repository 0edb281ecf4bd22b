//go:build e2e

package e2e

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/examples/food-delivery/food"
	"github.com/knfaas/knfaas/internal/deadletter"
	"github.com/knfaas/knfaas/internal/process"
	"github.com/knfaas/knfaas/internal/redistest"
	"github.com/knfaas/knfaas/internal/runtimetest"
)

// foodPaths run the food-delivery example with the platform parts it needs.
var foodPaths = []string{
	"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/320-tasks-auth-secret.yaml", "config/325-tasks-signing-secret.yaml",
	"config/400-deadletter-config.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml",
	"config/600-broker.yaml", "config/700-deadletter.yaml",
	"config/700-timer.yaml", "config/710-timer-sinkbinding.yaml", "config/800-timer-ping.yaml",
	"config/700-tasks.yaml", "config/710-tasks-sinkbinding.yaml",
	"examples/food-delivery",
}

// tasksManagerToken is the bearer token of the tasks API's manager role: the development
// secret knfaas up generated for the template's placeholder.
func tasksManagerToken(t *testing.T, rt *runtimetest.Runtime) string {
	t.Helper()
	return rt.DevSecret("knfaas", "tasks-auth", "tokens", "CHANGE-ME-manager-token-000000")
}

func placeFoodOrder(t *testing.T, rt *runtimetest.Runtime, id string, amount float64, simulate map[string]string) {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id + "-placed")
	e.SetType(food.TypeOrderPlaced)
	e.SetSource("/e2e/shop")
	e.SetSubject(id)
	_ = e.SetData(cloudevents.ApplicationJSON, food.Order{OrderID: id, Amount: amount, Simulate: simulate})
	rt.Send("knfaas", "default", e)
}

// foodProgress returns an instance's status and the short types of the commands it emitted.
func foodProgress(rdb *redis.Client, id string) (string, []string) {
	in, err := process.ReadInstance(context.Background(), rdb, id)
	if err != nil {
		return "", nil
	}
	var out []string
	for _, e := range in.Timeline {
		if e.Kind == "out" {
			out = append(out, strings.TrimPrefix(strings.TrimPrefix(e.Type, "dev.knfaas.example.food."), "dev.knfaas."))
		}
	}
	return in.Status, out
}

func deadLetters(t *testing.T, rdb *redis.Client) []deadletter.Letter {
	t.Helper()
	letters, err := deadletter.NewStore(rdb, deadletter.Options{}).List(context.Background(), deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	return letters
}

func decideFoodTask(t *testing.T, rt *runtimetest.Runtime, taskID, action string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, rt.ServiceURL("knfaas", "tasks")+"/tasks/"+taskID+"/"+action, strings.NewReader(`{"by":"e2e"}`))
	req.Header.Set("Authorization", "Bearer "+tasksManagerToken(t, rt))
	resp, err := rt.Client().Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

// TestShutdownDrainsWithoutDeadLetters stops knfaas up with SIGINT while food orders are in
// the middle of their flow (the services' replies and the process manager's K_SINK publishes
// in flight), restarts it on the same Redis, and checks that every order completes or
// compensates with each step issued once, and that nothing was dead-lettered: a graceful
// shutdown must keep the reply and publish paths open until deliveries and functions stopped.
func TestShutdownDrainsWithoutDeadLetters(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: foodPaths, RedisURL: srv.URL(), RedeliverAfter: 2 * time.Second})

	type order struct {
		amount   float64
		simulate map[string]string
		status   string
		commands string
	}
	happy := "payment.authorize kitchen.prepare courier.deliver order.completed"
	orders := map[string]order{
		"declined":      {amount: 5000, status: "compensated", commands: "payment.authorize order.failed order.compensated"},
		"courier-fails": {amount: 30, simulate: map[string]string{"courier": food.ModeFail}, status: "compensated", commands: "payment.authorize kitchen.prepare courier.deliver order.failed kitchen.cancel payment.release order.compensated"},
		"approved":      {amount: 250, status: "completed", commands: "payment.authorize tasks.created kitchen.prepare courier.deliver order.completed"},
	}
	for i := range 40 {
		orders[fmt.Sprintf("happy-%d", i)] = order{amount: 20 + float64(i), status: "completed", commands: happy}
	}
	for id, o := range orders {
		placeFoodOrder(t, rt, id, o.amount, o.simulate)
	}

	// SIGINT once kitchens are preparing: their replies (after KITCHEN_DELAY) and the process
	// manager's next commands are then in flight while the runtime shuts down.
	runtimetest.Eventually(t, 3*time.Minute, "an order reached the kitchen", func() bool {
		for id := range orders {
			if _, out := foodProgress(rdb, id); len(out) >= 2 && out[1] == "kitchen.prepare" {
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
		if s, _ := foodProgress(rdb, id); s != o.status {
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
		code, _ := decideFoodTask(t, rt, "approved:manager-approval:1", "complete")
		return code == http.StatusOK
	})
	runtimetest.Eventually(t, 3*time.Minute, "every order finished", func() bool {
		for id, o := range orders {
			if s, _ := foodProgress(rdb, id); s != o.status {
				return false
			}
		}
		return true
	})
	for id, o := range orders {
		if _, out := foodProgress(rdb, id); strings.Join(out, " ") != o.commands {
			t.Errorf("%s emitted %s\nwant %s (each step once)", id, strings.Join(out, " "), o.commands)
		}
	}
	for _, l := range deadLetters(t, rdb) {
		t.Errorf("dead-lettered: %s %s → %s (%d)", l.EventType, l.EventID, l.Dest, l.Code)
	}
}
