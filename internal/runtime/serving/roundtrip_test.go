package serving

import (
	"context"
	"errors"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// poolRoute is one way a request reaches a Pool: serve runs the Pool until the test ends and
// returns a client and the base URL that reach it that way.
type poolRoute struct {
	name  string
	serve func(t testing.TB, svc *Pool) (*http.Client, string)
}

// testMaxResponse bounds the in-process answers of these tests (the runtime's bound is larger).
const testMaxResponse = 8 << 20

// poolRoutes are the runtime's server (ServeHTTP) and the in-process route of its deliveries
// (RoundTripInProcess): a Pool must answer the same on both.
var poolRoutes = []poolRoute{
	{name: "over a connection", serve: func(t testing.TB, svc *Pool) (*http.Client, string) {
		srv := runPool(t, svc, svc)
		return &http.Client{}, srv.URL
	}},
	{name: "in process", serve: func(t testing.TB, svc *Pool) (*http.Client, string) {
		runPool(t, svc, svc) // runs the Pool; the server is not used
		return inProcessClient(t, svc, testMaxResponse), "http://svc.test.invalid"
	}},
}

// inProcessClient is a client whose requests for svc.test.invalid reach svc in process, as the
// runtime routes deliveries, each answer bounded by maxResponse.
func inProcessClient(t testing.TB, svc *Pool, maxResponse int64) *http.Client {
	t.Helper()
	ip := NewInProcess(maxResponse, nil)
	ip.Handle("svc.test.invalid:80", svc)
	routed, err := ip.Route(http.DefaultTransport.(*http.Transport))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(routed.CloseIdleConnections)
	return &http.Client{Transport: routed}
}

func send(t *testing.T, client *http.Client, method, url string, body io.Reader) (int, []byte) {
	t.Helper()
	req, err := http.NewRequest(method, url, body)
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp.StatusCode, b
}

// TestRoutesAnswerAlike: a request answered by an instance, a status it chose, the Service's
// timeout, a crashing instance and one that cannot start are answered the same whether the
// request came over a connection or in process.
func TestRoutesAnswerAlike(t *testing.T) {
	failing := filepath.Join(t.TempDir(), "fails")
	if err := os.WriteFile(failing, []byte("#!/bin/sh\necho boom >&2\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name     string
		spec     Spec
		method   string
		path     string
		wantCode int
		wantBody string // a substring of the answer
	}{
		{name: "answered through a cold start", spec: Spec{Env: []string{"GREETING=hello"}}, method: http.MethodGet, path: "/env?name=GREETING", wantCode: 200, wantBody: "hello"},
		{name: "the instance's status", method: http.MethodPost, path: "/?status=503", wantCode: 503},
		{name: "the Service's timeout", spec: Spec{Timeout: 300 * time.Millisecond}, method: http.MethodGet, path: "/?sleep=5s", wantCode: http.StatusGatewayTimeout, wantBody: "timeout"},
		{name: "a crashing instance", method: http.MethodPost, path: "/crash", wantCode: http.StatusBadGateway, wantBody: "failed"},
		{name: "an instance that cannot start", spec: Spec{Binary: failing, Timeout: 10 * time.Second}, method: http.MethodGet, path: "/", wantCode: http.StatusServiceUnavailable, wantBody: "exited before it became ready"},
	}
	for _, route := range poolRoutes {
		for _, tc := range tests {
			t.Run(route.name+"/"+tc.name, func(t *testing.T) {
				svc, _ := newPool(t, tc.spec)
				client, base := route.serve(t, svc)
				code, body := send(t, client, tc.method, base+tc.path, nil)
				if code != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
					t.Fatalf("answer %d %q, want %d containing %q", code, body, tc.wantCode, tc.wantBody)
				}
			})
		}
	}
}

// TestRoutesQueueForASlot: requests beyond a Service's one slot queue on both routes; none
// fails, and the instance never sees two at once.
func TestRoutesQueueForASlot(t *testing.T) {
	for _, route := range poolRoutes {
		t.Run(route.name, func(t *testing.T) {
			svc, _ := newPool(t, Spec{ContainerConcurrency: 1, MaxScale: 1})
			client, base := route.serve(t, svc)
			var wg sync.WaitGroup
			codes := make([]int, 5)
			for i := range codes {
				wg.Go(func() { codes[i], _ = send(t, client, http.MethodGet, base+"/?sleep=100ms", nil) })
			}
			wg.Wait()
			for i, code := range codes {
				if code != http.StatusOK {
					t.Errorf("request %d answered %d, want 200 (queued for the slot)", i, code)
				}
			}
			if _, body := send(t, client, http.MethodGet, base+"/maxinflight", nil); string(body) != "1" {
				t.Errorf("the instance saw %s requests in flight, want 1 (containerConcurrency)", body)
			}
		})
	}
}

// inFlight is the requests the Pool's instances hold.
func inFlight(s *Pool) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	n := 0
	for _, in := range s.instances {
		n += in.inflight
	}
	return n
}

// wrappingTransport is a RoundTripper http.Client does not know, as Knative's tracing one: below
// it, a client's Timeout also closes the request's Cancel channel.
type wrappingTransport struct{ http.RoundTripper }

// TestRoutesFreeTheSlotWhenTheClientGivesUp: a client that gives up sees its own context's
// error on both routes, whether its context ends or its Timeout passes below a transport that
// wraps the route, and the one slot it held is given back (not after the minute the instance would take).
func TestRoutesFreeTheSlotWhenTheClientGivesUp(t *testing.T) {
	tests := []struct {
		name string
		do   func(client *http.Client, url string) (*http.Response, error)
	}{
		{name: "its context ends", do: func(client *http.Client, url string) (*http.Response, error) {
			ctx, cancel := context.WithTimeout(context.Background(), 300*time.Millisecond)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, http.MethodGet, url, nil)
			return client.Do(req)
		}},
		{name: "its timeout passes below a wrapping transport", do: func(client *http.Client, url string) (*http.Response, error) {
			below := client.Transport
			if below == nil {
				below = http.DefaultTransport
			}
			wrapped := &http.Client{Transport: wrappingTransport{below}, Timeout: 300 * time.Millisecond}
			return wrapped.Get(url)
		}},
	}
	for _, route := range poolRoutes {
		for _, tc := range tests {
			t.Run(route.name+"/"+tc.name, func(t *testing.T) {
				svc, obs := newPool(t, Spec{ContainerConcurrency: 1, MaxScale: 1, Timeout: time.Minute})
				client, base := route.serve(t, svc)
				resp, err := tc.do(client, base+"/?sleep=1m")
				if err == nil {
					resp.Body.Close()
					t.Fatalf("a request whose client gave up answered %d, want the client's error", resp.StatusCode)
				}
				if !errors.Is(err, context.DeadlineExceeded) && !strings.Contains(err.Error(), "Client.Timeout exceeded") {
					t.Errorf("error %v, want the client's deadline", err)
				}
				// The abandoned request sleeps a minute on the instance unless it is cut off.
				eventually(t, "the abandoned request gives its slot back", func() bool { return inFlight(svc) == 0 })
				if code, _ := send(t, client, http.MethodGet, base+"/pid", nil); code != http.StatusOK {
					t.Fatalf("next request answered %d, want 200", code)
				}
				if n := obs.maxSeen.Load(); n != 1 {
					t.Errorf("%d instances at once, want 1", n)
				}
			})
		}
	}
}

// TestInProcessAnswerIsBounded: an instance's answer larger than the in-process bound fails the
// request with ErrResponseTooLarge, whether or not the instance announced its length.
func TestInProcessAnswerIsBounded(t *testing.T) {
	svc, _ := newPool(t, Spec{Timeout: 10 * time.Second})
	runPool(t, svc, svc)
	client := inProcessClient(t, svc, 100)
	tests := []struct {
		name    string
		body    io.Reader
		wantErr bool
	}{
		{name: "at the bound", body: strings.NewReader(strings.Repeat("a", 100))},
		{name: "announced over the bound", body: strings.NewReader(strings.Repeat("a", 101)), wantErr: true},
		{name: "chunked over the bound", body: io.MultiReader(strings.NewReader(strings.Repeat("a", 5000))), wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			req, _ := http.NewRequest(http.MethodPost, "http://svc.test.invalid/", tc.body)
			resp, err := client.Do(req)
			if tc.wantErr {
				if err == nil {
					resp.Body.Close()
					t.Fatalf("answer %d, want ErrResponseTooLarge", resp.StatusCode)
				}
				if !errors.Is(err, ErrResponseTooLarge) {
					t.Fatalf("error %v, want ErrResponseTooLarge", err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if resp.StatusCode != 200 || len(b) != 100 {
				t.Fatalf("answer %d with %d bytes, want 200 with 100", resp.StatusCode, len(b))
			}
		})
	}
}

// roundTripRecorder is a RoundTripHandler that records what InProcess handed it.
type roundTripRecorder struct {
	got         *http.Request
	maxResponse int64
}

func (r *roundTripRecorder) ServeHTTP(w http.ResponseWriter, _ *http.Request) {
	http.Error(w, "ServeHTTP called", http.StatusTeapot)
}

func (r *roundTripRecorder) RoundTripInProcess(req *http.Request, maxResponse int64) (*http.Response, error) {
	r.got, r.maxResponse = req, maxResponse
	if req.Body != nil {
		_ = req.Body.Close()
	}
	return newResponse(req, http.StatusAccepted, http.Header{}, nil), nil
}

// TestInProcessHandsTheRequestToARoundTripHandler: InProcess gives a RoundTripHandler the
// caller's own request and its bound on answers, and does not call ServeHTTP.
func TestInProcessHandsTheRequestToARoundTripHandler(t *testing.T) {
	rec := &roundTripRecorder{}
	ip := NewInProcess(1234, nil)
	ip.Handle("svc.test.invalid:80", rec)
	req, _ := http.NewRequest(http.MethodPost, "http://svc.test.invalid/x", strings.NewReader("body"))
	resp, err := ip.RoundTrip(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusAccepted {
		t.Fatalf("answer %d, want 202 from RoundTripInProcess (ServeHTTP answers 418)", resp.StatusCode)
	}
	if rec.got != req || rec.maxResponse != 1234 {
		t.Errorf("RoundTripInProcess got request %p (bound %d), want the caller's %p (bound 1234)", rec.got, rec.maxResponse, req)
	}
}

func TestRemoveHopByHopHeaders(t *testing.T) {
	tests := []struct {
		name string
		in   http.Header
		want http.Header
	}{
		{name: "end-to-end headers stay", in: http.Header{"Ce-Id": {"1"}, "Content-Type": {"application/json"}}, want: http.Header{"Ce-Id": {"1"}, "Content-Type": {"application/json"}}},
		{name: "the standard hop-by-hop headers go", in: http.Header{"Connection": {"keep-alive"}, "Keep-Alive": {"timeout=5"}, "Te": {"trailers"}, "Upgrade": {"h2c"}, "Proxy-Authorization": {"x"}, "Ce-Id": {"1"}}, want: http.Header{"Ce-Id": {"1"}}},
		{name: "headers the Connection header names go", in: http.Header{"Connection": {"X-Hop, x-other"}, "X-Hop": {"1"}, "X-Other": {"2"}, "X-Stay": {"3"}}, want: http.Header{"X-Stay": {"3"}}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			removeHopByHopHeaders(tc.in)
			if len(tc.in) != len(tc.want) {
				t.Fatalf("headers %v, want %v", tc.in, tc.want)
			}
			for k, v := range tc.want {
				if strings.Join(tc.in[k], ",") != strings.Join(v, ",") {
					t.Errorf("%s = %q, want %q", k, tc.in[k], v)
				}
			}
		})
	}
}
