package cli

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestProcessCommands(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	d, err := process.Parse([]byte(`name: order
start: order.placed
completed: order.completed
failed: order.failed
compensated: order.compensated
steps:
- name: pay
  timeout: 1m
  command: {type: pay, success: [paid]}
`))
	if err != nil {
		t.Fatal(err)
	}
	set, _ := process.NewSet(d)
	e := process.NewEngine(srv.Client(), set, process.Options{Now: func() time.Time { return time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC) }})
	for _, ev := range []process.Event{
		{ID: "1", Source: "/t", Type: "order.placed", Subject: "o-7"},
		{ID: "2", Source: "/t", Type: "paid", Subject: "o-7", Actor: "svc"},
	} {
		if _, err := e.Apply(context.Background(), ev); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name    string
		args    []string
		want    []string
		wantErr string
	}{
		{"list", []string{"process", "list"}, []string{"INSTANCE", "o-7", "order", "completed"}, ""},
		{"show", []string{"process", "show", "o-7"}, []string{"Status:   completed", "o-7:pay:1", "scheduled", "paid", "order.completed"}, ""},
		{"show json", []string{"process", "show", "o-7", "-o", "json"}, []string{`"timeline": [`, `"created": "2026-01-01T00:00:00.000Z"`}, ""},
		{"show yaml", []string{"process", "show", "o-7", "-o", "yaml"}, []string{"timeline:\n", "status: completed"}, ""},
		{"list quiet", []string{"process", "list", "-q"}, []string{"o-7\n"}, ""},
		{"show unknown", []string{"process", "show", "nope"}, nil, `no process instance "nope"`},
		{"bad output", []string{"process", "list", "-o", "xml"}, nil, "--output"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := NewRootCommand("knfaas")
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(tc.args)
			err := root.Execute()
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}
