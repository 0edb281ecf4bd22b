//go:build e2e

package brokerclass_test

import (
	"context"
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

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/pkg/ptr"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	eventsink "github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/dataplanetest"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

func freeAddr(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}

// sink records the events it receives by id and answers status after delay; reply, when set,
// makes it answer with a reply event instead.
type sink struct {
	url    string
	status atomic.Int32 // what it answers; settable while it runs
	mu     sync.Mutex
	calls  map[string]int
	events map[string]cloudevents.Event
}

func newSink(t *testing.T, status int, delay time.Duration, reply func(cloudevents.Event) *cloudevents.Event) *sink {
	s := &sink{calls: map[string]int{}, events: map[string]cloudevents.Event{}}
	s.status.Store(int32(status))
	srv := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		time.Sleep(delay)
		s.mu.Lock()
		s.calls[e.ID()]++
		s.events[e.ID()] = *e
		s.mu.Unlock()
		if reply != nil {
			if out := reply(*e); out != nil {
				if err := cehttp.WriteResponseWriter(r.Context(), binding.ToMessage(out), http.StatusOK, w); err != nil {
					t.Errorf("writing reply: %v", err)
				}
				return
			}
		}
		w.WriteHeader(int(s.status.Load()))
	})}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	go func() { _ = srv.Serve(l) }()
	t.Cleanup(func() { _ = srv.Close() })
	s.url = "http://" + l.Addr().String()
	return s
}

func (s *sink) got(id string) (cloudevents.Event, int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.events[id], s.calls[id]
}

// distinct counts the ids with prefix that arrived, and the deliveries beyond the first.
func (s *sink) distinct(prefix string) (ids, duplicates int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for id, n := range s.calls {
		if strings.HasPrefix(id, prefix) {
			ids++
			duplicates += n - 1
		}
	}
	return ids, duplicates
}

func send(t *testing.T, brokerURL, id, typ string) {
	t.Helper()
	e := runtimetest.NewEvent(id, typ)
	req, err := cehttp.NewHTTPRequestFromEvent(context.Background(), brokerURL, e)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("sending %s: %v", id, err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("sending %s: %d, want 202", id, resp.StatusCode)
	}
}

func writeContract(t *testing.T, path string, c *brokerclass.Contract) {
	t.Helper()
	b, err := c.Encode()
	if err != nil {
		t.Fatal(err)
	}
	// As the kubelet updates a mounted ConfigMap: the new file replaces the old one at once.
	tmp := path + ".new"
	if err := os.WriteFile(tmp, b, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

func exactType(typ string) []eventingv1.SubscriptionsAPIFilter {
	return []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": typ}}}
}

// TestDataPlaneEndToEnd runs the RedisStreamBroker data plane as processes (one ingress, two
// dispatcher replicas) on a contract file and a real redis-server: filtered delivery, replies
// back through the ingress, retries then the dead-letter sink, a dispatcher replica killed with
// SIGKILL mid-delivery with nothing lost, a Trigger added by a new contract, dead letters
// redriven back through the ingress, a Redis stall (503 + Retry-After, every 202 delivered),
// and the trim.
func TestDataPlaneEndToEnd(t *testing.T) {
	bins := dataplanetest.Binaries(t)
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()

	orders := newSink(t, http.StatusOK, 100*time.Millisecond, nil)
	failing := newSink(t, http.StatusInternalServerError, 0, nil)
	deadLetters := newSink(t, http.StatusAccepted, 0, nil)
	late := newSink(t, http.StatusOK, 0, nil)
	asker := newSink(t, http.StatusOK, 0, func(e cloudevents.Event) *cloudevents.Event {
		r := runtimetest.NewEvent("reply-"+e.ID(), "dev.knfaas.e2e.order")
		return &r
	})

	ingressAddr := freeAddr(t)
	brokerURL := "http://" + ingressAddr + broker.Path("knfaas", "default")
	dir := t.TempDir()
	contractPath := filepath.Join(dir, brokerclass.ContractKey)
	trigger := func(name string, filters []eventingv1.SubscriptionsAPIFilter, subscriber string) brokerclass.Trigger {
		return brokerclass.Trigger{Namespace: "knfaas", Name: name, Broker: "default", Filters: filters, Subscriber: subscriber, ReplyURL: brokerURL}
	}
	failTrigger := trigger("fail", nil, failing.url)
	failTrigger.Filter = &eventingv1.TriggerFilter{Attributes: eventingv1.TriggerFilterAttributes{"type": "dev.knfaas.e2e.fail"}}
	linear := eventingduckv1.BackoffPolicyLinear
	failTrigger.Delivery = &eventingduckv1.DeliverySpec{Retry: ptr.Int32(2), BackoffPolicy: &linear, BackoffDelay: ptr.String("PT0.01S")}
	failTrigger.DeadLetterSink = deadLetters.url
	contract := &brokerclass.Contract{
		Generation: 1,
		Brokers:    []brokerclass.Broker{{Namespace: "knfaas", Name: "default"}},
		Triggers: []brokerclass.Trigger{
			trigger("orders", exactType("dev.knfaas.e2e.order"), orders.url),
			trigger("ask", exactType("dev.knfaas.e2e.ask"), asker.url),
			failTrigger,
		},
	}
	// As the controller does: every group exists before the Trigger is Ready.
	for _, tr := range contract.Triggers {
		if err := broker.EnsureGroup(ctx, rdb, tr.Stream(), tr.Group()); err != nil {
			t.Fatal(err)
		}
	}
	writeContract(t, contractPath, contract)

	common := map[string]string{
		"REDIS_URL": srv.URL(), "CONTRACT_PATH": contractPath, "CONTRACT_POLL_INTERVAL": "100ms",
		"REDELIVER_AFTER": "2s", "PARALLELISM": "8", "MAINTAIN_INTERVAL": "300ms",
	}
	with := func(extra map[string]string) map[string]string {
		env := map[string]string{}
		for k, v := range common {
			env[k] = v
		}
		for k, v := range extra {
			env[k] = v
		}
		return env
	}
	dataplanetest.Start(t, "ingress", bins[brokerclass.ModeIngress], with(map[string]string{"LISTEN_ADDRESS": ingressAddr, "POD_NAME": "ingress-1"}))
	dispatchers := map[string]*dataplanetest.Process{}
	for _, name := range []string{"dispatcher-1", "dispatcher-2"} {
		addr := freeAddr(t)
		dispatchers[name] = dataplanetest.Start(t, name, bins[brokerclass.ModeDispatcher], with(map[string]string{"LISTEN_ADDRESS": addr, "POD_NAME": name}))
		dataplanetest.WaitReady(t, addr)
	}
	dataplanetest.WaitReady(t, ingressAddr)

	t.Run("filtered delivery and replies", func(t *testing.T) {
		send(t, brokerURL, "o-1", "dev.knfaas.e2e.order")
		send(t, brokerURL, "x-1", "dev.knfaas.e2e.other")
		send(t, brokerURL, "a-1", "dev.knfaas.e2e.ask")
		runtimetest.Eventually(t, time.Minute, "the order and the reply to the question", func() bool {
			_, o := orders.got("o-1")
			_, r := orders.got("reply-a-1")
			return o > 0 && r > 0
		})
		for _, s := range []*sink{orders, asker, failing} {
			if _, n := s.got("x-1"); n != 0 {
				t.Errorf("x-1 matches no trigger but reached %s %d times", s.url, n)
			}
		}
	})

	t.Run("retries then dead letter", func(t *testing.T) {
		send(t, brokerURL, "f-1", "dev.knfaas.e2e.fail")
		var dl cloudevents.Event
		runtimetest.Eventually(t, time.Minute, "the dead letter", func() bool {
			var n int
			dl, n = deadLetters.got("f-1")
			return n > 0
		})
		if _, n := failing.got("f-1"); n != 3 {
			t.Errorf("the failing subscriber got f-1 %d times, want 3 (1 + retry: 2)", n)
		}
		ext := dl.Extensions()
		if fmt.Sprint(ext["knativeerrorcode"]) != "500" || fmt.Sprint(ext["knativeerrordest"]) != failing.url {
			t.Errorf("dead letter extensions %v, want knativeerrorcode 500 and knativeerrordest %s", ext, failing.url)
		}
		if fmt.Sprint(ext[broker.TriggerExtension]) != "knfaas/fail" {
			t.Errorf("dead letter %s = %v, want knfaas/fail", broker.TriggerExtension, ext[broker.TriggerExtension])
		}
	})

	t.Run("a dispatcher replica killed mid-delivery loses nothing", func(t *testing.T) {
		const n = 200
		var wg sync.WaitGroup
		for w := range 4 {
			wg.Add(1)
			go func() {
				defer wg.Done()
				for i := w; i < n; i += 4 {
					send(t, brokerURL, fmt.Sprint("k-", i), "dev.knfaas.e2e.order")
				}
			}()
		}
		wg.Wait()
		runtimetest.Eventually(t, time.Minute, "some deliveries", func() bool {
			got, _ := orders.distinct("k-")
			return got >= 20
		})
		stream, group := broker.StreamKey("knfaas", "default"), (&broker.Trigger{Namespace: "knfaas", Name: "orders"}).Group()
		dispatchers["dispatcher-1"].Kill(t)
		var pendingAtKill int64
		consumers, err := rdb.XInfoConsumers(ctx, stream, group).Result()
		if err != nil {
			t.Fatal(err)
		}
		for _, c := range consumers {
			if c.Name == "dispatcher-1" {
				pendingAtKill = c.Pending
			}
		}
		if pendingAtKill == 0 {
			t.Fatalf("dispatcher-1 held no pending entries when killed (consumers %+v): the test killed nothing mid-delivery", consumers)
		}
		runtimetest.Eventually(t, 2*time.Minute, "every event delivered", func() bool {
			got, _ := orders.distinct("k-")
			return got == n
		})
		runtimetest.Eventually(t, time.Minute, "nothing pending", func() bool {
			p, err := rdb.XPending(ctx, stream, group).Result()
			return err == nil && p.Count == 0
		})
		got, dup := orders.distinct("k-")
		t.Logf("SIGKILL of dispatcher-1 with %d entries pending: %d/%d delivered, lost %d, delivered twice %d", pendingAtKill, got, n, n-got, dup)
	})

	t.Run("a trigger added to the contract", func(t *testing.T) {
		added := trigger("late", exactType("dev.knfaas.e2e.late"), late.url)
		if err := broker.EnsureGroup(ctx, rdb, added.Stream(), added.Group()); err != nil {
			t.Fatal(err)
		}
		contract.Generation++
		contract.Triggers = append(contract.Triggers, added)
		writeContract(t, contractPath, contract)
		// Published right after the group exists, before any dispatcher read the new contract.
		send(t, brokerURL, "l-1", "dev.knfaas.e2e.late")
		runtimetest.Eventually(t, time.Minute, "the late trigger's event", func() bool {
			_, n := late.got("l-1")
			return n > 0
		})
	})

	t.Run("dead letters redriven through the ingress", func(t *testing.T) {
		// The dead-letter sink stores letters as the deadletter function does; redrive is what
		// `knfaas dlq redrive --broker <ingress URL>` runs.
		store := deadletter.NewStore(rdb, deadletter.Options{})
		dlq := &http.Server{Handler: http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			l, err := deadletter.FromEvent(*e)
			if err == nil {
				_, _, err = store.Add(r.Context(), l)
			}
			if err != nil {
				http.Error(w, err.Error(), http.StatusInternalServerError)
				return
			}
			w.WriteHeader(http.StatusAccepted)
		})}
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		go func() { _ = dlq.Serve(l) }()
		defer dlq.Close()
		subscriber := newSink(t, http.StatusInternalServerError, 0, nil)
		fixable := trigger("fixable", exactType("dev.knfaas.e2e.fixable"), subscriber.url)
		fixable.Delivery = &eventingduckv1.DeliverySpec{Retry: ptr.Int32(1), BackoffPolicy: &linear, BackoffDelay: ptr.String("PT0.01S")}
		fixable.DeadLetterSink = "http://" + l.Addr().String()
		if err := broker.EnsureGroup(ctx, rdb, fixable.Stream(), fixable.Group()); err != nil {
			t.Fatal(err)
		}
		contract.Generation++
		contract.Triggers = append(contract.Triggers, fixable)
		writeContract(t, contractPath, contract)
		// The group exists: the event waits for the dispatchers to read the new contract.
		send(t, brokerURL, "fx-1", "dev.knfaas.e2e.fixable")
		var letters []deadletter.Letter
		runtimetest.Eventually(t, time.Minute, "the dead letter stored", func() bool {
			letters, err = store.List(ctx, deadletter.Filter{Type: "dev.knfaas.e2e.fixable"})
			return err == nil && len(letters) == 1
		})
		if _, n := subscriber.got("fx-1"); n != 2 {
			t.Errorf("the subscriber got fx-1 %d times before it was dead-lettered, want 2 (1 + retry: 1)", n)
		}
		subscriber.status.Store(http.StatusOK)
		pub, err := eventsink.New(brokerURL, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		rep, err := deadletter.Redrive(ctx, store, pub, letters, deadletter.RedriveOptions{})
		if err != nil || rep.Accepted != 1 {
			t.Fatalf("redrive: %+v, %v; want the letter accepted", rep, err)
		}
		first, err := letters[0].OriginalEvent()
		if err != nil {
			t.Fatal(err)
		}
		runtimetest.Eventually(t, time.Minute, "the redriven event delivered", func() bool {
			e, n := subscriber.got(first.ID())
			return n == 3 && fmt.Sprint(e.Extensions()[deadletter.ExtRedrive]) == "1"
		})
		if left, _ := store.List(ctx, deadletter.Filter{Type: "dev.knfaas.e2e.fixable"}); len(left) != 0 {
			t.Errorf("%d letters still stored after the redrive", len(left))
		}
		e, _ := subscriber.got(first.ID())
		if string(e.Data()) != string(first.Data()) {
			t.Errorf("redriven data %q, want the original %q", e.Data(), first.Data())
		}
	})

	t.Run("a Redis stall: 503 with Retry-After, every 202 delivered", func(t *testing.T) {
		srv.Stop() // SIGSTOP: Redis holds the connections and answers nothing
		stalled := true
		defer func() {
			if stalled {
				srv.Cont()
			}
		}()
		const n = 6
		status := make([]int, n)
		retryAfter := make([]string, n)
		var wg sync.WaitGroup
		for i := range n {
			wg.Add(1)
			go func() {
				defer wg.Done()
				req, err := cehttp.NewHTTPRequestFromEvent(ctx, brokerURL, runtimetest.NewEvent(fmt.Sprint("stall-", i), "dev.knfaas.e2e.order"))
				if err != nil {
					t.Error(err)
					return
				}
				resp, err := (&http.Client{Timeout: 20 * time.Second}).Do(req)
				if err != nil {
					t.Errorf("stall-%d: %v (the ingress must answer within its append bound)", i, err)
					return
				}
				resp.Body.Close()
				status[i], retryAfter[i] = resp.StatusCode, resp.Header.Get("Retry-After")
			}()
			if i == n/2-1 {
				time.Sleep(500 * time.Millisecond)
			}
		}
		time.Sleep(3 * time.Second) // beyond APPEND_TIMEOUT (2s): the first ones are answered
		srv.Cont()
		stalled = false
		wg.Wait()
		refused := 0
		for i, code := range status {
			switch code {
			case http.StatusAccepted:
				id := fmt.Sprint("stall-", i)
				runtimetest.Eventually(t, time.Minute, id+" delivered", func() bool {
					_, got := orders.got(id)
					return got > 0
				})
			case http.StatusServiceUnavailable, http.StatusGatewayTimeout: // 504: neither the append nor its lookup answered
				refused++
				if retryAfter[i] == "" {
					t.Errorf("stall-%d: %d without Retry-After", i, code)
				}
			default:
				t.Errorf("stall-%d: %d, want 202, 503 or 504", i, code)
			}
		}
		if refused == 0 {
			t.Errorf("statuses %v: no 503 or 504 while Redis was stalled", status)
		}
		t.Logf("Redis stalled 3s under %d publishes: statuses %v; every 202 delivered", n, status)
	})

	t.Run("acknowledged entries are trimmed by the lease holder", func(t *testing.T) {
		stream := broker.StreamKey("knfaas", "default")
		runtimetest.Eventually(t, time.Minute, "the stream trimmed", func() bool {
			return rdb.XLen(ctx, stream).Val() <= 1
		})
		if holder := rdb.Get(ctx, broker.TrimLeaseKey(stream)).Val(); holder != "ingress-1" {
			t.Errorf("trim lease held by %q, want ingress-1", holder)
		}
	})
}
