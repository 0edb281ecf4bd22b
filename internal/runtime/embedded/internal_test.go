package embedded

import (
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

func internalRuntime() *Runtime {
	in := broker.NewIngress(broker.NewStore(nil), slog.New(slog.NewTextHandler(io.Discard, nil)), metrics.New())
	in.Add("ns", "default", 0)
	return &Runtime{
		token: "TOKENTOKENTOKENTOKENTOKEN2", internalAddr: "127.0.0.1:4567", ingress: in,
		services:     map[string]*serving.Pool{"ns/private": nil, "ns/public": nil},
		serviceHosts: map[string]string{"private.ns.svc.cluster.local": "ns/private", "public.ns.svc.cluster.local": "ns/public"},
		clusterLocal: map[string]bool{"ns/private": true},
	}
}

func TestInternalListenerNeedsTheCapability(t *testing.T) {
	r := internalRuntime()
	tests := []struct {
		name     string
		method   string
		path     string
		wantCode int
		wantBody string
	}{
		{name: "no capability", method: http.MethodPost, path: "/", wantCode: http.StatusForbidden, wantBody: "capability"},
		{name: "a service path without capability", method: http.MethodPost, path: "/services/ns/private/", wantCode: http.StatusForbidden},
		{name: "a broker path without capability", method: http.MethodPost, path: "/ns/default", wantCode: http.StatusForbidden},
		{name: "empty token", method: http.MethodPost, path: "/_knfaas//services/ns/private/", wantCode: http.StatusForbidden},
		{name: "wrong token", method: http.MethodPost, path: "/_knfaas/TOKENTOKENTOKENTOKENTOKEN3/services/ns/private/", wantCode: http.StatusForbidden},
		{name: "prefix of the token", method: http.MethodPost, path: "/_knfaas/TOKEN/services/ns/private/", wantCode: http.StatusForbidden},
		{name: "token with a suffix", method: http.MethodPost, path: "/_knfaas/TOKENTOKENTOKENTOKENTOKEN2X/brokers/ns/default", wantCode: http.StatusForbidden},
		{name: "unknown service", method: http.MethodPost, path: "/_knfaas/TOKENTOKENTOKENTOKENTOKEN2/services/ns/nope/", wantCode: http.StatusNotFound, wantBody: "no Knative Service ns/nope"},
		{name: "unknown kind", method: http.MethodPost, path: "/_knfaas/TOKENTOKENTOKENTOKENTOKEN2/other/ns/x", wantCode: http.StatusNotFound},
		{name: "broker reached, prefix stripped", method: http.MethodGet, path: "/_knfaas/TOKENTOKENTOKENTOKENTOKEN2/brokers/ns/default", wantCode: http.StatusMethodNotAllowed, wantBody: "only POST"},
		{name: "unknown broker", method: http.MethodPost, path: "/_knfaas/TOKENTOKENTOKENTOKENTOKEN2/brokers/ns/other", wantCode: http.StatusNotFound, wantBody: "broker ns/other not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			w := httptest.NewRecorder()
			r.internalHandler().ServeHTTP(w, httptest.NewRequest(tc.method, tc.path, strings.NewReader("{}")))
			if w.Code != tc.wantCode || !strings.Contains(w.Body.String(), tc.wantBody) {
				t.Fatalf("answered %d %q, want %d containing %q", w.Code, w.Body.String(), tc.wantCode, tc.wantBody)
			}
		})
	}
}

func TestPublicListenerRefusesClusterLocalServices(t *testing.T) {
	r := internalRuntime()
	r.metrics = metrics.New()
	w := httptest.NewRecorder()
	req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader("{}"))
	req.Host = "private.ns.localhost:8080"
	r.router().ServeHTTP(w, req)
	if w.Code != http.StatusNotFound || !strings.Contains(w.Body.String(), "ns/private is cluster-local") {
		t.Fatalf("answered %d %q, want 404 naming the cluster-local Service", w.Code, w.Body.String())
	}
}

func TestForFunctionsGivesCapabilityURLs(t *testing.T) {
	r := internalRuntime()
	base := "http://127.0.0.1:4567/_knfaas/TOKENTOKENTOKENTOKENTOKEN2"
	tests := map[string]struct{ in, want string }{
		"service":                 {in: "http://private.ns.svc.cluster.local", want: base + "/services/ns/private"},
		"service with path":       {in: "http://public.ns.svc.cluster.local/hooks/x?y=1", want: base + "/services/ns/public/hooks/x?y=1"},
		"service on port 80":      {in: "http://private.ns.svc.cluster.local:80/", want: base + "/services/ns/private/"},
		"broker":                  {in: "http://broker-ingress.knative-eventing.svc.cluster.local/ns/default", want: base + "/brokers/ns/default"},
		"unknown service kept":    {in: "http://other.ns.svc.cluster.local/", want: "http://other.ns.svc.cluster.local/"},
		"external URL kept":       {in: "https://example.com/hook", want: "https://example.com/hook"},
		"https to a service kept": {in: "https://private.ns.svc.cluster.local", want: "https://private.ns.svc.cluster.local"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			u, err := url.Parse(tc.in)
			if err != nil {
				t.Fatal(err)
			}
			if got := r.forFunctions(u).String(); got != tc.want {
				t.Fatalf("forFunctions(%s) = %s, want %s", tc.in, got, tc.want)
			}
		})
	}
}

func TestStripPrefixLeavesTheServicePath(t *testing.T) {
	tests := map[string]struct{ path, want string }{
		"root":            {path: "/_knfaas/T/services/ns/fn", want: "/"},
		"root with slash": {path: "/_knfaas/T/services/ns/fn/", want: "/"},
		"sub path":        {path: "/_knfaas/T/services/ns/fn/a/b?x=1", want: "/a/b?x=1"},
		"escaped":         {path: "/_knfaas/T/services/ns/fn/a%2Fb", want: "/a%2Fb"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got := stripPrefix(httptest.NewRequest(http.MethodGet, tc.path, nil), "/_knfaas/T/services/ns/fn")
			if got.URL.RequestURI() != tc.want || got.RequestURI != tc.want {
				t.Fatalf("stripped to %q (RequestURI %q), want %q", got.URL.RequestURI(), got.RequestURI, tc.want)
			}
		})
	}
}

// TestDeliveriesReachTheIngressInProcess: a client built as Knative's dispatcher builds its own
// (a clone of http.DefaultTransport) reaches the broker ingress at its cluster-local address by
// calling its handler: no pipe server runs here, so a connection would never be answered.
func TestDeliveriesReachTheIngressInProcess(t *testing.T) {
	saved := http.DefaultTransport
	http.DefaultTransport = saved.(*http.Transport).Clone()
	t.Cleanup(func() { http.DefaultTransport = saved })
	r := internalRuntime()
	r.services = nil
	r.log = slog.New(slog.NewTextHandler(io.Discard, nil))
	r.routeDeliveriesInProcess()
	client := &http.Client{Transport: http.DefaultTransport.(*http.Transport).Clone(), Timeout: 5 * time.Second}

	tests := []struct {
		name     string
		method   string
		url      string
		wantCode int
		wantBody string
	}{
		{name: "broker reached with its path", method: http.MethodGet, url: inProcessBrokerURL("ns", "default"), wantCode: http.StatusMethodNotAllowed, wantBody: "only POST"},
		{name: "unknown broker", method: http.MethodPost, url: inProcessBrokerURL("ns", "other"), wantCode: http.StatusNotFound, wantBody: "broker ns/other not found"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, err := http.NewRequest(tc.method, tc.url, strings.NewReader("{}"))
			if err != nil {
				t.Fatal(err)
			}
			resp, err := client.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			body, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("answered %d %q, want %d containing %q", resp.StatusCode, body, tc.wantCode, tc.wantBody)
			}
		})
	}
}
