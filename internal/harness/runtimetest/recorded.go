package runtimetest

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"
)

// Recorder is a recorder subscriber (test/functions/recorder) that StartRecorded adds to a run:
// a Service and a Trigger, both called Name, that pass the events of one type from a Broker.
type Recorder struct {
	// Name is the Service's and the Trigger's name and the recorder's RECORDER_NAME, under which
	// it records in Redis (see Recorded).
	Name string
	// Type is the event type the Trigger passes (an exact match).
	Type string
	// Source, when set, also filters on the event source (an exact match).
	Source string
	// Namespace and Broker default to knfaas and default, those of config/.
	Namespace string
	Broker    string
}

// Manifest is the recorder's Service and Trigger as YAML.
func (r Recorder) Manifest() string {
	ns, broker := r.Namespace, r.Broker
	if ns == "" {
		ns = "knfaas"
	}
	if broker == "" {
		broker = "default"
	}
	source := ""
	if r.Source != "" {
		source = fmt.Sprintf("\n      source: %q", r.Source)
	}
	return fmt.Sprintf(`apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: %[1]s
  namespace: %[2]s
spec:
  template:
    spec:
      containers:
      - image: ko://github.com/knfaas/knfaas/test/functions/recorder
        readinessProbe:
          httpGet:
            path: /health/readiness
        env:
        - name: REDIS_URL
          valueFrom:
            secretKeyRef: {name: redis, key: url}
        - name: RECORDER_NAME
          value: %[1]s
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: %[1]s
  namespace: %[2]s
spec:
  broker: %[3]s
  filter:
    attributes:
      type: %[4]q%[5]s
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: %[1]s
      namespace: %[2]s
`, r.Name, ns, broker, r.Type, source)
}

// ModulePaths joins each file to dir under the module root: ModulePaths(t, "config",
// "600-broker.yaml") is the platform's Broker manifest.
func ModulePaths(t testing.TB, dir string, files ...string) []string {
	t.Helper()
	root := ModuleRoot(t)
	paths := make([]string, len(files))
	for i, f := range files {
		paths[i] = filepath.Join(root, dir, f)
	}
	return paths
}

// StartRecorded starts knfaas up (Start) with opts.Paths and the recorders' manifests. The
// recorders write to the Redis of opts.RedisURL, where the test reads them with Recorded; the
// manifests need a Secret redis with the key url (config/300-redis-secret.yaml).
func StartRecorded(t testing.TB, opts Options, recorders ...Recorder) *Runtime {
	t.Helper()
	if len(recorders) == 0 {
		return Start(t, opts)
	}
	if opts.RedisURL == "" {
		t.Fatal("StartRecorded: RedisURL is empty; recorders write to the test's Redis")
	}
	dir, err := os.MkdirTemp("", "knfaas-recorders-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	for _, r := range recorders {
		if err := os.WriteFile(filepath.Join(dir, r.Name+".yaml"), []byte(r.Manifest()), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	opts.Paths = append(append([]string(nil), opts.Paths...), dir)
	return Start(t, opts)
}

// Recorded returns the events the recorder called name accepted, in the order it accepted them
// (each redelivery again).
func Recorded(t testing.TB, rdb redis.Cmdable, name string) []event.Event {
	t.Helper()
	raw, err := rdb.LRange(context.Background(), "knfaas:test:recorder:"+name+":events", 0, -1).Result()
	if err != nil {
		t.Fatalf("recorder %s: %v", name, err)
	}
	events := make([]event.Event, len(raw))
	for i, r := range raw {
		if err := json.Unmarshal([]byte(r), &events[i]); err != nil {
			t.Fatalf("recorder %s: event %d: %v", name, i, err)
		}
	}
	return events
}
