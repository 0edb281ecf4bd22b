package cli

import (
	"bytes"
	"io"
	"net"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestUpRejectsMalformedFlags: a bad value stops `knfaas up` before it loads or starts anything,
// with an error naming the flag.
func TestUpRejectsMalformedFlags(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantFlag string
	}{
		{name: "no rounds before parking", args: []string{"--park-after", "0"}, wantFlag: "--park-after"},
		{name: "negative rounds", args: []string{"--park-after", "-2"}, wantFlag: "--park-after"},
		{name: "unknown log level", args: []string{"--log-level", "loud"}, wantFlag: "--log-level"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCLI(t, append([]string{"up", "--defaults=false", "-f", "no-such-dir", "--addr", "127.0.0.1:0"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.wantFlag) {
				t.Fatalf("up %v: %v, want an error naming %s", tc.args, err, tc.wantFlag)
			}
		})
	}
}

// TestUpDryRunPrintsThePlan: --dry-run prints the plan and exits 0 without building (the
// image's import path does not exist) or listening (the address is taken); a manifest that
// cannot run exits non-zero naming its file, object and field.
func TestUpDryRunPrintsThePlan(t *testing.T) {
	const good = `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: shop}
---
apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: orders, namespace: shop}
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/max-scale: "3"}
    spec:
      containers:
      - image: ko://example.com/no/such/function
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: placed, namespace: shop}
spec:
  broker: default
  filter: {attributes: {type: com.shop.order.placed}}
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: orders}}
---
apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: shop}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: legacy, image: example.com/legacy}]
`
	const badRef = `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: shop}
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: placed, namespace: shop}
spec:
  broker: default
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: missing}}
`
	taken, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer taken.Close()
	_, port, _ := net.SplitHostPort(taken.Addr().String())
	tests := []struct {
		name      string
		manifests string
		args      []string
		wantLines []string
		wantErr   string
	}{
		{
			name:      "a plan",
			manifests: good,
			wantLines: []string{
				"loaded 4 objects from ",
				"service shop/orders                  http://orders.shop.localhost:" + port + "  (example.com/no/such/function; scale 0..3, concurrency unlimited, timeout 5m0s)",
				"  initial scale 1, idle after 30s, ready when its port answers",
				"  env K_SERVICE, K_CONFIGURATION, K_REVISION",
				"broker  shop/default                 http://" + taken.Addr().String() + "/shop/default (events up to 4194304 bytes)",
				"trigger shop/placed                  type=com.shop.order.placed → Service orders (no dead-letter sink: failed events are dropped; retry 10)",
				"  backoff exponential from PT0.2S",
				"parked events go to the dead-letter store: max-letters default, max-bytes default, max-age default",
				"note: redis: embedded (miniredis), started by the run; set REDIS_URL to use a real server; embedded data is lost on exit",
				"note: " + "${dir}" + "/shop.yaml (document 1): Broker shop/default: class MTChannelBasedBroker: runs as the durable Redis Streams broker (the RedisStreamBroker class's data plane on a cluster)",
				"note: " + "${dir}" + "/shop.yaml (document 4): Deployment shop/legacy: loaded, not run (knfaas up runs Knative Services, Brokers, Triggers, PingSources and SinkBindings)",
			},
		},
		{
			name:      "--strict refuses what would not run",
			manifests: good,
			args:      []string{"--strict"},
			wantErr:   "--strict: 1 loaded objects would not run:\n  " + "${dir}" + "/shop.yaml (document 4): Deployment shop/legacy: loaded, not run",
		},
		{
			name:      "a ref the manifests lack",
			manifests: badRef,
			wantErr:   "/shop.yaml: Trigger shop/placed: spec.subscriber.ref: Service shop/missing (serving.knative.dev/v1) is not defined in the manifests",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "")
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "shop.yaml"), []byte(tc.manifests), 0o600); err != nil {
				t.Fatal(err)
			}
			out, err := runCLI(t, append([]string{"up", "--dry-run", "--defaults=false", "-f", dir, "--addr", taken.Addr().String()}, tc.args...)...)
			if tc.wantErr != "" {
				tc.wantErr = strings.ReplaceAll(tc.wantErr, "${dir}", dir)
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("up --dry-run: %v, want an error containing %q\n%s", err, tc.wantErr, out)
				}
				return
			}
			if err != nil {
				t.Fatalf("up --dry-run: %v\n%s", err, out)
			}
			lines := strings.Split(strings.TrimRight(out, "\n"), "\n")
			if len(lines) != len(tc.wantLines) {
				t.Fatalf("up --dry-run printed %d lines, want %d:\n%s", len(lines), len(tc.wantLines), out)
			}
			for i, want := range tc.wantLines {
				want = strings.ReplaceAll(want, "${dir}", dir)
				if !strings.HasPrefix(lines[i], want) {
					t.Errorf("line %d: %q, want %q", i+1, lines[i], want)
				}
			}
			if again, _ := runCLI(t, "up", "--dry-run", "--defaults=false", "-f", dir, "--addr", taken.Addr().String()); again != out {
				t.Errorf("a second dry run printed otherwise:\n%s\nthen:\n%s", out, again)
			}
		})
	}
}

// TestBuildProgressIsLiveOnlyOnATerminal: pipes, files and buffers (logs, CI) get a line per
// step; TERM=dumb too.
func TestBuildProgressIsLiveOnlyOnATerminal(t *testing.T) {
	file, err := os.Create(filepath.Join(t.TempDir(), "out"))
	if err != nil {
		t.Fatal(err)
	}
	defer file.Close()
	r, w, err := os.Pipe()
	if err != nil {
		t.Fatal(err)
	}
	defer r.Close()
	defer w.Close()
	tests := []struct {
		name string
		w    io.Writer
		term string
	}{
		{"buffer", &bytes.Buffer{}, "xterm"},
		{"regular file", file, "xterm"},
		{"pipe", w, "xterm"},
		{"dumb terminal setting", w, "dumb"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("TERM", tc.term)
			if isTerminal(tc.w) {
				t.Errorf("isTerminal = true, want a line per step")
			}
		})
	}
}
