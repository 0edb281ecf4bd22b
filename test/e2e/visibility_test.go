//go:build e2e

package e2e

import (
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

const visibility = "test/e2e/testdata/visibility"

func visRequest(t *testing.T, rt *runtimetest.Runtime, method, target string, ce map[string]string) (int, string) {
	t.Helper()
	req, err := http.NewRequest(method, target, strings.NewReader(`{"hello":"vis"}`))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range ce {
		req.Header.Set("Ce-"+k, v)
	}
	if len(ce) > 0 {
		req.Header.Set("Ce-Specversion", "1.0")
		req.Header.Set("Ce-Source", "/e2e/vis")
		req.Header.Set("Content-Type", "application/json")
	}
	resp, err := rt.Client().Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, target, err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(body)
}

// TestVisibilityClusterLocal checks networking.knative.dev/visibility: cluster-local under
// knfaas up: the public listener does not serve a cluster-local Service, no other listener of
// the runtime serves anything to a loopback client without the run's capability, and Triggers,
// a function's K_SINK publish to the Broker, and a function calling the cluster-local Service
// through its K_SINK still reach it.
func TestVisibilityClusterLocal(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{visibility}, RedisURL: srv.URL()})

	if !strings.Contains(rt.Output(), "cluster-local") {
		t.Errorf("start-up output does not say how cluster-local services are reached:\n%s", rt.Output())
	}
	t.Run("public listener", func(t *testing.T) {
		tests := []struct {
			name     string
			service  string
			path     string
			ce       map[string]string
			wantCode int
			wantBody string
		}{
			{name: "cluster-local service is not served", service: "private", ce: map[string]string{"Id": "planted", "Type": "dev.knfaas.e2e.vis.published"}, wantCode: http.StatusNotFound, wantBody: "cluster-local"},
			{name: "public service is served", service: "public", path: "/env?name=K_SERVICE", wantCode: http.StatusOK, wantBody: "public"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				code, body := visRequest(t, rt, http.MethodPost, rt.ServiceURL("vis", tc.service)+tc.path, tc.ce)
				if code != tc.wantCode || !strings.Contains(body, tc.wantBody) {
					t.Fatalf("answered %d %q, want %d containing %q", code, body, tc.wantCode, tc.wantBody)
				}
			})
		}
	})

	t.Run("no other listener serves a plain loopback client", func(t *testing.T) {
		_, publicPort, _ := strings.Cut(rt.Addr(), ":")
		// The addresses functions were given, stripped of any capability, and every other port
		// the runtime process listens on.
		origins := map[string]bool{}
		for _, fn := range []string{"publisher", "caller"} {
			code, sink := visRequest(t, rt, http.MethodGet, rt.ServiceURL("vis", fn)+"/env?name=K_SINK", nil)
			u, err := url.Parse(sink)
			if code != http.StatusOK || err != nil || u.Host == "" {
				t.Fatalf("%s's K_SINK: %d %q", fn, code, sink)
			}
			if u.Host != rt.Addr() {
				origins["http://"+u.Host] = true
			}
		}
		for _, p := range rt.ListeningPorts() {
			if strconv.Itoa(p) != publicPort {
				origins[fmt.Sprintf("http://127.0.0.1:%d", p)] = true
			}
		}
		if len(origins) == 0 {
			t.Fatal("found no internal listener to probe")
		}
		for origin := range origins {
			for _, path := range []string{"/", "/services/vis/private/", "/vis/default", "/_knfaas/", "/_knfaas/AAAAAAAAAAAAAAAAAAAAAAAAAA/services/vis/private/", "/_knfaas/AAAAAAAAAAAAAAAAAAAAAAAAAA/brokers/vis/default"} {
				code, body := visRequest(t, rt, http.MethodPost, origin+path, map[string]string{"Id": "planted", "Type": "dev.knfaas.e2e.vis.published"})
				if code != http.StatusForbidden {
					t.Errorf("POST %s%s answered %d %q, want 403", origin, path, code, strings.TrimSpace(body))
				}
			}
		}
	})

	t.Run("the capability reaches the cluster-local service", func(t *testing.T) {
		base := rt.InternalBase()
		if base == "" {
			t.Fatalf("no internal address in the start-up output:\n%s", rt.Output())
		}
		code, body := visRequest(t, rt, http.MethodPost, base+"/services/vis/private/", map[string]string{"Id": "operator-1", "Type": "dev.knfaas.e2e.vis.operator"})
		if code != http.StatusAccepted {
			t.Fatalf("answered %d %q, want 202", code, body)
		}
	})

	t.Run("functions and triggers reach the cluster-local service", func(t *testing.T) {
		tests := []struct {
			name, via, id string
		}{
			{name: "K_SINK publish to the broker, then a Trigger", via: "publisher", id: "via-broker"},
			{name: "K_SINK call to the cluster-local service", via: "caller", id: "via-call"},
		}
		for _, tc := range tests {
			t.Run(tc.name, func(t *testing.T) {
				code, body := visRequest(t, rt, http.MethodPost, rt.ServiceURL("vis", tc.via)+"/publish", map[string]string{"Id": tc.id, "Type": "dev.knfaas.e2e.vis.published"})
				if code/100 != 2 {
					t.Fatalf("publishing through %s answered %d %q", tc.via, code, body)
				}
				runtimetest.Eventually(t, 30*time.Second, tc.id+" recorded by the cluster-local service", func() bool {
					return recorderSeen(t, rdb, "private")[tc.id] == 1
				})
			})
		}
	})
	if n := recorderSeen(t, rdb, "private")["planted"]; n != 0 {
		t.Errorf("an event planted by a plain loopback client reached the cluster-local service %d times", n)
	}
}
