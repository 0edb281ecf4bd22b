//go:build e2e

package thumbnails

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/minio/minio-go/v7"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/objects"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/ping"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// listedRecorder records every event the object source emits.
var listedRecorder = runtimetest.Recorder{Name: "objectsource-e2e", Type: objects.TypePrefix + objects.NameCreatedListed}

// objectVersion is one version of an object: its key and its content's ETag.
type objectVersion struct{ key, etag string }

// listedTally compares what the recorder received with the versions uploaded.
type listedTally struct {
	delivered, lost, duplicates, unexpected int
}

// objectSourceRun is the object source under knfaas up, with a recorder of what it emits,
// against the test's store (storeOfTest) and a real Redis.
type objectSourceRun struct {
	t     *testing.T
	rt    *runtimetest.Runtime
	rdb   *redis.Client
	store *minio.Client
	// tickEvent is the PingSource's event of a schedule slot.
	tickEvent func(slot time.Time) (event.Event, error)

	mu   sync.Mutex
	slot time.Time
	// want holds the uploaded versions under the prefix.
	want map[objectVersion]bool
}

// startObjectSource starts knfaas up with the platform's Broker and Redis, the object source of
// serviceManifest (its SinkBinding pointing at the Broker) and the recorder. The PingSource
// itself is not loaded: the test ticks, rather than waiting for the minute.
func startObjectSource(t *testing.T, serviceManifest string) *objectSourceRun {
	t.Helper()
	store := storeOfTest(t)
	srv := redistest.Start(t, redistest.Options{})
	paths := runtimetest.ModulePaths(t, "config", "100-namespace.yaml", "300-redis-secret.yaml", "500-redis-service.yaml",
		"510-redis-statefulset.yaml", "600-broker.yaml", "400-deadletter-config.yaml", "700-deadletter.yaml")
	paths = append(paths, runtimetest.ModulePaths(t, "examples/thumbnails/config", "350-object-store-secret.yaml",
		"400-object-store.yaml", "710-objectsource-sinkbinding.yaml")...)
	rt := runtimetest.StartRecorded(t, runtimetest.Options{Paths: append(paths, serviceManifest), RedisURL: srv.URL()}, listedRecorder)
	if !strings.Contains(rt.Output(), "s3: "+os.Getenv("S3_ENDPOINT")+" (S3_ENDPOINT)") {
		t.Fatalf("knfaas up does not use the store S3_ENDPOINT names:\n%s", rt.Output())
	}
	pings, err := manifest.Load(filepath.Join(runtimetest.ModuleRoot(t), "examples/thumbnails/config/800-objectsource-ping.yaml"))
	if err != nil || len(pings.PingSources()) != 1 {
		t.Fatalf("the object source's PingSource: %v", err)
	}
	pingSource := pings.PingSources()[0]
	return &objectSourceRun{
		t: t, rt: rt, rdb: srv.Client(), store: store,
		tickEvent: func(slot time.Time) (event.Event, error) { return ping.Event(pingSource, slot) },
		slot:      time.Now().UTC().Truncate(time.Minute),
		want:      map[objectVersion]bool{},
	}
}

// upload puts an object into the bucket; a version under the prefix is one the source must emit.
func (r *objectSourceRun) upload(key, content string) {
	r.t.Helper()
	info, err := r.store.PutObject(context.Background(), testBucket, key, strings.NewReader(content), int64(len(content)), minio.PutObjectOptions{})
	if err != nil {
		r.t.Fatal(err)
	}
	if strings.HasPrefix(key, "uploads/") {
		r.mu.Lock()
		r.want[objectVersion{key, strings.Trim(info.ETag, `"`)}] = true
		r.mu.Unlock()
	}
}

// ticks posts the PingSource's events of the next n schedule slots to the object source at
// once, as the ping scheduler does, each until it is answered with success (a whole pass).
func (r *objectSourceRun) ticks(n int) {
	r.t.Helper()
	sender, err := sink.New(r.rt.InternalBase()+"/services/knfaas/objectsource", time.Minute)
	if err != nil {
		r.t.Fatal(err)
	}
	events := make([]event.Event, n)
	for i := range events {
		r.slot = r.slot.Add(time.Minute)
		if events[i], err = r.tickEvent(r.slot); err != nil {
			r.t.Fatal(err)
		}
	}
	var wg sync.WaitGroup
	answered := make([]bool, n)
	for i, e := range events {
		wg.Add(1)
		go func() {
			defer wg.Done()
			deadline := time.Now().Add(2 * time.Minute)
			for time.Now().Before(deadline) {
				err := sender.Send(context.Background(), e)
				if err == nil {
					answered[i] = true
					return
				}
				r.t.Logf("tick %s: %v", e.Time().Format(time.TimeOnly), err)
				time.Sleep(50 * time.Millisecond)
			}
		}()
	}
	wg.Wait()
	for i, ok := range answered {
		if !ok {
			r.t.Fatalf("tick %s: not answered with success within 2m", events[i].Time().Format(time.TimeOnly))
		}
	}
}

// waitFor waits until n of the uploaded versions were delivered.
func (r *objectSourceRun) waitFor(n int) listedTally {
	r.t.Helper()
	var got listedTally
	runtimetest.Eventually(r.t, time.Minute, fmt.Sprintf("%d listed versions are delivered", n), func() bool {
		got = r.tally()
		return got.delivered >= n
	})
	return got
}

// tally reads what the recorder accepted and compares it with the uploaded versions.
func (r *objectSourceRun) tally() listedTally {
	r.t.Helper()
	times := map[objectVersion]int{}
	for _, e := range runtimetest.Recorded(r.t, r.rdb, listedRecorder.Name) {
		var o objects.Event
		if err := json.Unmarshal(e.Data(), &o); err != nil {
			r.t.Fatalf("event %s: %v", e.ID(), err)
		}
		if o.Bucket != testBucket || o.Store != objects.StoreListing || e.Subject() != o.Key || e.ID() != o.ID() {
			r.t.Errorf("event %s: subject %q, data %+v", e.ID(), e.Subject(), o)
		}
		times[objectVersion{o.Key, o.ETag}]++
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	var c listedTally
	for v, n := range times {
		if !r.want[v] {
			c.unexpected += n
			continue
		}
		c.delivered++
		c.duplicates += n - 1
	}
	for v := range r.want {
		if times[v] == 0 {
			c.lost++
		}
	}
	return c
}

// checkExactlyOnce waits for every uploaded version, then a while longer for late duplicates
// (they would arrive within a redelivery or two), and fails unless each was delivered once.
func (r *objectSourceRun) checkExactlyOnce() listedTally {
	r.t.Helper()
	r.mu.Lock()
	n := len(r.want)
	r.mu.Unlock()
	r.waitFor(n)
	time.Sleep(5 * time.Second)
	got := r.tally()
	if got != (listedTally{delivered: n}) {
		r.t.Errorf("listed versions %+v, want %d delivered once each, none lost, duplicated or outside the prefix", got, n)
	}
	return got
}

// TestObjectSourceEmitsEachVersionOnceAcrossRestart runs the object source under knfaas up
// against the test's S3 store (it outlives the runtime, as a real store does) and a real Redis.
// Objects are uploaded and the source is ticked with the PingSource's own event, posted to the
// Service; the runtime restarts on the same Redis; more objects are uploaded and one is
// overwritten; more ticks follow. Each version under the prefix is delivered exactly once: none
// lost, none emitted again after the restart, nothing outside the prefix.
func TestObjectSourceEmitsEachVersionOnceAcrossRestart(t *testing.T) {
	run := startObjectSource(t, filepath.Join(runtimetest.ModuleRoot(t), "examples/thumbnails/config/700-objectsource.yaml"))

	run.upload("uploads/a.jpg", "first picture")
	run.upload("uploads/b.jpg", "second picture")
	run.upload("uploads/c.jpg", "third picture")
	run.upload("elsewhere/d.jpg", "outside the prefix")
	run.ticks(1)
	run.ticks(1)
	before := run.waitFor(3)

	run.rt.Restart()
	run.ticks(1)
	run.upload("uploads/e.jpg", "fifth picture")
	run.upload("uploads/f.jpg", "sixth picture")
	run.upload("uploads/b.jpg", "second picture, edited")
	run.ticks(1)
	run.ticks(1)
	run.waitFor(6)
	limit := memoryLimit(t, filepath.Join(runtimetest.ModuleRoot(t), "examples/thumbnails/config/700-objectsource.yaml"))
	for _, pid := range run.rt.InstancePIDs("objectsource") {
		peak, err := peakRSS(pid)
		if err != nil {
			t.Fatalf("instance %d: %v", pid, err)
		}
		t.Logf("objectsource instance %d: peak RSS %.1f MiB (limit %.0f MiB)", pid, float64(peak)/(1<<20), float64(limit)/(1<<20))
		if !serving.Race() && peak >= limit {
			t.Errorf("objectsource instance %d: peak RSS %d bytes, over the Service's memory limit %d", pid, peak, limit)
		}
	}
	after := run.checkExactlyOnce()
	t.Logf("before the restart %+v; after %+v", before, after)
}

// replicas is how many instances of the object source TestObjectSourceReplicasEmitEachVersionOnce
// runs, and perRound the new objects uploaded before each round of simultaneous ticks.
const (
	replicas = 2
	perRound = 40
)

// passLog is a pass an object source instance logged: "[knfaas/objectsource-<n>] {json}".
var passLog = regexp.MustCompile(`(?m)^\[knfaas/objectsource-([0-9]+)\] (\{.*"msg":"pass".*\})$`)

// passOverlaps counts the passes that found versions claimed by another pass (inFlight > 0),
// and the instances that logged passes.
func passOverlaps(t *testing.T, output string) (overlapped int, instances map[string]int) {
	t.Helper()
	instances = map[string]int{}
	for _, m := range passLog.FindAllStringSubmatch(output, -1) {
		var pass struct {
			Emitted  int `json:"emitted"`
			InFlight int `json:"inFlight"`
		}
		if err := json.Unmarshal([]byte(m[2]), &pass); err != nil {
			t.Fatalf("pass log %s: %v", m[0], err)
		}
		instances[m[1]]++
		if pass.InFlight > 0 {
			overlapped++
		}
	}
	return overlapped, instances
}

// TestObjectSourceReplicasEmitEachVersionOnce runs two replicas of the object source over the
// same bucket prefix, as a cluster runs a scaled-out Service: the example's Service with
// min-scale and max-scale 2 and containerConcurrency 1, so knfaas up keeps two instances and
// two ticks posted at once are served by one instance each, both passing over the same listing
// at the same time. Between rounds of simultaneous ticks, objects are uploaded and earlier ones
// overwritten. Each version is delivered exactly once: the instances share their claims
// through Redis. Claims held per process would let both passes send the versions they list
// together, and the recorder would count them twice.
func TestObjectSourceReplicasEmitEachVersionOnce(t *testing.T) {
	root := runtimetest.ModuleRoot(t)
	raw, err := os.ReadFile(filepath.Join(root, "examples/thumbnails/config/700-objectsource.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	scaled := string(raw)
	for _, change := range [][2]string{
		{`autoscaling.knative.dev/min-scale: "0"`, fmt.Sprintf(`autoscaling.knative.dev/min-scale: "%d"`, replicas)},
		{`autoscaling.knative.dev/max-scale: "1"`, fmt.Sprintf(`autoscaling.knative.dev/max-scale: "%d"`, replicas)},
		// One send at a time: a pass holds its claims longer, so the passes overlap more.
		{`        - name: OBJECTSOURCE_MAX_KEYS`, "        - name: OBJECTSOURCE_CONCURRENCY\n          value: \"1\"\n        - name: OBJECTSOURCE_MAX_KEYS"},
		// JSON lines, whatever format knfaas up logs in: passOverlaps decodes the "pass" lines.
		{`        - name: LISTEN_ADDRESS`, "        - name: LOG_FORMAT\n          value: json\n        - name: LISTEN_ADDRESS"},
	} {
		if !strings.Contains(scaled, change[0]) {
			t.Fatalf("700-objectsource.yaml no longer holds %q", change[0])
		}
		scaled = strings.Replace(scaled, change[0], change[1], 1)
	}
	if !strings.Contains(scaled, "containerConcurrency: 1\n") {
		t.Fatal("700-objectsource.yaml no longer sets containerConcurrency: 1")
	}
	manifestFile := filepath.Join(t.TempDir(), "objectsource.yaml")
	if err := os.WriteFile(manifestFile, []byte(scaled), 0o600); err != nil {
		t.Fatal(err)
	}
	run := startObjectSource(t, manifestFile)
	runtimetest.Eventually(t, time.Minute, fmt.Sprintf("%d object source instances run", replicas), func() bool {
		return len(run.rt.InstancePIDs("objectsource")) == replicas
	})

	// Rounds until the passes were seen to overlap, at least three: on a loaded machine one
	// instance may now and then finish its pass before the other lists.
	overlapped, instances := 0, map[string]int{}
	for round := 1; round <= 8 && (round <= 3 || overlapped == 0); round++ {
		for i := range perRound {
			run.upload(fmt.Sprintf("uploads/r%d-%02d.jpg", round, i), fmt.Sprintf("picture %d of round %d", i, round))
		}
		if round == 1 {
			run.upload("elsewhere/outside.jpg", "outside the prefix")
		} else {
			for i := 0; i < perRound; i += 4 {
				run.upload(fmt.Sprintf("uploads/r%d-%02d.jpg", round-1, i), fmt.Sprintf("picture %d of round %d, edited in round %d", i, round-1, round))
			}
		}
		run.ticks(replicas)
		// The pass lines reach the runtime's output just after the ticks are answered.
		time.Sleep(200 * time.Millisecond)
		overlapped, instances = passOverlaps(t, run.rt.Output())
		t.Logf("round %d: %d passes found versions another pass had claimed; passes per instance %v", round, overlapped, instances)
	}
	// One more round with nothing new: a version whose send failed is sent now.
	run.ticks(replicas)
	got := run.checkExactlyOnce()
	overlapped, instances = passOverlaps(t, run.rt.Output())
	t.Logf("%+v; passes per instance %v, %d overlapped", got, instances, overlapped)
	if len(instances) < replicas {
		t.Errorf("passes were logged by %d instance(s) %v, want %d: the replicas did not both pass over the bucket", len(instances), instances, replicas)
	}
	if overlapped == 0 {
		t.Errorf("no pass found versions claimed by another pass: either the replicas never passed over the bucket at the same time, so the test proved nothing, or they do not see each other's claims")
	}
}
