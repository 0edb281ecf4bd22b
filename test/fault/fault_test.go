//go:build e2e

package fault

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

const (
	namespace = "fault"
	// eventType is retried and dead-lettered by a burst, then redriven after the "fix".
	eventType = "dev.knfaas.test.fault"
	// slowType always outlasts the subscriber's timeout: it ends dead-lettered and stays there.
	slowType = "dev.knfaas.test.fault.slow"
	// recorderName keys the recorder's Redis hashes.
	recorderName = "fault"
	// attemptsPerDelivery is 1 + the Broker's delivery.retry below.
	attemptsPerDelivery = 4
)

// manifests are the objects of the scenario: a Broker whose dead letters go to the deadletter
// function, the recorder subscriber behind a Trigger, both on the test's Redis.
func manifests(redisURL string) string {
	redisEnv := "        - name: REDIS_URL\n          value: " + redisURL + "\n"
	return fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: %[1]s
spec:
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT0.1S
    deadLetterSink:
      ref:
        apiVersion: serving.knative.dev/v1
        kind: Service
        name: deadletter
        namespace: %[1]s
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: recorder-all
  namespace: %[1]s
spec:
  broker: default
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: recorder
      namespace: %[1]s
---
`, namespace) + manifesttest.Docs(
		manifesttest.Function{Namespace: namespace, Name: "recorder", Image: "ko://github.com/knfaas/knfaas/test/functions/recorder",
			MaxScale: 2, ContainerConcurrency: 64, TimeoutSeconds: 2,
			Env: redisEnv + "        - name: RECORDER_NAME\n          value: " + recorderName + "\n"}.YAML(),
		manifesttest.Function{Namespace: namespace, Name: "deadletter", Image: "ko://github.com/knfaas/knfaas/functions/deadletter",
			MaxScale: 2, ContainerConcurrency: 100, TimeoutSeconds: 10,
			Env: redisEnv}.YAML())
}

// eventFor decides how event i misbehaves at the subscriber.
func eventFor(i int) cloudevents.Event {
	e := runtimetest.NewEvent(fmt.Sprintf("ev-%05d", i), eventType)
	e.SetSource("/fault")
	switch {
	case i%500 == 7:
		// A burst that outlasts the retries: dead-lettered, delivered on redrive.
		e.SetExtension("failtimes", attemptsPerDelivery)
	case i%1000 >= 100 && i%1000 < 150:
		// 5xx bursts the retries absorb.
		e.SetExtension("failtimes", 2)
		e.SetExtension("failstatus", 503)
	case i%2000 == 1500:
		// Always slower than the subscriber's timeoutSeconds: dead-lettered for good.
		e.SetType(slowType)
		e.SetExtension("sleepms", 2500)
	case i%100 < 30:
		// Slow enough that a kill -9 of the subscriber finds requests in flight.
		e.SetExtension("sleepms", 150)
	}
	return e
}

func TestNothingIsLost(t *testing.T) {
	n := 10000
	if v := os.Getenv("KNFAAS_FAULT_EVENTS"); v != "" {
		n, _ = strconv.Atoi(v)
	}
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "fault.yaml"), []byte(manifests(srv.URL())), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{dir}, RedisURL: srv.URL(), RedeliverAfter: time.Second})

	// Senders: each event is posted until the broker accepts it (2xx). A refused or failed post
	// (runtime or Redis down) is not counted as accepted; the same id is posted again.
	var accepted, refusals atomic.Int64
	ids := make(chan int)
	var senders sync.WaitGroup
	for range 16 {
		senders.Add(1)
		go func() {
			defer senders.Done()
			for i := range ids {
				e := eventFor(i)
				for {
					if err := rt.TrySend(namespace, "default", e); err == nil {
						accepted.Add(1)
						break
					}
					refusals.Add(1)
					time.Sleep(100 * time.Millisecond)
				}
			}
		}()
	}
	go func() {
		for i := range n {
			ids <- i
		}
		close(ids)
	}()

	waitAccepted := func(k int) {
		runtimetest.Eventually(t, 10*time.Minute, fmt.Sprintf("%d events accepted", k), func() bool { return accepted.Load() >= int64(k) })
	}
	faults := []struct {
		at   float64 // fraction of n accepted
		name string
		do   func()
	}{
		{0.15, "subscriber kill -9 mid-request", func() { killSubscriber(t, rdb) }},
		{0.35, "runtime kill -9 and restart", func() { rt.Kill(); rt.Restart() }},
		{0.55, "Redis restart (AOF)", func() { srv.Restart() }},
		{0.75, "subscriber kill -9 mid-request", func() { killSubscriber(t, rdb) }},
	}
	for _, f := range faults {
		waitAccepted(int(f.at * float64(n)))
		t.Logf("fault at %d accepted: %s", accepted.Load(), f.name)
		f.do()
	}
	senders.Wait()
	t.Logf("all %d events accepted (%d refused posts retried)", accepted.Load(), refusals.Load())

	store := deadletter.NewStore(rdb, deadletter.Options{})
	ctx := context.Background()
	var c counts
	settle := func(what string) {
		runtimetest.Eventually(t, 10*time.Minute, what, func() bool {
			var err error
			c, err = count(ctx, rdb, store, n)
			return err == nil && c.lost == 0
		})
	}
	settle("every accepted event delivered or dead-lettered")
	t.Logf("before redrive: delivered %d, dead-lettered %d, duplicates %d", c.delivered, c.deadLettered, c.duplicates)

	// The "fix": the bursts are over (the recorder fails those events only attemptsPerDelivery
	// times); redrive the dead letters of eventType. The slow ones stay dead-lettered.
	letters, err := store.List(ctx, deadletter.Filter{Type: eventType})
	if err != nil {
		t.Fatal(err)
	}
	pub, err := sink.New(rt.BrokerURL(namespace, "default"), 10*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	rep, err := deadletter.Redrive(ctx, store, pub, letters, deadletter.RedriveOptions{})
	if err != nil {
		t.Fatalf("redrive: %v (%+v)", err, rep)
	}
	runtimetest.Eventually(t, 5*time.Minute, "redriven events delivered", func() bool {
		c, err = count(ctx, rdb, store, n)
		return err == nil && c.lost == 0 && c.delivered+c.deadLettered+c.parked == n && c.redrivenPending(letters) == 0
	})
	c.accepted = int(accepted.Load())
	c.redriven = rep.Accepted

	table := c.table()
	t.Log("\n" + table)
	fmt.Println(table)
	if c.lost != 0 || c.accepted != c.delivered+c.deadLettered+c.parked {
		t.Fatalf("lost %d, accepted %d ≠ delivered %d + dead-lettered %d + parked %d", c.lost, c.accepted, c.delivered, c.deadLettered, c.parked)
	}
	// Every slow event outlasted the timeout on every attempt, so each must be stored as a dead
	// letter (the subscriber may still have finished some after the broker gave up: those count
	// as delivered above, which is why dead-lettered is over ids never delivered).
	for i := range n {
		if e := eventFor(i); e.Type() == slowType && !c.stored[e.ID()] {
			t.Errorf("slow event %s is not in the dead-letter store", e.ID())
		}
	}
	t.Logf("%d events were both processed by the subscriber and dead-lettered (finished after a timeout)", c.both)
	if c.redriven == 0 {
		t.Error("nothing was redriven: the bursts did not outlast the retries")
	}
}

// counts are the figures of the final table, over distinct event ids.
type counts struct {
	accepted     int
	delivered    int // accepted by the subscriber at least once
	deadLettered int // stored in the dead-letter store by its sink and never delivered
	parked       int // parked by the broker (subscriber and sink kept failing), never delivered
	redriven     int // dead letters the broker accepted again
	duplicates   int // deliveries beyond the first, seen by the subscriber
	lost         int // neither delivered nor dead-lettered
	both         int // delivered and also stored as a dead letter
	seen         map[string]int64
	stored       map[string]bool // event ids in the dead-letter store
}

func (c counts) redrivenPending(letters []deadletter.Letter) int {
	pending := 0
	for _, l := range letters {
		if c.seen[l.EventID] == 0 {
			pending++
		}
	}
	return pending
}

func (c counts) table() string {
	var b strings.Builder
	fmt.Fprintf(&b, "%-10s %-10s %-14s %-7s %-9s %-11s %s\n", "accepted", "delivered", "dead-lettered", "parked", "redriven", "duplicates", "lost")
	fmt.Fprintf(&b, "%-10d %-10d %-14d %-7d %-9d %-11d %d", c.accepted, c.delivered, c.deadLettered, c.parked, c.redriven, c.duplicates, c.lost)
	return b.String()
}

func count(ctx context.Context, rdb *redis.Client, store *deadletter.Store, n int) (counts, error) {
	seen, err := rdb.HGetAll(ctx, "knfaas:test:recorder:"+recorderName+":seen").Result()
	if err != nil {
		return counts{}, err
	}
	letters, err := store.List(ctx, deadletter.Filter{})
	if err != nil {
		return counts{}, err
	}
	c := counts{seen: map[string]int64{}, stored: map[string]bool{}}
	for id, v := range seen {
		k, _ := strconv.ParseInt(v, 10, 64)
		c.seen[id] = k
		if k > 0 {
			c.delivered++
			c.duplicates += int(k - 1)
		}
	}
	dead, parked := map[string]bool{}, map[string]bool{}
	for _, l := range letters {
		c.stored[l.EventID] = true
		switch {
		case c.seen[l.EventID] > 0:
		case l.Reason == deadletter.ReasonParked:
			parked[l.EventID] = true
		default:
			dead[l.EventID] = true
		}
	}
	c.both = len(c.stored) - len(dead) - len(parked)
	c.deadLettered = len(dead)
	c.parked = len(parked)
	for i := range n {
		id := fmt.Sprintf("ev-%05d", i)
		if c.seen[id] == 0 && !dead[id] && !parked[id] {
			c.lost++
		}
	}
	return c, nil
}

// killSubscriber sends SIGKILL to one live recorder instance while it has requests in flight.
// Its pid comes from the recorder's own registry in Redis and is checked against
// /proc/<pid>/cmdline, so a recycled pid of another program is never signalled.
func killSubscriber(t *testing.T, rdb *redis.Client) {
	t.Helper()
	ctx := context.Background()
	runtimetest.Eventually(t, time.Minute, "a live recorder instance", func() bool {
		pids, err := rdb.SMembers(ctx, "knfaas:test:recorder:"+recorderName+":pids").Result()
		if err != nil {
			return false
		}
		for _, p := range pids {
			pid, err := strconv.Atoi(p)
			if err != nil {
				continue
			}
			cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
			if err != nil || !strings.HasPrefix(filepath.Base(strings.SplitN(string(cmdline), "\x00", 2)[0]), "recorder-") {
				continue
			}
			if syscall.Kill(pid, syscall.SIGKILL) == nil {
				t.Logf("killed recorder pid %d", pid)
				return true
			}
		}
		return false
	})
}
