package embedded

import (
	"bytes"
	"os"
	"strings"
	"testing"
	"time"
)

func TestServiceLogTagsAndStores(t *testing.T) {
	tests := map[string]struct {
		json bool
		in   string // what serving writes: "[<name>-<instance>] <line>"
		want string // what the runtime prints and stores
	}{
		"json line gets service and instance": {
			json: true, in: `[process-1] {"time":"2026-11-29T12:00:00Z","level":"INFO","msg":"started"}`,
			want: `{"service":"process","instance":"process-1","time":"2026-11-29T12:00:00Z","level":"INFO","msg":"started"}`,
		},
		"empty json object": {json: true, in: `[process-2] {}`, want: `{"service":"process","instance":"process-2"}`},
		"non-JSON line keeps its prefix in json mode": {
			json: true, in: `[process-1] panic: boom`, want: `[process-1] panic: boom`,
		},
		"text mode keeps the prefix": {
			in:   `[process-1] time=2026-11-29T12:00:00Z level=INFO msg=started`,
			want: `[process-1] time=2026-11-29T12:00:00Z level=INFO msg=started`,
		},
		"text mode leaves a JSON line as it is": {
			in: `[process-1] {"msg":"x"}`, want: `[process-1] {"msg":"x"}`,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			var out bytes.Buffer
			l, err := newServiceLog(&out, dir, "knfaas", "process", tc.json)
			if err != nil {
				t.Fatal(err)
			}
			at := time.Date(2026, 11, 29, 12, 0, 1, 0, time.UTC)
			l.now = func() time.Time { return at }
			if _, err := l.Write([]byte(tc.in + "\n")); err != nil {
				t.Fatal(err)
			}
			_ = l.Close()
			if out.String() != tc.want+"\n" {
				t.Errorf("printed %q, want %q", out.String(), tc.want+"\n")
			}
			stored, err := os.ReadFile(ServiceLogFile(dir, "knfaas", "process"))
			if err != nil {
				t.Fatal(err)
			}
			if want := "2026-11-29T12:00:01Z " + tc.want + "\n"; string(stored) != want {
				t.Errorf("stored %q, want %q", stored, want)
			}
		})
	}
}

// TestServiceLogIsBounded writes more than twice MaxServiceLogBytes: the file rotates once
// it would pass the bound, so a service keeps at most two files of at most the bound each.
func TestServiceLogIsBounded(t *testing.T) {
	dir := t.TempDir()
	l, err := newServiceLog(&bytes.Buffer{}, dir, "knfaas", "process", false)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	line := "[process-1] " + strings.Repeat("x", 1000) + "\n"
	for i := 0; i < 3*MaxServiceLogBytes/len(line); i++ {
		if _, err := l.Write([]byte(line)); err != nil {
			t.Fatal(err)
		}
	}
	path := ServiceLogFile(dir, "knfaas", "process")
	for p, least := range map[string]int64{path: 1, path + ".1": MaxServiceLogBytes - 2*int64(len(line))} {
		st, err := os.Stat(p)
		if err != nil {
			t.Fatal(err)
		}
		if st.Size() > MaxServiceLogBytes || st.Size() < least {
			t.Errorf("%s holds %d bytes, want %d to %d", p, st.Size(), least, MaxServiceLogBytes)
		}
	}
	if _, err := os.Stat(path + ".2"); err == nil {
		t.Errorf("a third file was kept")
	}
	services, err := ServiceLogs(dir)
	if err != nil || len(services) != 1 || services[0] != "knfaas/process" {
		t.Errorf("ServiceLogs = %v, %v; want [knfaas/process]", services, err)
	}
}

func TestWithLogging(t *testing.T) {
	tests := map[string]struct {
		format, level string
		env           []string
		want          []string
	}{
		"passes the run's format and level": {
			format: "json", level: "info", env: []string{"A=1"},
			want: []string{"A=1", "LOG_FORMAT=json", "LOG_LEVEL=info"},
		},
		"a Service's own setting wins": {
			format: "json", level: "info", env: []string{"LOG_LEVEL=debug"},
			want: []string{"LOG_LEVEL=debug", "LOG_FORMAT=json"},
		},
		"nothing set, nothing passed": {env: []string{"A=1"}, want: []string{"A=1"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			r := &Runtime{opts: Options{LogFormat: tc.format, LogLevel: tc.level}}
			got := r.withLogging(tc.env)
			if strings.Join(got, " ") != strings.Join(tc.want, " ") {
				t.Errorf("env = %q, want %q", got, tc.want)
			}
		})
	}
}
