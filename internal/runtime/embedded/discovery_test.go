package embedded

import (
	"errors"
	"path/filepath"
	"strings"
	"testing"
	"time"
)

func TestDiscover(t *testing.T) {
	t0 := time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC)
	// run makes a run directory under dir: live keeps its lock held (as a running up does),
	// otherwise the lock is released as by a run that died; ep, if set, is its record.
	run := func(t *testing.T, dir string, live bool, ep *Endpoints) {
		t.Helper()
		d, _, err := NewRunDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		if ep != nil {
			if err := WriteEndpoints(d.Path, *ep); err != nil {
				t.Fatal(err)
			}
		}
		if live {
			t.Cleanup(func() { _ = d.Remove() })
		} else {
			d.lock.Close()
		}
	}
	a := Endpoints{Addr: "127.0.0.1:8080", Internal: "http://127.0.0.1:41000/_knfaas/T", RedisURL: "redis://127.0.0.1:6379", PID: 11, Started: t0}
	b := Endpoints{Addr: "127.0.0.1:9090", Internal: "http://127.0.0.1:42000/_knfaas/U", RedisURL: "redis://127.0.0.1:6380", PID: 12, Started: t0.Add(time.Minute)}
	tests := []struct {
		name    string
		setup   func(t *testing.T, dir string)
		addr    string
		want    Endpoints
		wantErr []string // all in the error; ErrNoRun is checked when the first is "no running"
	}{
		{name: "no runs directory", setup: func(*testing.T, string) {}, wantErr: []string{"no running knfaas up found in"}},
		{name: "one live run", setup: func(t *testing.T, d string) { run(t, d, true, &a) }, want: a},
		{name: "stale record is said, not used", setup: func(t *testing.T, d string) { run(t, d, false, &a) },
			wantErr: []string{"no running knfaas up found", "stale record", "pid 11 started 2026-01-02T03:04:05Z is gone"}},
		{name: "live run still starting", setup: func(t *testing.T, d string) { run(t, d, true, nil) },
			wantErr: []string{"no running knfaas up found", "still starting"}},
		{name: "stale and live: the live one", setup: func(t *testing.T, d string) { run(t, d, false, &b); run(t, d, true, &a) }, want: a},
		{name: "two live runs are ambiguous", setup: func(t *testing.T, d string) { run(t, d, true, &a); run(t, d, true, &b) },
			wantErr: []string{"2 runs of knfaas up are live", "pid 12 on 127.0.0.1:9090, pid 11 on 127.0.0.1:8080", "--addr"}},
		{name: "two live runs, addr picks one", setup: func(t *testing.T, d string) { run(t, d, true, &a); run(t, d, true, &b) }, addr: b.Addr, want: b},
		{name: "addr of no live run", setup: func(t *testing.T, d string) { run(t, d, true, &a) }, addr: "127.0.0.1:1",
			wantErr: []string{"no running knfaas up found on 127.0.0.1:1"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := filepath.Join(t.TempDir(), "runs")
			tc.setup(t, dir)
			got, err := Discover(dir, tc.addr)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("Discover = %+v, want an error", got)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				if strings.HasPrefix(tc.wantErr[0], "no running") && !errors.Is(err, ErrNoRun) {
					t.Errorf("error %v is not ErrNoRun", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("Discover = %+v, want %+v", got, tc.want)
			}
		})
	}
}

// TestDiscoverAfterRemove: a run that exits cleanly leaves no record behind.
func TestDiscoverAfterRemove(t *testing.T) {
	dir := t.TempDir()
	d, _, err := NewRunDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	if err := WriteEndpoints(d.Path, Endpoints{Addr: "127.0.0.1:8080", PID: 1}); err != nil {
		t.Fatal(err)
	}
	if _, err := Discover(dir, ""); err != nil {
		t.Fatalf("live run: %v", err)
	}
	if err := d.Remove(); err != nil {
		t.Fatal(err)
	}
	runs, err := FindRuns(dir)
	if err != nil || len(runs) != 0 {
		t.Fatalf("after Remove: runs %+v, %v; want none", runs, err)
	}
}
