package main

import (
	"context"
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
		BreakerFailures: 5, BreakerRatio: 0.5, BreakerMinRequests: 20, BreakerWindow: time.Minute, BreakerOpen: time.Second}, srv.Client(), eps, Client(&notify.Guard{Loopback: true}))
	defer f.Stop(context.Background())
	e := cloudevents.NewEvent()
	e.SetID("x")
	e.SetSource("/t")
	e.SetType("t")
	if _, err := f.Handle(context.Background(), e); err != nil {
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
	f.start(cfg, srv.Client(), eps, Client(&notify.Guard{Loopback: true}))
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
		if _, err := f.Handle(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	redrive := ev("1", "com.example.order.created")
	redrive.SetExtension(notify.ExtEndpoint, "all")
	if _, err := f.Handle(ctx, redrive); err != nil {
		t.Fatal(err)
	}
	if _, err := f.Handle(ctx, ev("tick", TypePing)); err != nil {
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
