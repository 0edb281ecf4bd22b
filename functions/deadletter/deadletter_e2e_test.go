//go:build e2e

package main

import (
	"context"
	"encoding/json"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// subscriber is a recorder behind a Trigger on the platform's Broker, so an event it keeps
// failing is dead-lettered by the Broker of config/600-broker.yaml.
var subscriber = manifesttest.Function{Namespace: "knfaas", Name: "recorder", Image: "ko://github.com/knfaas/knfaas/test/functions/recorder",
	TimeoutSeconds: 5,
	Env: `        - name: REDIS_URL
          valueFrom:
            secretKeyRef: {name: redis, key: url}
        - name: RECORDER_NAME
          value: dlq-e2e
`}.YAML() + "---\n" + manifesttest.Trigger("knfaas", "recorder-orders", "default") +
	"  filter: {attributes: {type: com.example.order.created}}\n" +
	"  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: recorder, namespace: knfaas}}\n"

// TestDeadLetterAndRedriveThroughKnfaasUp runs the platform's own manifests (Broker with its
// deadLetterSink, the deadletter Service and its ConfigMap), lets a subscriber fail an event
// past the Broker's retries, and redrives the stored letter with the knfaas binary.
func TestDeadLetterAndRedriveThroughKnfaasUp(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	root := runtimetest.ModuleRoot(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "recorder.yaml"), []byte(subscriber), 0o600); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range []string{"100-namespace.yaml", "300-redis-secret.yaml", "400-deadletter-config.yaml",
		"500-redis-service.yaml", "510-redis-statefulset.yaml", "600-broker.yaml", "700-deadletter.yaml"} {
		paths = append(paths, filepath.Join(root, "config", f))
	}
	rt := runtimetest.Start(t, runtimetest.Options{Paths: append(paths, dir), RedisURL: srv.URL()})

	// 1 attempt + 5 retries (600-broker.yaml) fail; the redrive is attempt 7 and succeeds.
	e := runtimetest.NewEvent("order-1", "com.example.order.created")
	e.SetExtension("failtimes", 6)
	e.SetExtension("failstatus", 503)
	rt.Send("knfaas", "default", e)

	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	ctx := context.Background()
	var letters []deadletter.Letter
	runtimetest.Eventually(t, 2*time.Minute, "the event is dead-lettered", func() bool {
		letters, _ = store.List(ctx, deadletter.Filter{})
		return len(letters) == 1
	})
	l := letters[0]
	if l.EventID != "order-1" || l.Code != 503 || l.Trigger != "knfaas/recorder-orders" || l.Dest == "" ||
		!strings.Contains(l.ErrorData, "failing attempt") || !l.ErrorExtensions {
		t.Errorf("letter = %+v", l)
	}

	cmd := exec.Command(runtimetest.Binary(t), "dlq", "redrive", "--code", "503", "--broker", rt.BrokerURL("knfaas", "default"))
	cmd.Env = append(os.Environ(), "REDIS_URL="+srv.URL())
	out, err := cmd.CombinedOutput()
	if err != nil || !strings.Contains(string(out), "accepted 1") {
		t.Fatalf("knfaas dlq redrive: %v\n%s", err, out)
	}

	rdb := srv.Client()
	runtimetest.Eventually(t, time.Minute, "the redriven event is delivered", func() bool {
		return rdb.HGet(ctx, "knfaas:test:recorder:dlq-e2e:seen", "order-1").Val() == "1"
	})
	raw, err := rdb.LIndex(ctx, "knfaas:test:recorder:dlq-e2e:events", -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var got event.Event
	if err := json.Unmarshal([]byte(raw), &got); err != nil {
		t.Fatal(err)
	}
	if got.ID() != "order-1" || got.Extensions()[deadletter.ExtRedrive] != int32(1) && got.Extensions()[deadletter.ExtRedrive] != "1" {
		t.Errorf("delivered %s with knfaasredrive=%v, want order-1 with 1", got.ID(), got.Extensions()[deadletter.ExtRedrive])
	}
	for _, ext := range []string{deadletter.ExtErrorDest, deadletter.ExtErrorCode, deadletter.ExtErrorData, deadletter.ExtTrigger} {
		if _, ok := got.Extensions()[ext]; ok {
			t.Errorf("redriven event carries %s", ext)
		}
	}
	if left, _ := store.List(ctx, deadletter.Filter{}); len(left) != 0 {
		t.Errorf("%d letters left after an accepted redrive", len(left))
	}
}
