//go:build e2e

package fault

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/pkg/ptr"

	"github.com/knfaas/knfaas/internal/harness/dataplanetest"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// The scenarios' Broker retries a failed delivery this often, with a linear backoff of
// scenarioBackoff: about 7.5 s of attempts, longer than any outage a scenario makes.
const (
	scenarioRetry   = 5
	scenarioBackoff = "PT0.5S"
	// appendTimeout bounds storing one event on both targets (--append-timeout, APPEND_TIMEOUT).
	appendTimeout = 2 * time.Second
)

// endpoint is a subscriber or dead-letter sink played by the test: it records the event ids it
// accepted, answers after delay, and can be taken down and brought back on the same address.
type endpoint struct {
	addr  string
	delay atomic.Int64 // nanoseconds

	mu  sync.Mutex
	srv *http.Server
	got map[string]int
}

func newEndpoint(t *testing.T) *endpoint {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	e := &endpoint{addr: l.Addr().String(), got: map[string]int{}}
	e.serve(l)
	t.Cleanup(e.down)
	return e
}

func (e *endpoint) url() string { return "http://" + e.addr }

func (e *endpoint) serve(l net.Listener) {
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		ev, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		time.Sleep(time.Duration(e.delay.Load()))
		e.mu.Lock()
		e.got[ev.ID()]++
		e.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	})}
	e.mu.Lock()
	e.srv = srv
	e.mu.Unlock()
	go func() { _ = srv.Serve(l) }()
}

// down closes the listener and every connection: deliveries are refused until up.
func (e *endpoint) down() {
	e.mu.Lock()
	srv := e.srv
	e.srv = nil
	e.mu.Unlock()
	if srv != nil {
		_ = srv.Close()
	}
}

// up serves again on the same address.
func (e *endpoint) up(t *testing.T) {
	t.Helper()
	var l net.Listener
	runtimetest.Eventually(t, 10*time.Second, "the endpoint's address free again", func() bool {
		var err error
		l, err = net.Listen("tcp", e.addr)
		return err == nil
	})
	e.serve(l)
}

func (e *endpoint) count(id string) int {
	e.mu.Lock()
	defer e.mu.Unlock()
	return e.got[id]
}

// target is a broker data plane the scenarios run against: the Broker at brokerURL delivers
// every event to the subscriber, retrying scenarioRetry times, then to the dead-letter sink.
type target struct {
	brokerURL string
	redis     *redistest.Server
	// killDelivery sends SIGKILL to a process in the middle of deliveries and lets the data
	// plane recover as it would: on the cluster one of the two dispatcher replicas (the other
	// claims its pending entries), under knfaas up its only process, which is restarted.
	killDelivery func(t *testing.T)
}

// targets start the data plane of each engine for one scenario.
var targets = []struct {
	name  string
	start func(t *testing.T, subscriber, deadLetters string) *target
}{
	{name: "knfaas up", start: startUp},
	{name: "cluster data plane", start: startClusterDataPlane},
}

func startUp(t *testing.T, subscriber, deadLetters string) *target {
	srv := redistest.Start(t, redistest.Options{})
	dir := t.TempDir()
	manifest := fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: %[1]s
spec:
  delivery:
    retry: %[2]d
    backoffPolicy: linear
    backoffDelay: %[3]s
    deadLetterSink:
      uri: %[4]s
---
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: subscriber
  namespace: %[1]s
spec:
  broker: default
  subscriber:
    uri: %[5]s
`, namespace, scenarioRetry, scenarioBackoff, deadLetters, subscriber)
	if err := os.WriteFile(filepath.Join(dir, "scenario.yaml"), []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{dir}, RedisURL: srv.URL(), RedeliverAfter: time.Second,
		Args: []string{"--append-timeout", appendTimeout.String()}})
	return &target{brokerURL: rt.BrokerURL(namespace, "default"), redis: srv,
		killDelivery: func(t *testing.T) {
			rt.Kill()
			t.Log("knfaas up killed with SIGKILL; restarting it")
			rt.Restart()
		}}
}

// startClusterDataPlane runs the RedisStreamBroker data plane as TestDataPlaneEndToEnd does:
// one ingress and two dispatcher replicas on the contract the controller would write, with the
// consumer group created first as the controller does before a Trigger is Ready.
func startClusterDataPlane(t *testing.T, subscriber, deadLetters string) *target {
	bins := dataplanetest.Binaries(t)
	srv := redistest.Start(t, redistest.Options{})
	ingressAddr := freeAddr(t)
	brokerURL := "http://" + ingressAddr + broker.Path(namespace, "default")
	linear := eventingduckv1.BackoffPolicyLinear
	trig := brokerclass.Trigger{Namespace: namespace, Name: "subscriber", Broker: "default", Subscriber: subscriber, ReplyURL: brokerURL,
		Delivery:       &eventingduckv1.DeliverySpec{Retry: ptr.Int32(scenarioRetry), BackoffPolicy: &linear, BackoffDelay: ptr.String(scenarioBackoff)},
		DeadLetterSink: deadLetters}
	contract := &brokerclass.Contract{Generation: 1, Brokers: []brokerclass.Broker{{Namespace: namespace, Name: "default"}}, Triggers: []brokerclass.Trigger{trig}}
	if err := broker.EnsureGroup(context.Background(), srv.Client(), trig.Stream(), trig.Group()); err != nil {
		t.Fatal(err)
	}
	b, err := contract.Encode()
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), brokerclass.ContractKey)
	if err := os.WriteFile(path, b, 0o644); err != nil {
		t.Fatal(err)
	}
	env := func(addr, pod string) map[string]string {
		return map[string]string{"REDIS_URL": srv.URL(), "CONTRACT_PATH": path, "CONTRACT_POLL_INTERVAL": "100ms",
			// Above the Trigger's retry span (about 7.5 s): a replica claims an entry only
			// once the one delivering it has given up or is gone, as an operator sets it.
			"REDELIVER_AFTER": "10s", "PARALLELISM": "16", "APPEND_TIMEOUT": appendTimeout.String(), "LISTEN_ADDRESS": addr, "POD_NAME": pod}
	}
	dataplanetest.Start(t, "ingress", bins[brokerclass.ModeIngress], env(ingressAddr, "ingress-1"))
	var dispatchers []*dataplanetest.Process
	for _, name := range []string{"dispatcher-1", "dispatcher-2"} {
		addr := freeAddr(t)
		dispatchers = append(dispatchers, dataplanetest.Start(t, name, bins[brokerclass.ModeDispatcher], env(addr, name)))
		dataplanetest.WaitReady(t, addr)
	}
	dataplanetest.WaitReady(t, ingressAddr)
	return &target{brokerURL: brokerURL, redis: srv, killDelivery: func(t *testing.T) {
		consumers, _ := srv.Client().XInfoConsumers(context.Background(), trig.Stream(), trig.Group()).Result()
		dispatchers[0].Kill(t)
		t.Logf("dispatcher-1 killed with SIGKILL (consumers then: %+v); dispatcher-2 claims its entries", consumers)
	}}
}

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// publish posts event id and returns the broker's status, or an error when no answer came
// within timeout.
func publish(ctx context.Context, brokerURL, id string, timeout time.Duration) (int, string, error) {
	req, err := cehttp.NewHTTPRequestFromEvent(ctx, brokerURL, runtimetest.NewEvent(id, eventType))
	if err != nil {
		return 0, "", err
	}
	resp, err := (&http.Client{Timeout: timeout}).Do(req)
	if err != nil {
		return 0, "", err
	}
	resp.Body.Close()
	return resp.StatusCode, resp.Header.Get("Retry-After"), nil
}

// mustPublish posts ids, spread over workers, each until it is accepted.
func mustPublish(t *testing.T, brokerURL string, ids []string, workers int) {
	t.Helper()
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for i := w; i < len(ids); i += workers {
				code, _, err := publish(context.Background(), brokerURL, ids[i], 10*time.Second)
				if err != nil || code != http.StatusAccepted {
					t.Errorf("publishing %s: %d, %v; want 202", ids[i], code, err)
				}
			}
		}()
	}
	wg.Wait()
}

// settled waits until every id reached the subscriber or the dead-letter sink and reports
// the figures; lost is what reached neither.
func settled(t *testing.T, sub, dls *endpoint, ids []string) {
	t.Helper()
	var delivered, deadLettered, duplicates, lost int
	tally := func() {
		delivered, deadLettered, duplicates, lost = 0, 0, 0, 0
		for _, id := range ids {
			n, d := sub.count(id), dls.count(id)
			switch {
			case n > 0:
				delivered++
				duplicates += n - 1
			case d > 0:
				deadLettered++
			default:
				lost++
			}
		}
	}
	runtimetest.Eventually(t, 2*time.Minute, "every accepted event delivered or dead-lettered", func() bool {
		tally()
		return lost == 0
	})
	t.Logf("accepted %d: delivered %d, dead-lettered %d, delivered twice %d, lost %d", len(ids), delivered, deadLettered, duplicates, lost)
}

func ids(prefix string, n int) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = fmt.Sprintf("%s-%03d", prefix, i)
	}
	return out
}

// scenarios are the faults both targets must survive with nothing lost.
var scenarios = []struct {
	name string
	run  func(t *testing.T, tg *target, sub, dls *endpoint)
}{
	{name: "subscriber down then up", run: func(t *testing.T, tg *target, sub, dls *endpoint) {
		sub.down()
		events := ids("down", 20)
		mustPublish(t, tg.brokerURL, events, 4)
		time.Sleep(time.Second) // deliveries fail and are retried
		sub.up(t)
		settled(t, sub, dls, events)
	}},
	{name: "a delivering process killed with SIGKILL mid-delivery", run: func(t *testing.T, tg *target, sub, dls *endpoint) {
		sub.delay.Store(int64(200 * time.Millisecond))
		events := ids("kill", 300)
		mustPublish(t, tg.brokerURL, events, 8)
		runtimetest.Eventually(t, time.Minute, "some deliveries", func() bool {
			got := 0
			for _, id := range events {
				if sub.count(id) > 0 {
					got++
				}
			}
			return got >= 20
		})
		tg.killDelivery(t)
		settled(t, sub, dls, events)
	}},
	{name: "Redis stalled with SIGSTOP: bounded answers, every 202 delivered", run: func(t *testing.T, tg *target, sub, dls *endpoint) {
		tg.redis.Stop()
		stalled := true
		defer func() {
			if stalled {
				tg.redis.Cont()
			}
		}()
		// The first half outlasts the append bound while Redis is stalled (503, or 504 when
		// its lookup is not answered either before Redis resumes); the second
		// half is sent shortly before Redis resumes, within the bound (202 once stored).
		events := ids("stall", 6)
		status := make([]int, len(events))
		retryAfter := make([]string, len(events))
		var wg sync.WaitGroup
		send := func(i int) {
			wg.Add(1)
			go func() {
				defer wg.Done()
				var err error
				status[i], retryAfter[i], err = publish(context.Background(), tg.brokerURL, events[i], 20*time.Second)
				if err != nil {
					if errors.Is(err, context.DeadlineExceeded) || strings.Contains(err.Error(), "Timeout") {
						t.Errorf("%s: no answer within 20s while Redis was stalled (the append bound is %s): %v", events[i], appendTimeout, err)
						return
					}
					t.Errorf("%s: %v", events[i], err)
				}
			}()
		}
		for i := range len(events) / 2 {
			send(i)
		}
		time.Sleep(appendTimeout + 500*time.Millisecond)
		for i := len(events) / 2; i < len(events); i++ {
			send(i)
		}
		time.Sleep(500 * time.Millisecond)
		tg.redis.Cont()
		stalled = false
		wg.Wait()
		var accepted []string
		refused := 0
		for i, code := range status {
			switch code {
			case http.StatusAccepted:
				accepted = append(accepted, events[i])
			case http.StatusServiceUnavailable, http.StatusGatewayTimeout: // 504: Redis answered neither the append nor its lookup
				refused++
				if retryAfter[i] == "" {
					t.Errorf("%s: %d without Retry-After", events[i], code)
				}
			default:
				t.Errorf("%s: %d, want 202, 503 or 504", events[i], code)
			}
		}
		if refused == 0 {
			t.Errorf("statuses %v: no 503 or 504 while Redis was stalled", status)
		}
		if len(accepted) == 0 {
			t.Errorf("statuses %v: nothing sent shortly before Redis resumed was accepted", status)
		}
		t.Logf("Redis stalled %s under %d publishes: statuses %v", appendTimeout+time.Second, len(events), status)
		settled(t, sub, dls, accepted)
	}},
}

// TestScenariosOnBothTargets runs one table of fault scenarios against the broker of `knfaas
// up` and against the RedisStreamBroker cluster data plane (ingress and two dispatcher
// replicas as processes): a subscriber down then up, a delivering process killed with SIGKILL
// mid-delivery, and Redis stalled with SIGSTOP. Every event a target accepted (202) must reach
// the subscriber or the dead-letter sink.
func TestScenariosOnBothTargets(t *testing.T) {
	for _, sc := range scenarios {
		t.Run(sc.name, func(t *testing.T) {
			for _, tg := range targets {
				t.Run(tg.name, func(t *testing.T) {
					sub, dls := newEndpoint(t), newEndpoint(t)
					sc.run(t, tg.start(t, sub.url(), dls.url()), sub, dls)
				})
			}
		})
	}
}
