package food

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"
	"sigs.k8s.io/yaml"

	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// world routes events between the real process engine (on a real redis-server) and the example
// services, the way the Triggers in ../triggers do, with a manual clock for timeouts.
type world struct {
	t        *testing.T
	engine   *process.Engine
	services map[string]func(context.Context, event.Event) (*event.Event, error)
	rdb      *redis.Client
	now      time.Time
	seen     []string // every event type published, in order
	tasks    []string // open task ids
	keys     *process.SigningKeys
	run      func() error
}

func loadDefinition(t *testing.T) *process.Definition {
	t.Helper()
	b, err := os.ReadFile("../config/400-food-process-definitions.yaml")
	if err != nil {
		t.Fatal(err)
	}
	var cm struct{ Data map[string]string }
	if err := yaml.Unmarshal(b, &cm); err != nil {
		t.Fatal(err)
	}
	d, err := process.Parse([]byte(cm.Data["food-order.yaml"]))
	if err != nil {
		t.Fatalf("the example's definition does not validate: %v", err)
	}
	return d
}

func newWorld(t *testing.T, k Kitchen) *world {
	srv := redistest.Start(t, redistest.Options{})
	set, err := process.NewSet(loadDefinition(t))
	if err != nil {
		t.Fatal(err)
	}
	w := &world{t: t, now: time.Date(2026, 1, 1, 18, 0, 0, 0, time.UTC)}
	rdb := srv.Client()
	w.rdb = rdb
	w.keys, err = process.NewSigningKeys("food-test-signing-key-0123456789abcdef", "")
	if err != nil {
		t.Fatal(err)
	}
	w.engine = process.NewEngine(rdb, set, process.Options{Owner: "food-process", Keys: w.keys, Now: func() time.Time { return w.now }})
	p, c := Payment{DeclineAbove: 1000}, Courier{}
	w.services = map[string]func(context.Context, event.Event) (*event.Event, error){
		TypePaymentAuthorize: p.Handle, TypePaymentRelease: p.Handle,
		TypeKitchenPrepare: k.Handle, TypeKitchenCancel: k.Handle,
		TypeCourierDeliver: c.Handle,
	}
	w.run = func() error {
		fired, err := deadline.Take(context.Background(), rdb, w.now, 100)
		if err != nil {
			return err
		}
		for _, f := range fired {
			w.deliver(process.Event{ID: f.ID, Source: "/knfaas/timer", Type: deadline.TypeFired, Subject: f.Payload.Subject, Command: f.Payload.Command})
		}
		return nil
	}
	return w
}

// deliver applies ev and then, like the broker, delivers everything it emitted to the service
// subscribed to it, feeding replies back until the process waits.
func (w *world) deliver(ev process.Event) {
	w.t.Helper()
	res, err := w.engine.Apply(context.Background(), ev)
	if err != nil {
		w.t.Fatalf("apply %s: %v", ev.Type, err)
	}
	var acks []process.Acked
	for _, em := range res.Outbox {
		acks = append(acks, em.Acked(ev.Subject))
		w.seen = append(w.seen, short(em.Type))
		if em.Type == process.TypeTaskCreated {
			w.tasks = append(w.tasks, em.ID)
		}
		if svc, ok := w.services[em.Type]; ok {
			cmd := cloudevents.NewEvent()
			cmd.SetID(em.ID)
			cmd.SetType(em.Type)
			cmd.SetSource(em.Source)
			cmd.SetSubject(em.Subject)
			_ = cmd.SetData(cloudevents.ApplicationJSON, []byte(em.Data))
			r, err := svc(context.Background(), cmd)
			if err != nil {
				w.t.Fatalf("%s: %v", em.Type, err)
			}
			if r != nil {
				defer w.deliver(process.Event{ID: r.ID(), Source: r.Source(), Type: r.Type(), Subject: r.Subject(), Command: fmt.Sprint(r.Extensions()["knfaascommand"]), Data: r.Data()})
			}
		}
	}
	if err := process.Ack(context.Background(), w.rdb, acks...); err != nil {
		w.t.Fatal(err)
	}
}

func short(t string) string {
	return strings.TrimPrefix(strings.TrimPrefix(t, "dev.knfaas.example.food."), "dev.knfaas.")
}

func (w *world) order(id string, amount float64, simulate map[string]string) {
	w.t.Helper()
	data, err := json.Marshal(Order{OrderID: id, Amount: amount, Simulate: simulate})
	if err != nil {
		w.t.Fatal(err)
	}
	w.deliver(process.Event{ID: id + "-placed", Source: "/shop", Type: TypeOrderPlaced, Subject: id, Data: data})
}

// decide records decision on the last task as the tasks API does and delivers its signed reply.
func (w *world) decide(decision string) {
	w.t.Helper()
	ctx := context.Background()
	task, err := process.GetTask(ctx, w.rdb, w.tasks[len(w.tasks)-1])
	if err != nil {
		w.t.Fatal(err)
	}
	d := process.TaskDecision{Task: task.ID, Decision: decision, Actor: "manager", At: w.now.UnixMilli()}
	reply, err := process.DecideTask(ctx, w.rdb, d, process.DecisionReply(*task, d, "/knfaas/tasks", `{}`, w.keys))
	if err != nil {
		w.t.Fatal(err)
	}
	w.deliver(process.EventFrom(reply.Event()))
}

func TestFoodOrders(t *testing.T) {
	tests := []struct {
		name    string
		kitchen Kitchen
		drive   func(w *world)
		want    string
	}{
		{"happy small order", Kitchen{}, func(w *world) { w.order("o1", 25, nil) },
			"payment.authorize kitchen.prepare courier.deliver order.completed"},
		{"large order approved", Kitchen{}, func(w *world) {
			w.order("o2", 250, nil)
			w.decide(process.DecisionCompleted)
		}, "payment.authorize tasks.created kitchen.prepare courier.deliver order.completed"},
		{"large order rejected by the manager", Kitchen{}, func(w *world) {
			w.order("o3", 250, nil)
			w.decide(process.DecisionRejected)
		}, "payment.authorize tasks.created order.failed payment.release order.compensated"},
		{"payment declined", Kitchen{}, func(w *world) { w.order("o4", 5000, nil) },
			"payment.authorize order.failed order.compensated"},
		{"kitchen rejects", Kitchen{}, func(w *world) { w.order("o5", 25, map[string]string{"kitchen": ModeFail}) },
			"payment.authorize kitchen.prepare order.failed payment.release order.compensated"},
		{"kitchen silent: timeout", Kitchen{}, func(w *world) {
			w.order("o6", 25, map[string]string{"kitchen": ModeSilent})
			w.now = w.now.Add(3 * time.Minute)
			if err := w.run(); err != nil {
				t.Fatal(err)
			}
		}, "payment.authorize kitchen.prepare order.failed payment.release order.compensated"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorld(t, tc.kitchen)
			tc.drive(w)
			if got := strings.Join(w.seen, " "); got != tc.want {
				t.Errorf("published %s\nwant      %s", got, tc.want)
			}
		})
	}
}
