//go:build e2e

package food

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// managerToken is the manager's bearer token: the development secret knfaas up generated for
// the placeholder in config/320-tasks-auth-secret.yaml.
func managerToken(t testing.TB, rt *runtimetest.Runtime) string {
	t.Helper()
	return rt.DevSecret("knfaas", "tasks-auth", "tokens", "CHANGE-ME-manager-token-000000")
}

var e2ePaths = []string{
	"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/320-tasks-auth-secret.yaml", "config/325-tasks-signing-secret.yaml",
	"config/400-deadletter-config.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml",
	"config/600-broker.yaml", "config/700-deadletter.yaml",
	"config/700-timer.yaml", "config/710-timer-sinkbinding.yaml", "config/800-timer-ping.yaml",
	"config/700-tasks.yaml", "config/710-tasks-sinkbinding.yaml",
	"examples/food-delivery",
}

func placeOrder(t *testing.T, rt *runtimetest.Runtime, id string, amount float64, simulate map[string]string) {
	t.Helper()
	e := cloudevents.NewEvent()
	e.SetID(id + "-placed")
	e.SetType(TypeOrderPlaced)
	e.SetSource("/e2e/shop")
	e.SetSubject(id)
	_ = e.SetData(cloudevents.ApplicationJSON, Order{OrderID: id, Amount: amount, Simulate: simulate})
	rt.Send("knfaas", "default", e)
}

func status(rdb *redis.Client, id string) string {
	in, err := process.ReadInstance(context.Background(), rdb, id)
	if err != nil {
		return ""
	}
	return in.Status
}

// commandsOut lists the types an instance emitted, in order.
func commandsOut(t *testing.T, rdb *redis.Client, id string) []string {
	t.Helper()
	in, err := process.ReadInstance(context.Background(), rdb, id)
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, e := range in.Timeline {
		if e.Kind == "out" {
			out = append(out, short(e.Type))
		}
	}
	return out
}

func decideTask(t *testing.T, rt *runtimetest.Runtime, taskID, action string) (int, string) {
	t.Helper()
	req, _ := http.NewRequest(http.MethodPost, rt.ServiceURL("knfaas", "tasks")+"/tasks/"+taskID+"/"+action, strings.NewReader(`{"by":"e2e"}`))
	req.Header.Set("Authorization", "Bearer "+managerToken(t, rt))
	resp, err := rt.Client().Do(req)
	if err != nil {
		return 0, err.Error()
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func openTasks(t *testing.T, rt *runtimetest.Runtime) []process.Task {
	req, _ := http.NewRequest(http.MethodGet, rt.ServiceURL("knfaas", "tasks")+"/tasks?process=food-order", nil)
	req.Header.Set("Authorization", "Bearer "+managerToken(t, rt))
	resp, err := rt.Client().Do(req)
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var body struct{ Tasks []process.Task }
	_ = json.NewDecoder(resp.Body).Decode(&body)
	return body.Tasks
}

// TestFoodDeliveryThroughKnfaasUp runs the example under knfaas up on a real redis-server, kills
// the runtime while orders are in flight, restarts it, and checks that every instance completes
// or compensates as its scenario says, each step issued once.
func TestFoodDeliveryThroughKnfaasUp(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: e2ePaths, RedisURL: srv.URL(), RedeliverAfter: 2 * time.Second})

	want := map[string]string{}
	for i := range 15 {
		id := fmt.Sprintf("happy-%d", i)
		placeOrder(t, rt, id, 20+float64(i), nil)
		want[id] = "completed"
	}
	placeOrder(t, rt, "declined", 5000, nil)
	want["declined"] = "compensated"
	placeOrder(t, rt, "courier-fails", 30, map[string]string{"courier": ModeFail})
	want["courier-fails"] = "compensated"
	placeOrder(t, rt, "kitchen-silent", 30, map[string]string{"kitchen": ModeSilent})
	want["kitchen-silent"] = "compensated"
	placeOrder(t, rt, "approved", 250, nil)
	want["approved"] = "completed"
	placeOrder(t, rt, "rejected", 260, nil)
	want["rejected"] = "compensated"

	// Kill the runtime (and every function) while instances are mid-way, then restart it.
	runtimetest.Eventually(t, 3*time.Minute, "first instances started", func() bool { return status(rdb, "happy-0") != "" })
	rt.Kill()
	rt.Restart()

	runtimetest.Eventually(t, 3*time.Minute, "approval tasks open", func() bool { return len(openTasks(t, rt)) == 2 })
	// Anyone can post to the Broker: forged approvals of the order the manager will reject are
	// refused by food-process (403, dead-lettered) and change nothing.
	for i, sig := range []string{"", "v1=" + strings.Repeat("ab", 32)} {
		e := cloudevents.NewEvent()
		e.SetID(fmt.Sprintf("forged-%d", i))
		e.SetType(process.TypeTaskCompleted)
		e.SetSource("/e2e/attacker")
		e.SetSubject("rejected")
		e.SetExtension("knfaasowner", "food-process")
		e.SetExtension(process.ExtCommand, "rejected:manager-approval:1")
		e.SetExtension(process.ExtActor, "manager")
		e.SetExtension(process.ExtDecided, "1767268800000")
		if sig != "" {
			e.SetExtension(process.ExtSignature, sig)
		}
		rt.Send("knfaas", "default", e)
	}
	runtimetest.Eventually(t, time.Minute, "forged approvals refused and dead-lettered", func() bool {
		return rdb.ZCard(context.Background(), "knfaas:deadletter:index:code:403").Val() == 2
	})
	if code, body := decideTask(t, rt, "approved:manager-approval:1", "complete"); code != 200 {
		t.Fatalf("completing the approval: %d %s", code, body)
	}
	if code, body := decideTask(t, rt, "rejected:manager-approval:1", "reject"); code != 200 {
		t.Fatalf("rejecting the approval: %d %s", code, body)
	}
	if code, _ := decideTask(t, rt, "approved:manager-approval:1", "complete"); code != 409 {
		t.Errorf("completing a task twice answered %d, want 409", code)
	}

	// kitchen-silent needs its 2m deadline fired by a minute tick: up to ~3 minutes.
	runtimetest.Eventually(t, 6*time.Minute, "every instance finished", func() bool {
		for id, s := range want {
			if status(rdb, id) != s {
				return false
			}
		}
		return true
	})

	scenarios := map[string]string{
		"happy-0":        "payment.authorize kitchen.prepare courier.deliver order.completed",
		"approved":       "payment.authorize tasks.created kitchen.prepare courier.deliver order.completed",
		"rejected":       "payment.authorize tasks.created order.failed payment.release order.compensated",
		"declined":       "payment.authorize order.failed order.compensated",
		"courier-fails":  "payment.authorize kitchen.prepare courier.deliver order.failed kitchen.cancel payment.release order.compensated",
		"kitchen-silent": "payment.authorize kitchen.prepare order.failed payment.release order.compensated",
	}
	for id, w := range scenarios {
		if got := strings.Join(commandsOut(t, rdb, id), " "); got != w {
			t.Errorf("%s emitted %s\nwant %s", id, got, w)
		}
	}
	for i := range 15 {
		id := fmt.Sprintf("happy-%d", i)
		if got := strings.Join(commandsOut(t, rdb, id), " "); got != scenarios["happy-0"] {
			t.Errorf("%s emitted %s (each step once)", id, got)
		}
	}
	in, err := process.ReadInstance(context.Background(), rdb, "approved")
	if err != nil {
		t.Fatal(err)
	}
	actor := ""
	for _, e := range in.Timeline {
		if e.Type == process.TypeTaskCompleted {
			actor = e.Actor
		}
	}
	if actor != "manager" {
		t.Errorf("timeline records the approval by %q, want manager", actor)
	}
}
