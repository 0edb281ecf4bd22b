package main

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestConfigCheck(t *testing.T) {
	tests := map[string]struct {
		env map[string]string
		err string // "" when the configuration is accepted
	}{
		"defaults":            {},
		"fast schedule":       {env: map[string]string{"NOTIFY_SCHEDULE": "1s,2s"}},
		"no retries":          {env: map[string]string{"NOTIFY_SCHEDULE": ""}},
		"bad schedule":        {env: map[string]string{"NOTIFY_SCHEDULE": "1s,soon"}, err: `NOTIFY_SCHEDULE ("1s,soon"): step 2`},
		"retention too short": {env: map[string]string{"NOTIFY_RETENTION": "24h"}, err: "NOTIFY_RETENTION (24h0m0s) must be at least"},
		"poll":                {env: map[string]string{"NOTIFY_POLL": "0s"}, err: "NOTIFY_POLL"},
		"batch":               {env: map[string]string{"NOTIFY_BATCH": "0"}, err: "NOTIFY_BATCH (0)"},
		"drain":               {env: map[string]string{"NOTIFY_DRAIN_TIMEOUT": "-1s"}, err: "NOTIFY_DRAIN_TIMEOUT"},
		"API token template":  {env: map[string]string{"NOTIFY_API_TOKEN": "CHANGE-ME-notify-api-token-000000"}, err: "NOTIFY_API_TOKEN (Secret notify-api, key token) holds the template placeholder"},
		"API token too short": {env: map[string]string{"NOTIFY_API_TOKEN": "short"}, err: "NOTIFY_API_TOKEN is 5 characters"},
		"API token set":       {env: map[string]string{"NOTIFY_API_TOKEN": "0123456789abcdef0123"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var cfg Config
			err := funcstart.ReadConfig("notify", &cfg)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("ReadConfig = %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("ReadConfig = %v, want an error saying %q", err, tc.err)
			}
		})
	}
}

func TestStartRefusesABadEndpointsFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "endpoints.yaml")
	if err := os.WriteFile(path, []byte("endpoints:\n- {name: a, url: 'ftp://x', types: [t], secretEnv: [NOTIFY_TEST_UNSET]}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("NOTIFY_ENDPOINTS_FILE", path)
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
	err := New().Start(context.Background(), nil)
	for _, want := range []string{`endpoint "a" (endpoints[0]): url:`, "secretEnv: none of [NOTIFY_TEST_UNSET] is set"} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Start = %v, want an error saying %q", err, want)
		}
	}
}

func TestGuardUnderKnfaasUp(t *testing.T) {
	tests := map[string]struct {
		listen, redis string
		addr          string
		ok            bool
	}{
		"cluster: loopback refused":        {listen: "[::]:8080", addr: "127.0.0.1:9000"},
		"cluster: public allowed":          {listen: "[::]:8080", addr: "93.184.216.34:443", ok: true},
		"knfaas up: loopback allowed":      {listen: "127.0.0.1:40000", redis: "redis://127.0.0.1:6390/0", addr: "127.0.0.1:9000", ok: true},
		"knfaas up: Redis refused":         {listen: "127.0.0.1:40000", redis: "redis://127.0.0.1:6390/0", addr: "127.0.0.1:6390"},
		"knfaas up: private still refused": {listen: "127.0.0.1:40000", addr: "10.0.0.1:80"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv("LISTEN_ADDRESS", tc.listen)
			t.Setenv("REDIS_URL", tc.redis)
			t.Setenv("K_SINK", "")
			err := guard(Config{}).Check(tc.addr)
			if tc.ok != (err == nil) {
				t.Fatalf("Check(%s) = %v, want allowed=%v", tc.addr, err, tc.ok)
			}
		})
	}
}

func TestGoneEndpointIsPublishedAsDisabled(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	gone := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { w.WriteHeader(http.StatusGone) }))
	defer gone.Close()
	t.Setenv("SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	eps, err := notify.Parse([]byte("endpoints:\n- {name: old, url: '"+gone.URL+"', types: ['*'], secretEnv: [SECRET]}\n"), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	published := make(chan event.Event, 4)
	f := New()
	f.publish = func(_ context.Context, e event.Event) error { published <- e; return nil }
	f.start(Config{Retention: time.Hour, Poll: 10 * time.Millisecond, Batch: 10, DrainTimeout: 5 * time.Second, schedule: notify.Schedule{time.Second},
		BreakerFailures: 5, BreakerRatio: 0.5, BreakerMinRequests: 20, BreakerWindow: time.Minute, BreakerOpen: time.Second}, srv.Client(), eps, Client(&notify.Guard{Loopback: true}), &notify.Guard{Loopback: true})
	defer f.Stop(context.Background())
	e := cloudevents.NewEvent()
	e.SetID("x")
	e.SetSource("/t")
	e.SetType("t")
	if _, err := f.HandleEvent(context.Background(), e); err != nil {
		t.Fatal(err)
	}
	select {
	case got := <-published:
		if got.Type() != TypeEndpointDisabled || got.Subject() != "old" || !strings.Contains(string(got.Data()), "410 Gone") {
			t.Errorf("published %v", got)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("nothing published")
	}
}

// recorder counts the webhook-ids it received.
type recorder struct {
	mu  sync.Mutex
	ids map[string]int
}

func (r *recorder) ServeHTTP(w http.ResponseWriter, req *http.Request) {
	r.mu.Lock()
	r.ids[req.Header.Get(notify.HeaderID)]++
	r.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (r *recorder) count(id string) int {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.ids[id]
}

func TestHandleFansOutByTypeAndRedrivesOneEndpoint(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	orders, all := &recorder{ids: map[string]int{}}, &recorder{ids: map[string]int{}}
	so, sa := httptest.NewServer(orders), httptest.NewServer(all)
	defer so.Close()
	defer sa.Close()
	t.Setenv("SECRET", "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw")
	eps, err := notify.Parse([]byte("endpoints:\n- {name: orders, url: '"+so.URL+"', types: [com.example.order.*], secretEnv: [SECRET]}\n- {name: all, url: '"+sa.URL+"', types: ['*'], secretEnv: [SECRET]}\n"), os.LookupEnv)
	if err != nil {
		t.Fatal(err)
	}
	cfg := Config{Retention: time.Hour, Poll: 10 * time.Millisecond, Batch: 10, DrainTimeout: 5 * time.Second, schedule: notify.Schedule{time.Second},
		BreakerFailures: 5, BreakerRatio: 0.5, BreakerMinRequests: 20, BreakerWindow: time.Minute, BreakerOpen: time.Second}
	f := New()
	f.start(cfg, srv.Client(), eps, Client(&notify.Guard{Loopback: true}), &notify.Guard{Loopback: true})
	defer f.Stop(context.Background())

	ev := func(id, typ string) event.Event {
		e := cloudevents.NewEvent()
		e.SetID(id)
		e.SetSource("/t")
		e.SetType(typ)
		_ = e.SetData("application/json", []byte(`{}`))
		return e
	}
	ctx := context.Background()
	for _, e := range []event.Event{ev("1", "com.example.order.created"), ev("2", "com.example.invoice"), ev("1", "com.example.order.created")} {
		if _, err := f.HandleEvent(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	redrive := ev("1", "com.example.order.created")
	redrive.SetExtension(notify.ExtEndpoint, "all")
	if _, err := f.HandleEvent(ctx, redrive); err != nil {
		t.Fatal(err)
	}
	if _, err := f.HandleEvent(ctx, ev("tick", TypePing)); err != nil {
		t.Fatal(err)
	}
	m1, m2 := notify.MessageID("/t", "1"), notify.MessageID("/t", "2")
	got := map[string]int{"orders/1": orders.count(m1), "orders/2": orders.count(m2), "all/1": all.count(m1), "all/2": all.count(m2)}
	want := map[string]int{"orders/1": 1, "orders/2": 0, "all/1": 1, "all/2": 1}
	for k := range want {
		if got[k] != want[k] {
			t.Errorf("%s got %d deliveries, want %d", k, got[k], want[k])
		}
	}
}

// TestListenerRoutes: the one listener takes CloudEvents from the Broker, the endpoint API
// (authenticated) and the metrics.
func TestListenerRoutes(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rcv := &recorder{ids: map[string]int{}}
	rs := httptest.NewServer(rcv)
	defer rs.Close()
	cfg := Config{Retention: time.Hour, Poll: 10 * time.Millisecond, Batch: 10, DrainTimeout: 5 * time.Second, schedule: notify.Schedule{time.Second},
		BreakerFailures: 5, BreakerRatio: 0.5, BreakerMinRequests: 20, BreakerWindow: time.Minute, BreakerOpen: time.Second, APIToken: "0123456789abcdef0123"}
	f := New()
	g := &notify.Guard{Loopback: true}
	f.start(cfg, srv.Client(), nil, Client(g), g)
	defer f.Stop(context.Background())
	fn := httptest.NewServer(http.HandlerFunc(f.Handle))
	defer fn.Close()

	do := func(method, path, token, body string, header map[string]string) (int, string) {
		req, _ := http.NewRequest(method, fn.URL+path, strings.NewReader(body))
		for k, v := range header {
			req.Header.Set(k, v)
		}
		if token != "" {
			req.Header.Set("Authorization", "Bearer "+token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		return resp.StatusCode, string(b)
	}
	ce := map[string]string{"ce-specversion": "1.0", "ce-id": "r1", "ce-source": "/t", "ce-type": "com.example.order.created", "Content-Type": "application/json"}
	tests := []struct {
		name, method, path, token, body string
		header                          map[string]string
		code                            int
		says                            string
	}{
		{name: "API without token", method: "GET", path: "/api/endpoints", code: 401},
		{name: "API with wrong token", method: "GET", path: "/api/endpoints", token: "wrong-token-wrong-token", code: 401},
		{name: "API create names the bad field", method: "POST", path: "/api/endpoints", token: cfg.APIToken, body: `{"name":"x","url":"ftp://h","types":["*"]}`, code: 400, says: `"field":"url"`},
		{name: "API create", method: "POST", path: "/api/endpoints", token: cfg.APIToken, body: `{"name":"shop","url":"` + rs.URL + `","types":["com.example.*"]}`, code: 201, says: `"secret":"whsec_`},
		{name: "CloudEvent in binary mode", method: "POST", path: "/", body: `{}`, header: ce, code: 202},
		{name: "not a CloudEvent", method: "POST", path: "/", body: `{}`, code: 400},
		{name: "metrics", method: "GET", path: "/metrics", code: 200, says: `knfaas_notify_endpoint_circuit{endpoint="shop",source="api",state="closed"} 1`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			code, body := do(tc.method, tc.path, tc.token, tc.body, tc.header)
			if code != tc.code || !strings.Contains(body, tc.says) {
				t.Fatalf("%s %s = %d %q, want %d saying %q", tc.method, tc.path, code, body, tc.code, tc.says)
			}
		})
	}
	deadline := time.Now().Add(5 * time.Second)
	for rcv.count(notify.MessageID("/t", "r1")) != 1 {
		if time.Now().After(deadline) {
			t.Fatal("the CloudEvent was not delivered to the endpoint made through the API")
		}
		time.Sleep(10 * time.Millisecond)
	}
}
