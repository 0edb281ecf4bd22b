package cli

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/redistest"
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
