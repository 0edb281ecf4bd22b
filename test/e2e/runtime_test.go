//go:build e2e

// Package e2e tests knfaas up end to end: real processes, a real redis-server, real HTTP.
package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os/exec"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

const eventing = "test/e2e/testdata/eventing"

func recorderSeen(t *testing.T, rdb *redis.Client, recorder string) map[string]int {
	t.Helper()
	m, err := rdb.HGetAll(context.Background(), "knfaas:test:recorder:"+recorder+":seen").Result()
	if err != nil {
		t.Fatal(err)
	}
	out := map[string]int{}
	for k, v := range m {
		out[k], _ = strconv.Atoi(v)
	}
	return out
}

func recorderEvents(t *testing.T, rdb *redis.Client, recorder string) []cloudevents.Event {
	t.Helper()
	raws, err := rdb.LRange(context.Background(), "knfaas:test:recorder:"+recorder+":events", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	var out []cloudevents.Event
	for _, raw := range raws {
		var e cloudevents.Event
		if err := json.Unmarshal([]byte(raw), &e); err != nil {
			t.Fatal(err)
		}
		out = append(out, e)
	}
	return out
}

func attempts(t *testing.T, rdb *redis.Client, recorder, id string) int {
	t.Helper()
	n, _ := rdb.HGet(context.Background(), "knfaas:test:recorder:"+recorder+":attempts", id).Int()
	return n
}

func TestTriggerRouting(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{eventing}, RedisURL: srv.URL()})

	placed := runtimetest.NewEvent("order-1", "dev.knfaas.e2e.order.placed")
	placed.SetExtension("replytype", "dev.knfaas.e2e.order.placed.reply")
	placed.SetExtension("target", "orders")
	rt.Send("e2e", "default", placed)
	rt.Send("e2e", "default", runtimetest.NewEvent("quiet-1", "dev.knfaas.e2e.something.noaudit"))
	rt.Send("e2e", "default", runtimetest.NewEvent("other-1", "com.example.unrelated"))

	runtimetest.Eventually(t, 30*time.Second, "the reply reaches the replies trigger", func() bool {
		return recorderSeen(t, rdb, "replies")["reply-order-1"] == 1
	})
	tests := []struct {
		name     string
		recorder string
		want     map[string]int
	}{
		{name: "legacy attributes filter", recorder: "orders", want: map[string]int{"order-1": 1}},
		{name: "prefix and not(cesql) filters", recorder: "audit", want: map[string]int{"order-1": 1, "reply-order-1": 1}},
		{name: "suffix filter sees the reply", recorder: "replies", want: map[string]int{"reply-order-1": 1}},
	}
	// Give stray deliveries a moment to show up before asserting exact sets.
	time.Sleep(500 * time.Millisecond)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := recorderSeen(t, rdb, tc.recorder)
			if fmt.Sprint(got) != fmt.Sprint(tc.want) {
				t.Fatalf("%s saw %v, want %v", tc.recorder, got, tc.want)
			}
		})
	}
	t.Run("subscriber does not see the broker TTL", func(t *testing.T) {
		for _, e := range recorderEvents(t, rdb, "orders") {
			if _, ok := e.Extensions()["knativebrokerttl"]; ok {
				t.Fatalf("event delivered with knativebrokerttl: %v", e)
			}
		}
	})
}

func TestRetriesThenDeadLetter(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{AOF: true})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{eventing}, RedisURL: srv.URL()})

	tests := []struct {
		name         string
		id, typ      string
		failTimes    int
		status       int
		sleepMS      int
		wantAttempts int
		wantDead     bool
		wantCode     string
	}{
		// Trigger orders-fail: retry 3 (linear) → 4 attempts, then its dead-letter sink.
		{name: "5xx retried then dead-lettered", id: "f-500", typ: "dev.knfaas.e2e.fail", failTimes: 100, status: 500, wantAttempts: 4, wantDead: true, wantCode: "500"},
		{name: "404 is retried too (Knative retries 404)", id: "f-404", typ: "dev.knfaas.e2e.fail", failTimes: 100, status: 404, wantAttempts: 4, wantDead: true, wantCode: "404"},
		{name: "400 is not retried", id: "f-400", typ: "dev.knfaas.e2e.fail", failTimes: 100, status: 400, wantAttempts: 1, wantDead: true, wantCode: "400"},
		{name: "attempt timeout counts as a failure", id: "f-slow", typ: "dev.knfaas.e2e.fail", sleepMS: 3000, wantAttempts: 4, wantDead: true, wantCode: "500"},
		{name: "recovers within the retries", id: "f-2", typ: "dev.knfaas.e2e.fail", failTimes: 2, status: 503, wantAttempts: 3},
		// Trigger orders-placed inherits the broker's delivery: retry 2 → 3 attempts.
		{name: "broker delivery is the default", id: "p-500", typ: "dev.knfaas.e2e.order.placed", failTimes: 100, status: 500, wantAttempts: 3, wantDead: true, wantCode: "500"},
	}
	for _, tc := range tests {
		e := runtimetest.NewEvent(tc.id, tc.typ)
		e.SetExtension("target", "orders")
		e.SetExtension("failtimes", strconv.Itoa(tc.failTimes))
		e.SetExtension("failstatus", strconv.Itoa(tc.status))
		if tc.sleepMS > 0 {
			e.SetExtension("sleepms", strconv.Itoa(tc.sleepMS))
		}
		rt.Send("e2e", "default", e)
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			runtimetest.Eventually(t, 30*time.Second, "delivery settles", func() bool {
				return recorderSeen(t, rdb, "orders")[tc.id] == 1 || recorderSeen(t, rdb, "dlq")[tc.id] == 1
			})
			if got := attempts(t, rdb, "orders", tc.id); got != tc.wantAttempts {
				t.Errorf("attempts = %d, want %d", got, tc.wantAttempts)
			}
			var dead *cloudevents.Event
			for _, e := range recorderEvents(t, rdb, "dlq") {
				if e.ID() == tc.id {
					e := e
					dead = &e
				}
			}
			if (dead != nil) != tc.wantDead {
				t.Fatalf("dead-lettered = %v, want %v", dead != nil, tc.wantDead)
			}
			if dead == nil {
				return
			}
			ext := dead.Extensions()
			if got := fmt.Sprint(ext["knativeerrorcode"]); got != tc.wantCode {
				t.Errorf("knativeerrorcode = %q, want %q", got, tc.wantCode)
			}
			// The subscriber's cluster-local address, as on a cluster: stable across restarts.
			if dest := fmt.Sprint(ext["knativeerrordest"]); dest != "http://orders.e2e.svc.cluster.local" {
				t.Errorf("knativeerrordest = %q, want the subscriber's address http://orders.e2e.svc.cluster.local", dest)
			}
			if data := fmt.Sprint(ext["knativeerrordata"]); data == "" || data == "<nil>" {
				t.Errorf("knativeerrordata missing: %v", ext)
			}
			if trig := fmt.Sprint(ext["knfaastrigger"]); !strings.HasPrefix(trig, "e2e/orders-") {
				t.Errorf("knfaastrigger = %q, want the failing trigger", trig)
			}
			if string(dead.Data()) != fmt.Sprintf(`{"id":%q}`, tc.id) {
				t.Errorf("dead letter data = %s, want the original data", dead.Data())
			}
		})
	}
}

func TestPingSourceFires(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	runtimetest.Start(t, runtimetest.Options{Paths: []string{eventing}, RedisURL: srv.URL()})
	runtimetest.Eventually(t, 30*time.Second, "three ticks", func() bool { return len(recorderSeen(t, rdb, "ticks")) >= 3 })
	events := recorderEvents(t, rdb, "ticks")
	seen := map[string]bool{}
	for _, e := range events {
		if e.Type() != "dev.knative.sources.ping" || e.Source() != "/apis/v1/namespaces/e2e/pingsources/every-second" {
			t.Fatalf("tick has type %q source %q, want Knative's PingSource type and source", e.Type(), e.Source())
		}
		if string(e.Data()) != `{"tick":true}` {
			t.Errorf("tick data = %s", e.Data())
		}
		if seen[e.ID()] {
			t.Errorf("two ticks share id %s", e.ID())
		}
		seen[e.ID()] = true
	}
}

func TestIngressRejectsBadRequests(t *testing.T) {
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{eventing}})
	valid := func(r *http.Request) {
		r.Header.Set("Ce-Id", "1")
		r.Header.Set("Ce-Type", "t")
		r.Header.Set("Ce-Source", "/s")
		r.Header.Set("Ce-Specversion", "1.0")
	}
	tests := []struct {
		name     string
		method   string
		path     string
		header   func(*http.Request)
		body     string
		want     int
		wantBody string
	}{
		{name: "binary event", method: "POST", path: "/e2e/default", header: valid, want: 202},
		{name: "structured event", method: "POST", path: "/e2e/default", header: func(r *http.Request) {
			r.Header.Set("Content-Type", "application/cloudevents+json")
		}, body: `{"specversion":"1.0","id":"2","type":"t","source":"/s"}`, want: 202},
		{name: "unknown broker", method: "POST", path: "/e2e/nope", header: valid, want: 404, wantBody: "broker e2e/nope not found"},
		{name: "not a CloudEvent", method: "POST", path: "/e2e/default", body: "hello", want: 400, wantBody: "not a CloudEvent"},
		{name: "missing type", method: "POST", path: "/e2e/default", header: func(r *http.Request) {
			valid(r)
			r.Header.Del("Ce-Type")
		}, want: 400, wantBody: "type"},
		{name: "bad specversion", method: "POST", path: "/e2e/default", header: func(r *http.Request) {
			valid(r)
			r.Header.Set("Ce-Specversion", "9.9")
		}, want: 400},
		{name: "exhausted TTL", method: "POST", path: "/e2e/default", header: func(r *http.Request) {
			valid(r)
			r.Header.Set("Ce-Knativebrokerttl", "0")
		}, want: 400, wantBody: "TTL"},
		{name: "GET", method: "GET", path: "/e2e/default", want: 405},
		// Events no subscriber could receive: attributes travel as HTTP headers in binary mode.
		{name: "1.2 MB extension, structured", method: "POST", path: "/e2e/default", header: func(r *http.Request) {
			r.Header.Set("Content-Type", "application/cloudevents+json")
		}, body: `{"specversion":"1.0","id":"3","type":"t","source":"/s","poison":"` + strings.Repeat("x", 1200_000) + `"}`, want: 400, wantBody: `attribute "poison"`},
		{name: "5 KB extension, binary", method: "POST", path: "/e2e/default", header: func(r *http.Request) {
			valid(r)
			r.Header.Set("Ce-Poison", strings.Repeat("x", 5000))
		}, want: 400, wantBody: `attribute "poison"`},
		{name: "event over the broker's max", method: "POST", path: "/e2e/default", header: valid, body: strings.Repeat("x", 5<<20), want: 413, wantBody: "max-event-bytes"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(tc.method, "http://"+rt.Addr()+tc.path, strings.NewReader(tc.body))
			if tc.header != nil {
				tc.header(req)
			}
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.want || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("%s %s: %d %q, want %d containing %q", tc.method, tc.path, resp.StatusCode, body, tc.want, tc.wantBody)
			}
		})
	}
}

func TestServingThroughIngress(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{"test/e2e/testdata/basic"}, RedisURL: srv.URL(), Idle: time.Second})
	c := rt.Client()
	get := func(path string) (int, string) {
		resp, err := c.Get(rt.ServiceURL("e2e", "echo") + path)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	instances := `knfaas_service_instances{namespace="e2e",service="echo"}`
	if n := rt.Metric(instances); n != 1 {
		t.Fatalf("instances after start-up = %v, want 1 (Knative's initial scale)", n)
	}
	runtimetest.Eventually(t, 20*time.Second, "the initial instance scales to zero", func() bool { return rt.Metric(instances) == 0 })
	cold := rt.Metric(`knfaas_service_cold_starts_total{namespace="e2e",service="echo"}`)
	t.Run("env and volumes", func(t *testing.T) {
		tests := map[string]string{
			"/env?name=GREETING":  "hello from a configmap", // configMapKeyRef
			"/env?name=TOKEN":     "s3cret-token",           // secretKeyRef
			"/env?name=REDIS_URL": srv.URL(),                // the runtime's Redis stands in
			"/env?name=K_SERVICE": "echo",
		}
		for path, want := range tests {
			if code, body := get(path); code != 200 || body != want {
				t.Errorf("GET %s = %d %q, want %q", path, code, body, want)
			}
		}
		if n := rt.Metric(`knfaas_service_cold_starts_total{namespace="e2e",service="echo"}`); n != cold+1 {
			t.Errorf("cold starts = %v, want %v: the first request after scale to zero starts one instance", n, cold+1)
		}
		_, file := get("/env?name=SETTINGS_FILE")
		if code, body := get("/file?path=" + file); code != 200 || body != "mode: test\n" {
			t.Errorf("projected ConfigMap file %s = %d %q", file, code, body)
		}
	})
	t.Run("unknown host", func(t *testing.T) {
		resp, err := c.Get(rt.ServiceURL("e2e", "nope"))
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != 404 {
			t.Fatalf("unknown service answered %d, want 404", resp.StatusCode)
		}
	})
	t.Run("containerConcurrency bounds in-flight requests", func(t *testing.T) {
		var wg sync.WaitGroup
		var failed atomic.Int64
		for i := 0; i < 16; i++ {
			wg.Add(1)
			go func() {
				defer wg.Done()
				if code, _ := get("/?sleep=100ms"); code != 200 {
					failed.Add(1)
				}
			}()
		}
		wg.Wait()
		if failed.Load() > 0 {
			t.Fatalf("%d queued requests failed", failed.Load())
		}
		for i := 0; i < 2; i++ {
			if _, body := get("/maxinflight"); mustAtoi(t, body) > 4 {
				t.Fatalf("an instance had %s requests in flight; containerConcurrency is 4", body)
			}
		}
		if n := rt.Metric(instances); n > 2 {
			t.Fatalf("instances = %v, above max-scale 2", n)
		}
	})
	t.Run("scale to zero", func(t *testing.T) {
		runtimetest.Eventually(t, 20*time.Second, "no echo instance after the idle window", func() bool {
			return rt.Metric(instances) == 0
		})
	})
}

func TestUpRefusesBadSetups(t *testing.T) {
	bin := runtimetest.Binary(t)
	root := runtimetest.ModuleRoot(t)
	busy := runtimetest.Start(t, runtimetest.Options{Paths: []string{"test/e2e/testdata/basic"}})
	tests := []struct {
		name  string
		paths []string
		addr  string
		args  []string
		want  []string
	}{
		{name: "function never ready", paths: []string{"test/e2e/testdata/bad/never-ready.yaml"}, args: []string{"--start-timeout", "2s"}, want: []string{"never-ready.yaml", "Service e2e/slow", "did not become ready on /health/readiness within 2s"}},
		{name: "function exits at start", paths: []string{"test/e2e/testdata/bad/exits.yaml"}, want: []string{"Service e2e/exits", "exited before it became ready"}},
		{name: "invalid manifest", paths: []string{"test/e2e/testdata/bad/unknown-field.yaml"}, want: []string{"unknown-field.yaml", "Service e2e/echo", `unknown field "spec.template.spec.containers[0].imagee"`}},
		{name: "trigger of a missing broker", paths: []string{"test/e2e/testdata/bad/missing-broker.yaml"}, want: []string{"Trigger e2e/lost", "spec.broker: Broker e2e/nowhere is not defined in the manifests"}},
		{name: "unknown subscriber", paths: []string{"test/e2e/testdata/bad/missing-subscriber.yaml"}, want: []string{"Trigger e2e/lost", "spec.subscriber.ref: Service e2e/ghost (serving.knative.dev/v1) is not defined in the manifests"}},
		{name: "non-ko image", paths: []string{"test/e2e/testdata/bad/registry-image.yaml"}, want: []string{"Service e2e/web", "only ko://"}},
		{name: "function that does not build", paths: []string{"test/e2e/testdata/bad/no-such-package.yaml"}, want: []string{"building github.com/knfaas/knfaas/test/functions/nope"}},
		{name: "port in use", paths: []string{"test/e2e/testdata/basic"}, addr: busy.Addr(), want: []string{"listening on " + busy.Addr(), "address already in use"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			addr := tc.addr
			if addr == "" {
				addr = "127.0.0.1:0"
			}
			// Its own state and run directories: a test never writes to the user's.
			args := []string{"up", "--defaults=false", "--addr", addr, "--state-dir", t.TempDir(), "--run-dir", t.TempDir()}
			for _, p := range tc.paths {
				args = append(args, "-f", p)
			}
			args = append(args, tc.args...)
			cmd := exec.Command(bin, args...)
			cmd.Dir = root
			out, err := cmd.CombinedOutput()
			if err == nil {
				t.Fatalf("knfaas up succeeded; want a failure\n%s", out)
			}
			for _, w := range tc.want {
				if !strings.Contains(string(out), w) {
					t.Errorf("output does not name %q:\n%s", w, out)
				}
			}
		})
	}
}

func mustAtoi(t *testing.T, s string) int {
	t.Helper()
	n, err := strconv.Atoi(s)
	if err != nil {
		t.Fatalf("%q is not a number", s)
	}
	return n
}
