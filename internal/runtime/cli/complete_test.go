package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// TestIDCompletion: letter and instance ids complete from the Redis the command would read,
// with a description, and without the ids already given.
func TestIDCompletion(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	ids := seedLetters(t, deadletter.NewStore(srv.Client(), deadletter.Options{}),
		[3]string{"e1", "com.example.order", "503"}, [3]string{"e2", "com.example.refund", "404"})
	d, err := process.Parse([]byte("name: order\nstart: order.placed\ncompleted: order.completed\nfailed: order.failed\ncompensated: order.compensated\nsteps:\n- name: pay\n  timeout: 1m\n  command: {type: pay, success: [paid]}\n"))
	if err != nil {
		t.Fatal(err)
	}
	set, _ := process.NewSet(d)
	e := process.NewEngine(srv.Client(), set, process.Options{Now: func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }})
	if _, err := e.Apply(context.Background(), process.Event{ID: "1", Source: "/t", Type: "order.placed", Subject: "o-7"}); err != nil {
		t.Fatal(err)
	}
	list, err := process.ListInstances(context.Background(), srv.Client(), 10)
	if err != nil || len(list) != 1 {
		t.Fatalf("instances %v, %v", list, err)
	}
	tests := []struct {
		name    string
		args    []string
		want    []string
		notWant []string
	}{
		{"dlq show", []string{"__complete", "dlq", "show", ""}, []string{ids[0] + "\tcom.example.order 503", ids[1] + "\tcom.example.refund 404"}, nil},
		{"dlq redrive, one given", []string{"__complete", "dlq", "redrive", ids[0], ""}, []string{ids[1] + "\t"}, []string{ids[0] + "\t"}},
		{"process show", []string{"__complete", "process", "show", ""}, []string{list[0].ID + "\torder "}, nil},
		{"process show, one given", []string{"__complete", "process", "show", list[0].ID, ""}, nil, []string{list[0].ID + "\t"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("completions lack %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("completions offer %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestRunCompletion: --addr completes with the live runs of knfaas up, the service of logs and
// --service with the run's Services (a bare name only when unique), --broker with the Brokers
// that have a stream in Redis, and up's --log-level and --log-format with their values.
func TestRunCompletion(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	for _, ref := range []string{"knfaas/default", "shop/orders"} {
		if err := srv.Client().XAdd(context.Background(), &redis.XAddArgs{Stream: broker.StreamKey(strings.Split(ref, "/")[0], strings.Split(ref, "/")[1]), Values: []string{"k", "v"}}).Err(); err != nil {
			t.Fatal(err)
		}
	}
	state := t.TempDir()
	logs := filepath.Join(t.TempDir(), "logs")
	for _, svc := range []string{"knfaas/deadletter", "knfaas/process", "shop/process"} {
		ns, name, _ := strings.Cut(svc, "/")
		if err := os.MkdirAll(filepath.Join(logs, ns), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(embedded.ServiceLogFile(logs, ns, name), nil, 0o600); err != nil {
			t.Fatal(err)
		}
	}
	fakeRun(t, state, true, embedded.Endpoints{Addr: "127.0.0.1:18080", RedisURL: srv.URL(), PID: 4242, Started: time.Now(), Logs: logs})
	fakeRun(t, state, false, embedded.Endpoints{Addr: "127.0.0.1:18081", PID: 4343, Started: time.Now()})

	tests := []struct {
		name    string
		args    []string
		want    []string
		notWant []string
	}{
		{"addr of the live run only", []string{"__complete", "send", "--state-dir", state, "--addr", ""}, []string{"127.0.0.1:18080\tpid 4242, started "}, []string{"18081"}},
		{"logs service", []string{"__complete", "logs", "--state-dir", state, ""},
			[]string{"knfaas/deadletter\n", "knfaas/process\n", "shop/process\n", "deadletter\tknfaas/deadletter"}, []string{"process\tknfaas/process"}},
		{"logs takes one service", []string{"__complete", "logs", "--state-dir", state, "knfaas/process", ""}, nil, []string{"deadletter"}},
		{"send --service", []string{"__complete", "send", "--state-dir", state, "--service", ""}, []string{"knfaas/deadletter\n", "shop/process\n"}, nil},
		{"events replay --service", []string{"__complete", "events", "replay", "--state-dir", state, "--service", ""}, []string{"knfaas/process\n"}, nil},
		{"send --broker", []string{"__complete", "send", "--broker", ""}, []string{"knfaas/default\n", "shop/orders\n"}, nil},
		{"dlq redrive --broker", []string{"__complete", "dlq", "redrive", "--broker", ""}, []string{"knfaas/default\n"}, nil},
		{"events replay --broker", []string{"__complete", "events", "replay", "--broker", ""}, []string{"shop/orders\n"}, nil},
		{"up --log-level", []string{"__complete", "up", "--log-level", ""}, []string{"debug\n", "info\n", "warn\n", "error\n"}, nil},
		{"up --log-format", []string{"__complete", "up", "--log-format", ""}, []string{"json\n", "text\n"}, nil},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("completions lack %q:\n%s", w, out)
				}
			}
			for _, w := range tc.notWant {
				if strings.Contains(out, w) {
					t.Errorf("completions offer %q:\n%s", w, out)
				}
			}
		})
	}
}
