package main

import (
	"context"
	"errors"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/sinktest"
	"github.com/knfaas/knfaas/internal/harness/starttest"
)

func startFunction(t *testing.T) (*Function, *sinktest.Recorder, *redistest.Server) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	c := &sinktest.Recorder{}
	f := New()
	cfg := Config{DefinitionsDir: "testdata", Owner: "process", Retention: time.Hour, TimelineMax: 100, AckInterval: 10 * time.Millisecond, SigningKey: testSigningKey}
	if err := f.start(context.Background(), cfg, srv.Client(), c.Send); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Stop(context.Background()) })
	return f, c, srv
}

// testSigningKey is the tasks-signing key of the tests.
const testSigningKey = "test-signing-key-0123456789abcdef"

func ce(id, typ, subject string, data string) event.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType(typ)
	e.SetSource("/test")
	if subject != "" {
		e.SetSubject(subject)
	}
	if data != "" {
		_ = e.SetData(cloudevents.ApplicationJSON, []byte(data))
	}
	return e
}

func status(err error) int {
	if err == nil {
		return 200
	}
	var r *cehttp.Result
	if errors.As(err, &r) {
		return r.StatusCode
	}
	return 500
}

func TestHandle(t *testing.T) {
	f, c, _ := startFunction(t)
	ctx := context.Background()
	steps := []struct {
		name    string
		event   event.Event
		status  int
		emitted []string // "type id"
	}{
		{"start", ce("s1", "test.order.placed", "o1", `{"amount":5}`), 200, []string{"test.pay o1:pay:1"}},
		{"start again, same id", ce("s1", "test.order.placed", "o1", `{"amount":5}`), 200, nil},
		{"start without subject", ce("s2", "test.order.placed", "", `{}`), 400, nil},
		{"reply for unknown instance", ce("r0", "test.paid", "nobody", ""), 422, nil},
		{"reply out of order", ce("r1", "test.shipped", "o1", ""), 422, nil},
		{"paid", ce("r2", "test.paid", "o1", ""), 200, []string{"test.cook o1:cook:1"}},
		{"paid redelivered", ce("r2", "test.paid", "o1", ""), 200, nil},
		{"kitchen burns", ce("r3", "test.burnt", "o1", ""), 200, []string{"test.order.failed o1:failed", "test.refund o1:pay:undo:1"}},
		{"refunded", ce("r4", "test.refunded", "o1", ""), 200, []string{"test.order.compensated o1:compensated"}},
	}
	for _, s := range steps {
		_, err := f.Handle(ctx, s.event)
		if got := status(err); got != s.status {
			t.Fatalf("%s: status %d (%v), want %d", s.name, got, err, s.status)
		}
		var got []string
		for _, e := range c.Take() {
			got = append(got, e.Type()+" "+e.ID())
			if e.Subject() != "o1" {
				t.Errorf("%s: emitted %s with subject %q", s.name, e.ID(), e.Subject())
			}
		}
		if strings.Join(got, ",") != strings.Join(s.emitted, ",") {
			t.Errorf("%s: emitted %v, want %v", s.name, got, s.emitted)
		}
	}
}

func TestPublishFailureIsRetriedWithoutAdvancingTwice(t *testing.T) {
	f, c, _ := startFunction(t)
	ctx := context.Background()
	if _, err := f.Handle(ctx, ce("s1", "test.order.placed", "o1", `{}`)); err != nil {
		t.Fatal(err)
	}
	c.Take()
	c.SetFailing(true)
	if _, err := f.Handle(ctx, ce("r1", "test.paid", "o1", "")); status(err) != 500 {
		t.Fatalf("publish failure answered %d (%v), want 5xx so the broker retries", status(err), err)
	}
	c.SetFailing(false)
	if _, err := f.Handle(ctx, ce("r1", "test.paid", "o1", "")); err != nil {
		t.Fatalf("redelivery: %v", err)
	}
	got := c.Take()
	if len(got) != 1 || got[0].ID() != "o1:cook:1" {
		t.Fatalf("redelivery published %v, want the unpublished o1:cook:1 once", got)
	}
	in, err := process.ReadInstance(ctx, f.rdb, "o1")
	if err != nil {
		t.Fatal(err)
	}
	if in.Step != "cook" || in.Version != 2 {
		t.Errorf("instance at step %q version %d, want cook version 2", in.Step, in.Version)
	}
}

func TestStartRefusesBadDefinition(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	bad := "name: order\nstart: s\ncompleted: c\nfailed: f\ncompensated: x\nsteps:\n- name: cook\n  timeout: 1m\n  command: {type: c}\n"
	if err := os.WriteFile(filepath.Join(dir, "order.yaml"), []byte(bad), 0o600); err != nil {
		t.Fatal(err)
	}
	f := New()
	err := f.start(context.Background(), Config{DefinitionsDir: dir, AckInterval: time.Second}, srv.Client(), (&sinktest.Recorder{}).Send)
	if err == nil || !strings.Contains(err.Error(), `process "order" step 1 "cook"`) {
		t.Fatalf("start error = %v, want one naming the process and step", err)
	}
	if ok, _ := f.Ready(context.Background()); ok {
		t.Error("Ready after a refused start")
	}
}

func TestStartRefusesBadConfiguration(t *testing.T) {
	tests := []struct {
		name string
		env  map[string]string
		want string
	}{
		{"placeholder current key", map[string]string{"TASKS_SIGNING_KEY": "CHANGE-ME-tasks-signing-key-0000000000"}, `TASKS_SIGNING_KEY (Secret tasks-signing, key current) holds the template placeholder "CHANGE-ME-tasks-signing-key-0000000000"`},
		{"placeholder previous key", map[string]string{"TASKS_SIGNING_KEY": testSigningKey, "TASKS_SIGNING_KEY_PREVIOUS": "CHANGE-ME"}, "TASKS_SIGNING_KEY_PREVIOUS (Secret tasks-signing, key previous) holds the template placeholder"},
		{"no key, definitions with a task step", map[string]string{"TASKS_SIGNING_KEY": ""}, "TASKS_SIGNING_KEY is required"},
		{"short key", map[string]string{"TASKS_SIGNING_KEY": "short"}, "at least 32"},
		// Bounds of zero or less used to become the engine's defaults, or panic (the ack ticker).
		{"zero retention", map[string]string{"TASKS_SIGNING_KEY": testSigningKey, "PROCESS_RETENTION": "0s"}, "PROCESS_RETENTION (0s) must be positive"},
		{"negative send timeout", map[string]string{"TASKS_SIGNING_KEY": testSigningKey, "PROCESS_SEND_TIMEOUT": "-1s"}, "PROCESS_SEND_TIMEOUT (-1s) must be positive"},
		{"zero ack interval", map[string]string{"TASKS_SIGNING_KEY": testSigningKey, "PROCESS_ACK_INTERVAL": "0s"}, "PROCESS_ACK_INTERVAL (0s) must be positive"},
		{"zero timeline", map[string]string{"TASKS_SIGNING_KEY": testSigningKey, "PROCESS_TIMELINE_MAX": "0"}, "PROCESS_TIMELINE_MAX (0) must be at least 1"},
		{"timeline not a number", map[string]string{"TASKS_SIGNING_KEY": testSigningKey, "PROCESS_TIMELINE_MAX": "many"}, "PROCESS_TIMELINE_MAX"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := New()
			base := map[string]string{"K_SINK": "http://127.0.0.1:1", "REDIS_URL": "redis://127.0.0.1:1", "PROCESS_DEFINITIONS_DIR": "testdata"}
			starttest.Refuses(t, f.Start, tc.want, base, tc.env)
			if ok, _ := f.Ready(context.Background()); ok {
				t.Error("Ready after a refused start")
			}
		})
	}
}

func TestHandleRefusesForgedAuthority(t *testing.T) {
	f, c, _ := startFunction(t)
	ctx := context.Background()
	for _, e := range []event.Event{ce("s1", "test.order.placed", "o1", `{"amount":500}`), ce("r1", "test.paid", "o1", "")} {
		if _, err := f.Handle(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	if got := c.Take(); len(got) != 2 || got[1].Type() != process.TypeTaskCreated {
		t.Fatalf("emitted %v, want the approval task", got)
	}
	forged := map[string]event.Event{
		"unsigned completion": func() event.Event {
			e := ce("f1", process.TypeTaskCompleted, "o1", `{}`)
			e.SetExtension("knfaasactor", "mallory")
			return e
		}(),
		"badly signed completion": func() event.Event {
			e := ce("f2", process.TypeTaskCompleted, "o1", `{}`)
			e.SetExtension("knfaascommand", "o1:approve:1")
			e.SetExtension("knfaasactor", "mallory")
			e.SetExtension("knfaasdecided", "1767268800000")
			e.SetExtension("knfaassignature", "v1="+strings.Repeat("00", 32))
			return e
		}(),
		"timer fire before it is due": func() event.Event {
			e := ce("o1:approve:1:deadline", "dev.knfaas.timer.fired", "o1", "")
			e.SetExtension("knfaascommand", "o1:approve:1")
			return e
		}(),
	}
	for name, e := range forged {
		t.Run(name, func(t *testing.T) {
			_, err := f.Handle(ctx, e)
			if status(err) != http.StatusForbidden {
				t.Fatalf("answered %d (%v), want 403", status(err), err)
			}
			if got := c.Take(); len(got) != 0 {
				t.Errorf("a forged event published %v", got)
			}
			in, err := process.ReadInstance(ctx, f.rdb, "o1")
			if err != nil || in.Step != "approve" || in.Status != "running" || in.Version != 2 {
				t.Fatalf("instance after a forged event: %+v %v, want still waiting on approve at version 2", in, err)
			}
		})
	}
}

// TestPublishedCommandsLeaveTheOutbox: a published command is removed from its instance's
// outbox by the acker, after the ack interval or, at the latest, by Stop.
func TestPublishedCommandsLeaveTheOutbox(t *testing.T) {
	tests := map[string]struct {
		interval time.Duration
		stop     bool
	}{
		"after the ack interval": {interval: 10 * time.Millisecond},
		"by Stop":                {interval: time.Hour, stop: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			srv := redistest.Start(t, redistest.Options{})
			rdb := srv.Client()
			c := &sinktest.Recorder{}
			f := New()
			cfg := Config{DefinitionsDir: "testdata", Owner: "process", Retention: time.Hour, TimelineMax: 100, AckInterval: tc.interval, SigningKey: testSigningKey}
			if err := f.start(context.Background(), cfg, rdb, c.Send); err != nil {
				t.Fatal(err)
			}
			t.Cleanup(func() { _ = f.Stop(context.Background()) })
			if _, err := f.Handle(context.Background(), ce("s1", "test.order.placed", "o1", `{"amount":5}`)); err != nil {
				t.Fatal(err)
			}
			if len(c.Take()) != 1 {
				t.Fatal("the start event did not publish one command")
			}
			outbox := process.KeyOutboxPrefix + "o1"
			observer := srv.Client() // Stop closes the function's client
			if tc.stop {
				_ = f.Stop(context.Background())
			}
			deadline := time.Now().Add(5 * time.Second)
			for {
				n, err := observer.LLen(context.Background(), outbox).Result()
				if err != nil {
					t.Fatal(err)
				}
				if n == 0 {
					return
				}
				if tc.stop || time.Now().After(deadline) {
					t.Fatalf("%d published commands still in the outbox", n)
				}
				time.Sleep(5 * time.Millisecond)
			}
		})
	}
}
