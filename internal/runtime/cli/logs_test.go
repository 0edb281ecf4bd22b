package cli

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// writeServiceLog writes records (received at base + i seconds) to namespace/name's log file.
func writeServiceLog(t *testing.T, dir, namespace, name, suffix string, base time.Time, lines ...string) {
	t.Helper()
	path := embedded.ServiceLogFile(dir, namespace, name) + suffix
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		t.Fatal(err)
	}
	var b strings.Builder
	for i, l := range lines {
		fmt.Fprintf(&b, "%s %s\n", base.Add(time.Duration(i)*time.Second).UTC().Format(time.RFC3339Nano), l)
	}
	if err := os.WriteFile(path, []byte(b.String()), 0o600); err != nil {
		t.Fatal(err)
	}
}

func TestPrintServiceLogs(t *testing.T) {
	base := time.Date(2026, 11, 29, 12, 0, 0, 0, time.UTC)
	dir := t.TempDir()
	writeServiceLog(t, dir, "knfaas", "process", ".1", base, "p1", "p2")
	writeServiceLog(t, dir, "knfaas", "process", "", base.Add(time.Minute), "p3", "p4", "p5")
	writeServiceLog(t, dir, "knfaas", "timer", "", base, "t1")
	writeServiceLog(t, dir, "shop", "timer", "", base, "s1")
	now := func() time.Time { return base.Add(time.Minute + 2*time.Second) }

	tests := map[string]struct {
		ref  string
		opts logsOptions
		want []string
		err  string // what the error says; "" when the lines are printed
	}{
		"all lines, the rotated file first": {ref: "process", opts: logsOptions{tail: -1}, want: []string{"p1", "p2", "p3", "p4", "p5"}},
		"tail":                              {ref: "process", opts: logsOptions{tail: 2}, want: []string{"p4", "p5"}},
		"tail reaching into the rotated file": {
			ref: "knfaas/process", opts: logsOptions{tail: 4}, want: []string{"p2", "p3", "p4", "p5"},
		},
		"tail 0":             {ref: "process", opts: logsOptions{tail: 0}},
		"since":              {ref: "process", opts: logsOptions{tail: -1, since: 1500 * time.Millisecond}, want: []string{"p4", "p5"}},
		"since and tail":     {ref: "process", opts: logsOptions{tail: 1, since: time.Hour}, want: []string{"p5"}},
		"namespace/name":     {ref: "shop/timer", opts: logsOptions{tail: -1}, want: []string{"s1"}},
		"unknown service":    {ref: "payments", opts: logsOptions{tail: -1}, err: `no service "payments" in this knfaas up; its services: knfaas/process, knfaas/timer, shop/timer`},
		"unknown namespace":  {ref: "other/process", opts: logsOptions{tail: -1}, err: `no service "other/process"`},
		"ambiguous name":     {ref: "timer", opts: logsOptions{tail: -1}, err: `service "timer" is ambiguous: knfaas/timer, shop/timer; name it namespace/name`},
		"a name is no match": {ref: "proc", opts: logsOptions{tail: -1}, err: `no service "proc"`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			tc.opts.now = now
			var out bytes.Buffer
			err := printServiceLogs(context.Background(), &out, dir, tc.ref, tc.opts)
			if tc.err != "" {
				if err == nil || !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("error = %v, want one containing %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := strings.Fields(out.String())
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("lines = %q, want %q", got, tc.want)
			}
		})
	}
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (s *syncBuffer) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.Write(p)
}

func (s *syncBuffer) String() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.b.String()
}

// TestFollowServiceLogs follows a service while the runtime appends to its log and rotates
// it, and stops when the run's logs directory goes away (the run exited).
func TestFollowServiceLogs(t *testing.T) {
	base := time.Now().Add(-time.Hour)
	runDir := t.TempDir()
	dir := filepath.Join(runDir, embedded.LogsDir)
	writeServiceLog(t, dir, "knfaas", "process", "", base, "old1", "old2")
	path := embedded.ServiceLogFile(dir, "knfaas", "process")
	appendLine := func(line string) {
		f, err := os.OpenFile(path, os.O_APPEND|os.O_WRONLY|os.O_CREATE, 0o600)
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintf(f, "%s %s\n", time.Now().UTC().Format(time.RFC3339Nano), line)
		_ = f.Close()
	}
	var out syncBuffer
	done := make(chan error, 1)
	go func() {
		done <- printServiceLogs(context.Background(), &out, dir, "process", logsOptions{follow: true, tail: 1, poll: 5 * time.Millisecond})
	}()
	waitFor := func(want string) {
		t.Helper()
		deadline := time.Now().Add(10 * time.Second)
		for !strings.Contains(out.String(), want) {
			if time.Now().After(deadline) {
				t.Fatalf("output %q never had %q", out.String(), want)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	waitFor("old2\n")
	appendLine("new1")
	waitFor("new1\n")
	// The runtime rotates: the file becomes .1 (with one more line written just before), and a
	// new file starts.
	appendLine("new2")
	if err := os.Rename(path, path+".1"); err != nil {
		t.Fatal(err)
	}
	appendLine("new3")
	waitFor("new3\n")
	if err := os.RemoveAll(dir); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatal(err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("following did not stop when the run's logs were removed")
	}
	if got, want := out.String(), "old2\nnew1\nnew2\nnew3\n"; got != want {
		t.Errorf("output = %q, want %q", got, want)
	}
}
