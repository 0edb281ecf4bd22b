package cli

import (
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// TestMain keeps every test of the package away from the user's own state directory (and a
// knfaas up running there) and from the caller's KNFAAS_ADDR and REDIS_URL.
func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "knfaas-cli-test")
	if err != nil {
		panic(err)
	}
	os.Setenv("XDG_STATE_HOME", dir)
	os.Unsetenv(EnvAddr)
	os.Unsetenv("REDIS_URL")
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

// recorder is a stand-in for the listeners of knfaas up: it notes the path of every request.
type recorder struct {
	mu    sync.Mutex
	paths []string
}

func (rec *recorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	rec.mu.Lock()
	rec.paths = append(rec.paths, r.URL.Path)
	rec.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (rec *recorder) got() []string {
	rec.mu.Lock()
	defer rec.mu.Unlock()
	return append([]string(nil), rec.paths...)
}

// fakeRun writes the discovery record of a knfaas up into stateDir, as a running up does; live
// keeps the run's lock held, otherwise it is released as when the run died.
func fakeRun(t *testing.T, stateDir string, live bool, ep embedded.Endpoints) {
	t.Helper()
	d, _, err := embedded.NewRunDir(filepath.Join(stateDir, embedded.RunsDir))
	if err != nil {
		t.Fatal(err)
	}
	if err := embedded.WriteEndpoints(d.Path, ep); err != nil {
		t.Fatal(err)
	}
	if live {
		t.Cleanup(func() { _ = d.Remove() })
		return
	}
	// A run that died: its directory and record stay, its lock is free. Removing and
	// recreating the directory without the lock reproduces that from outside.
	if err := d.Remove(); err != nil {
		t.Fatal(err)
	}
	if err := os.MkdirAll(d.Path, 0o700); err != nil {
		t.Fatal(err)
	}
	if err := embedded.WriteEndpoints(d.Path, ep); err != nil {
		t.Fatal(err)
	}
}

// TestCommandsFindTheRunningUp: send, dlq, process and events reach the knfaas up recorded in
// the state directory when no flag or environment variable names one; an explicit --addr,
// KNFAAS_ADDR or REDIS_URL wins; a stale record is said, never used.
func TestCommandsFindTheRunningUp(t *testing.T) {
	redisSrv := redistest.Start(t, redistest.Options{})
	public, internal, other := &recorder{}, &recorder{}, &recorder{}
	publicSrv, internalSrv, otherSrv := httptest.NewServer(public), httptest.NewServer(internal), httptest.NewServer(other)
	t.Cleanup(publicSrv.Close)
	t.Cleanup(internalSrv.Close)
	t.Cleanup(otherSrv.Close)
	hostPort := func(u string) string { return strings.TrimPrefix(u, "http://") }
	ep := embedded.Endpoints{
		Addr: hostPort(publicSrv.URL), Internal: internalSrv.URL + "/_knfaas/TOKEN", RedisURL: redisSrv.URL(),
		PID: 4242, Started: time.Date(2026, 1, 2, 3, 4, 5, 0, time.UTC),
	}
	tests := []struct {
		name     string
		record   string // "live", "stale" or "" (none)
		env      map[string]string
		args     []string
		want     []string // in the output
		wantErr  []string // in the error
		wantHits map[*recorder]string
	}{
		{name: "send to the default broker", record: "live", args: []string{"send", "--type", "t"},
			want: []string{"sent"}, wantHits: map[*recorder]string{public: "/knfaas/default"}},
		{name: "send to another broker", record: "live", args: []string{"send", "--type", "t", "--broker", "shop/orders"},
			wantHits: map[*recorder]string{public: "/shop/orders"}},
		{name: "send to a service through the internal capability", record: "live",
			args:     []string{"send", "--type", "t", "--service", "knfaas/process", "--path", "/hook"},
			wantHits: map[*recorder]string{internal: "/_knfaas/TOKEN/services/knfaas/process/hook"}},
		{name: "--addr wins over the record", record: "live", args: []string{"send", "--type", "t", "--addr", hostPort(otherSrv.URL)},
			wantHits: map[*recorder]string{other: "/knfaas/default"}},
		{name: "KNFAAS_ADDR wins over the record", record: "live", env: map[string]string{EnvAddr: hostPort(otherSrv.URL)},
			args: []string{"send", "--type", "t"}, wantHits: map[*recorder]string{other: "/knfaas/default"}},
		{name: "KNFAAS_ADDR without any run", env: map[string]string{EnvAddr: hostPort(otherSrv.URL)},
			args: []string{"send", "--type", "t"}, wantHits: map[*recorder]string{other: "/knfaas/default"}},
		{name: "dlq list reads the run's redis", record: "live", args: []string{"dlq", "list"}, want: []string{"LETTER"}},
		{name: "dlq redrive names the broker as namespace/name", record: "live", args: []string{"dlq", "redrive", "--broker", "knfaas/default"},
			want: []string{"accepted 0, failed 0, skipped 0"}},
		{name: "dlq redrive still takes a URL", record: "live", args: []string{"dlq", "redrive", "--broker", otherSrv.URL + "/knfaas/default"},
			want: []string{"accepted 0"}},
		{name: "process list reads the run's redis", record: "live", args: []string{"process", "list"}, want: []string{"INSTANCE"}},
		{name: "events replay reads the run's redis", record: "live", args: []string{"events", "replay", "--dry-run"}, want: []string{"would replay 0 events"}},
		{name: "REDIS_URL wins over the record", record: "live", env: map[string]string{"REDIS_URL": "redis://127.0.0.1:1"},
			args: []string{"process", "list"}, wantErr: []string{"127.0.0.1:1"}},
		{name: "stale record: send says so", record: "stale", args: []string{"send", "--type", "t"},
			wantErr: []string{"no running knfaas up found", "stale record", "pid 4242 started 2026-01-02T03:04:05Z is gone", "--addr"}},
		{name: "stale record: dlq says so", record: "stale", args: []string{"dlq", "list"},
			wantErr: []string{"REDIS_URL is not set", "stale record", "pid 4242"}},
		{name: "no run: process says what to do", args: []string{"process", "list"},
			wantErr: []string{"process instances are read from Redis", "REDIS_URL is not set", "no running knfaas up found", "start knfaas up"}},
		{name: "no run: send says what to do", args: []string{"send", "--type", "t"},
			wantErr: []string{"no running knfaas up found", "start knfaas up, or pass --addr"}},
		{name: "bad broker ref", record: "live", args: []string{"send", "--type", "t", "--broker", "default"},
			wantErr: []string{`--broker "default": want namespace/name`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			state := filepath.Join(t.TempDir(), "knfaas")
			switch tc.record {
			case "live":
				fakeRun(t, state, true, ep)
			case "stale":
				fakeRun(t, state, false, ep)
			}
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			before := map[*recorder]int{public: len(public.got()), internal: len(internal.got()), other: len(other.got())}
			out, err := runCLI(t, append(tc.args, "--state-dir", state)...)
			if len(tc.wantErr) > 0 {
				if err == nil {
					t.Fatalf("no error; output:\n%s", out)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Errorf("error %q lacks %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatalf("%v; output:\n%s", err, out)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			for rec, n := range before {
				got := rec.got()[n:]
				want, ok := tc.wantHits[rec]
				switch {
				case ok && (len(got) != 1 || got[0] != want):
					t.Errorf("requests %v, want one to %s", got, want)
				case !ok && len(got) > 0:
					t.Errorf("unexpected requests %v", got)
				}
			}
		})
	}
}
