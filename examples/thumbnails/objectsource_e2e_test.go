//go:build e2e

package thumbnails

import (
	"context"
	"encoding/json"
	"fmt"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/johannesboyne/gofakes3"
	"github.com/johannesboyne/gofakes3/backend/s3mem"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/objectstore"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/ping"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// listedRecorder records every event the object source emits.
const listedRecorder = `apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: listed-recorder
  namespace: knfaas
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
          value: objectsource-e2e
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: listed-recorder
  namespace: knfaas
spec:
  broker: default
  filter:
    attributes:
      type: ` + objects.TypePrefix + objects.NameCreatedListed + `
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: listed-recorder
      namespace: knfaas
`

// objectVersion is one version of an object: its key and its content's ETag.
type objectVersion struct{ key, etag string }

// listedTally compares what the recorder received with the versions uploaded.
type listedTally struct {
	delivered, lost, duplicates, unexpected int
}

// TestObjectSourceEmitsEachVersionOnceAcrossRestart runs the object source under knfaas up
// against an S3 store of the test process (it outlives the runtime, as a real store does) and a
// real Redis. Objects are uploaded and the source is ticked with the PingSource's own event,
// posted to the Service; the runtime restarts on the same Redis; more objects are uploaded and
// one is overwritten; more ticks follow. Each version under the prefix is delivered exactly
// once: none lost, none emitted again after the restart, nothing outside the prefix.
func TestObjectSourceEmitsEachVersionOnceAcrossRestart(t *testing.T) {
	fake := httptest.NewServer(gofakes3.New(s3mem.New(), gofakes3.WithAutoBucket(true)).Server())
	t.Cleanup(fake.Close)
	// knfaas up hands the store it is given to every function that sets S3_ENDPOINT.
	for k, v := range map[string]string{
		"S3_ENDPOINT": fake.URL, "S3_PATH_STYLE": "true", "AWS_REGION": "us-east-1",
		"AWS_ACCESS_KEY_ID": "e2e", "AWS_SECRET_ACCESS_KEY": "e2e-secret-key",
	} {
		t.Setenv(k, v)
	}
	store, err := objectstore.New(objectstore.Config{Endpoint: fake.URL, Region: "us-east-1", AccessKeyID: "e2e", SecretAccessKey: "e2e-secret-key", PathStyle: true})
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if err := store.MakeBucket(ctx, "photos", minio.MakeBucketOptions{}); err != nil {
		t.Fatal(err)
	}
	want := map[objectVersion]bool{}
	upload := func(key, content string) {
		t.Helper()
		info, err := store.PutObject(ctx, "photos", key, strings.NewReader(content), int64(len(content)), minio.PutObjectOptions{})
		if err != nil {
			t.Fatal(err)
		}
		if strings.HasPrefix(key, "uploads/") {
			want[objectVersion{key, strings.Trim(info.ETag, `"`)}] = true
		}
	}

	srv := redistest.Start(t, redistest.Options{})
	root := runtimetest.ModuleRoot(t)
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "recorder.yaml"), []byte(listedRecorder), 0o600); err != nil {
		t.Fatal(err)
	}
	var paths []string
	for _, f := range []string{"100-namespace.yaml", "300-redis-secret.yaml", "500-redis-service.yaml", "510-redis-statefulset.yaml", "600-broker.yaml",
		"400-deadletter-config.yaml", "700-deadletter.yaml"} {
		paths = append(paths, filepath.Join(root, "config", f))
	}
	// Not the PingSource itself: the test ticks, rather than waiting for the minute.
	for _, f := range []string{"350-object-store-secret.yaml", "400-object-store.yaml", "700-objectsource.yaml", "710-objectsource-sinkbinding.yaml"} {
		paths = append(paths, filepath.Join(root, "examples/thumbnails/config", f))
	}
	rt := runtimetest.Start(t, runtimetest.Options{Paths: append(paths, dir), RedisURL: srv.URL()})
	if !strings.Contains(rt.Output(), "s3: "+fake.URL+" (S3_ENDPOINT)") {
		t.Fatalf("knfaas up does not use the store S3_ENDPOINT names:\n%s", rt.Output())
	}

	pings, err := manifest.Load(filepath.Join(root, "examples/thumbnails/config/800-objectsource-ping.yaml"))
	if err != nil || len(pings.PingSources()) != 1 {
		t.Fatalf("the object source's PingSource: %v", err)
	}
	pingSource := pings.PingSources()[0]
	slot := time.Now().UTC().Truncate(time.Minute)
	// tick posts the PingSource's event of the next schedule slot to the object source, as the
	// ping scheduler does, until a whole pass is answered with success.
	tick := func() {
		t.Helper()
		slot = slot.Add(time.Minute)
		e, err := ping.Event(pingSource, slot)
		if err != nil {
			t.Fatal(err)
		}
		sender, err := sink.New(rt.InternalBase()+"/services/knfaas/objectsource", time.Minute)
		if err != nil {
			t.Fatal(err)
		}
		var last error
		runtimetest.Eventually(t, 2*time.Minute, "a tick is answered with success", func() bool {
			last = sender.Send(ctx, e)
			if last != nil {
				t.Logf("tick %s: %v", slot.Format(time.TimeOnly), last)
			}
			return last == nil
		})
	}

	rdb := srv.Client()
	waitFor := func(n int) listedTally {
		t.Helper()
		var got listedTally
		runtimetest.Eventually(t, time.Minute, fmt.Sprintf("%d listed versions are delivered", n), func() bool {
			got = tallyListed(t, rdb, want)
			return got.delivered >= n
		})
		return got
	}

	upload("uploads/a.jpg", "first picture")
	upload("uploads/b.jpg", "second picture")
	upload("uploads/c.jpg", "third picture")
	upload("elsewhere/d.jpg", "outside the prefix")
	tick()
	tick()
	before := waitFor(3)

	rt.Restart()
	tick()
	upload("uploads/e.jpg", "fifth picture")
	upload("uploads/f.jpg", "sixth picture")
	upload("uploads/b.jpg", "second picture, edited")
	tick()
	tick()
	waitFor(6)
	limit := memoryLimit(t, filepath.Join(root, "examples/thumbnails/config/700-objectsource.yaml"))
	for _, pid := range rt.InstancePIDs("objectsource") {
		peak, err := peakRSS(pid)
		if err != nil {
			t.Fatalf("instance %d: %v", pid, err)
		}
		t.Logf("objectsource instance %d: peak RSS %.1f MiB (limit %.0f MiB)", pid, float64(peak)/(1<<20), float64(limit)/(1<<20))
		if !serving.Race() && peak >= limit {
			t.Errorf("objectsource instance %d: peak RSS %d bytes, over the Service's memory limit %d", pid, peak, limit)
		}
	}
	// Late duplicates would arrive within a redelivery or two; none may.
	time.Sleep(5 * time.Second)
	after := tallyListed(t, rdb, want)
	t.Logf("before the restart %+v; after %+v (%d versions uploaded under the prefix)", before, after, len(want))
	if after != (listedTally{delivered: len(want)}) {
		t.Errorf("listed versions %+v, want %d delivered once each, none lost, duplicated or outside the prefix", after, len(want))
	}
}

// tallyListed reads what the recorder accepted and compares it with the uploaded versions.
func tallyListed(t *testing.T, rdb *redis.Client, want map[objectVersion]bool) listedTally {
	t.Helper()
	raw, err := rdb.LRange(context.Background(), "knfaas:test:recorder:objectsource-e2e:events", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	times := map[objectVersion]int{}
	for _, r := range raw {
		var e event.Event
		var o objects.Event
		if err := json.Unmarshal([]byte(r), &e); err != nil {
			t.Fatal(err)
		}
		if err := json.Unmarshal(e.Data(), &o); err != nil {
			t.Fatalf("event %s: %v", e.ID(), err)
		}
		if o.Bucket != "photos" || o.Store != objects.StoreListing || e.Subject() != o.Key || e.ID() != o.ID() {
			t.Errorf("event %s: subject %q, data %+v", e.ID(), e.Subject(), o)
		}
		times[objectVersion{o.Key, o.ETag}]++
	}
	var c listedTally
	for v, n := range times {
		if !want[v] {
			c.unexpected += n
			continue
		}
		c.delivered++
		c.duplicates += n - 1
	}
	for v := range want {
		if times[v] == 0 {
			c.lost++
		}
	}
	return c
}
