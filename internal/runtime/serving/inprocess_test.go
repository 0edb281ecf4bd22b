package serving

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

const testAuthority = "fn.default.svc.cluster.local:80"

// roundTrip sends a POST of body through a clone of p routed below a fresh transport, as
// Knative's dispatcher builds its clients, and returns the response with its body read.
func roundTrip(t *testing.T, p *InProcess, ctx context.Context, body string) (*http.Response, string, error) {
	t.Helper()
	routed, err := p.Route(&http.Transport{})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: routed.Clone()}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://fn.default.svc.cluster.local/path?q=1", strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	req.Header.Set("Ce-Type", "t")
	resp, err := client.Do(req)
	if err != nil {
		return nil, "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		t.Fatal(err)
	}
	return resp, string(b), nil
}

func TestInProcessAnswers(t *testing.T) {
	cases := []struct {
		name       string
		handler    http.HandlerFunc
		wantStatus int
		wantHeader map[string]string
		wantBody   string
	}{
		{
			name: "status, headers and body",
			handler: func(w http.ResponseWriter, r *http.Request) {
				b, _ := io.ReadAll(r.Body)
				w.Header().Set("Ce-Id", "reply-1")
				w.Header().Set("Content-Type", "application/json")
				w.Header().Set("Seen", r.Host+" "+r.RequestURI+" "+r.RemoteAddr+" "+r.Header.Get("Ce-Type")+" "+r.Proto)
				w.WriteHeader(http.StatusAccepted)
				_, _ = w.Write(b)
				w.Header().Set("Late", "ignored, as after a server's WriteHeader")
			},
			wantStatus: http.StatusAccepted,
			wantHeader: map[string]string{"Ce-Id": "reply-1", "Content-Type": "application/json", "Content-Length": "5",
				"Seen": "fn.default.svc.cluster.local /path?q=1 in-process t HTTP/1.1", "Late": ""},
			wantBody: "event",
		},
		{
			name:       "no WriteHeader: 200 with the content type sniffed",
			handler:    func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "plain") },
			wantStatus: http.StatusOK,
			wantHeader: map[string]string{"Content-Type": "text/plain; charset=utf-8"},
			wantBody:   "plain",
		},
		{
			name:       "nothing written: 200, empty",
			handler:    func(http.ResponseWriter, *http.Request) {},
			wantStatus: http.StatusOK,
			wantHeader: map[string]string{"Content-Length": "0", "Content-Type": ""},
		},
		{
			name: "informational answers are not passed on",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				w.WriteHeader(http.StatusEarlyHints)
				w.WriteHeader(http.StatusNoContent)
			},
			wantStatus: http.StatusNoContent,
		},
		{
			name: "flush is accepted",
			handler: func(w http.ResponseWriter, _ *http.Request) {
				_, _ = io.WriteString(w, "a")
				if err := http.NewResponseController(w).Flush(); err != nil {
					panic(err)
				}
				_, _ = io.WriteString(w, "b")
			},
			wantStatus: http.StatusOK,
			wantBody:   "ab",
		},
		{
			name:       "a panic is answered 500",
			handler:    func(http.ResponseWriter, *http.Request) { panic("boom") },
			wantStatus: http.StatusInternalServerError,
			wantBody:   "in-process handler for fn.default.svc.cluster.local panicked: boom\n",
		},
		{
			name: "the handler's header changes stay its own",
			handler: func(w http.ResponseWriter, r *http.Request) {
				r.Header.Set("Ce-Type", "changed")
				w.WriteHeader(http.StatusOK)
			},
			wantStatus: http.StatusOK,
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			p := NewInProcess(1<<20, nil)
			p.Handle(testAuthority, tc.handler)
			resp, body, err := roundTrip(t, p, context.Background(), "event")
			if err != nil {
				t.Fatal(err)
			}
			if resp.StatusCode != tc.wantStatus || body != tc.wantBody {
				t.Fatalf("got %d %q, want %d %q", resp.StatusCode, body, tc.wantStatus, tc.wantBody)
			}
			for k, v := range tc.wantHeader {
				if got := resp.Header.Get(k); got != v {
					t.Errorf("header %s = %q, want %q", k, got, v)
				}
			}
			if resp.Request.Header.Get("Ce-Type") != "t" {
				t.Errorf("the client's request was changed: Ce-Type %q", resp.Request.Header.Get("Ce-Type"))
			}
		})
	}
}

func TestInProcessFailures(t *testing.T) {
	cases := []struct {
		name    string
		handler func(started chan<- struct{}) http.HandlerFunc
		ctx     func() (context.Context, context.CancelFunc)
		// cancelAfterStart cancels the request once the handler runs.
		cancelAfterStart bool
		wantErr          error
		wantHandlerCtx   bool // the handler saw its context end
	}{
		{
			name: "cancelled request: error, the handler's context ends",
			handler: func(started chan<- struct{}) http.HandlerFunc {
				return func(_ http.ResponseWriter, r *http.Request) { close(started); <-r.Context().Done() }
			},
			ctx:              func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			cancelAfterStart: true,
			wantErr:          context.Canceled,
			wantHandlerCtx:   true,
		},
		{
			name: "deadline: error even if the handler ignores its context",
			handler: func(started chan<- struct{}) http.HandlerFunc {
				return func(http.ResponseWriter, *http.Request) { close(started); time.Sleep(time.Second) }
			},
			ctx: func() (context.Context, context.CancelFunc) {
				return context.WithTimeout(context.Background(), 50*time.Millisecond)
			},
			wantErr: context.DeadlineExceeded,
		},
		{
			name: "answer past the bound",
			handler: func(started chan<- struct{}) http.HandlerFunc {
				return func(w http.ResponseWriter, _ *http.Request) {
					close(started)
					_, _ = w.Write(make([]byte, 600))
					if _, err := w.Write(make([]byte, 600)); !errors.Is(err, ErrResponseTooLarge) {
						panic("write past the bound accepted")
					}
				}
			},
			ctx:     func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
			wantErr: ErrResponseTooLarge,
		},
		{
			name: "aborted answer (http.ErrAbortHandler): error, as a reset connection",
			handler: func(started chan<- struct{}) http.HandlerFunc {
				return func(w http.ResponseWriter, _ *http.Request) { close(started); panic(http.ErrAbortHandler) }
			},
			ctx: func() (context.Context, context.CancelFunc) { return context.WithCancel(context.Background()) },
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			started := make(chan struct{})
			handlerCtxEnded := make(chan struct{})
			h := tc.handler(started)
			p := NewInProcess(1<<10, nil)
			p.Handle(testAuthority, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				defer func() {
					if r.Context().Err() != nil {
						close(handlerCtxEnded)
					}
				}()
				h(w, r)
			}))
			ctx, cancel := tc.ctx()
			defer cancel()
			if tc.cancelAfterStart {
				go func() { <-started; cancel() }()
			}
			_, _, err := roundTrip(t, p, ctx, "event")
			if err == nil {
				t.Fatal("no error")
			}
			if tc.wantErr != nil && !errors.Is(err, tc.wantErr) {
				t.Fatalf("error %v, want %v", err, tc.wantErr)
			}
			if tc.wantHandlerCtx {
				select {
				case <-handlerCtxEnded:
				case <-time.After(5 * time.Second):
					t.Fatal("the handler's context did not end")
				}
			}
		})
	}
}

// TestRouteLeavesOtherRequestsToBase: requests for other authorities, http:// or https://, go
// through base as before, and in-process ones never dial.
func TestRouteLeavesOtherRequestsToBase(t *testing.T) {
	plain := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "network "+r.Proto)
	}))
	defer plain.Close()
	secure := httptest.NewTLSServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.WriteString(w, "tls "+r.Proto)
	}))
	defer secure.Close()

	var dials atomic.Int32
	base := secure.Client().Transport.(*http.Transport).Clone()
	base.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		dials.Add(1)
		return (&net.Dialer{}).DialContext(ctx, network, addr)
	}
	p := NewInProcess(1<<10, nil)
	p.Handle(testAuthority, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "in process") }))
	routed, err := p.Route(base)
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: routed.Clone()}
	cases := []struct {
		name, url, want string
		wantDials       int32
	}{
		{"in process", "http://fn.default.svc.cluster.local/", "in process", 0},
		{"in process again", "http://fn.default.svc.cluster.local:80/x", "in process", 0},
		{"http on the network", plain.URL, "network HTTP/1.1", 2}, // the transport's dial, then base's
		{"https on the network", secure.URL, "tls HTTP/1.1", 1},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			dials.Store(0)
			resp, err := client.Get(tc.url)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(resp.Body)
			resp.Body.Close()
			if string(b) != tc.want {
				t.Fatalf("got %q, want %q", b, tc.want)
			}
			if got := dials.Load(); got != tc.wantDials {
				t.Errorf("%d dials, want %d", got, tc.wantDials)
			}
		})
	}
}

// TestInProcessThroughReverseProxy: a handler that proxies to a network backend, as a Service's
// pool does, answers through the in-process transport; the backend sees the request's headers.
func TestInProcessThroughReverseProxy(t *testing.T) {
	backend := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		w.Header().Set("Ce-Type", "reply."+r.Header.Get("Ce-Type"))
		_, _ = w.Write(b)
	}))
	defer backend.Close()
	u, _ := url.Parse(backend.URL)
	p := NewInProcess(1<<20, nil)
	p.Handle(testAuthority, httputil.NewSingleHostReverseProxy(u))
	resp, body, err := roundTrip(t, p, context.Background(), "payload")
	if err != nil {
		t.Fatal(err)
	}
	if resp.StatusCode != http.StatusOK || body != "payload" || resp.Header.Get("Ce-Type") != "reply.t" {
		t.Fatalf("got %d %q %v", resp.StatusCode, body, resp.Header)
	}
}

// TestInProcessClientTimeoutWinsOverALateAnswer: a handler that answers as soon as its context
// ends (a Service's proxy answers 504 at its own timeout) must not have that answer taken for
// the response once the client's deadline has passed: the client gets its deadline error, as
// over a connection. Repeated, since both are ready at nearly the same time (the e2e test
// TestRetriesThenDeadLetter, "attempt timeout counts as a failure", sees the same race through
// a Service's proxy).
func TestInProcessClientTimeoutWinsOverALateAnswer(t *testing.T) {
	p := NewInProcess(1<<10, nil)
	p.Handle(testAuthority, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		<-r.Context().Done()
		w.WriteHeader(http.StatusGatewayTimeout)
	}))
	for i := 0; i < 20; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Millisecond)
		resp, _, err := roundTrip(t, p, ctx, "event")
		cancel()
		if !errors.Is(err, context.DeadlineExceeded) {
			t.Fatalf("round %d: got %v, %v; want the deadline error", i, resp, err)
		}
	}
}

type clientKey struct{}

// wrapping stands for a transport http.Client does not know (Knative's tracing one): below it,
// the client's Timeout also closes the request's Cancel channel.
type wrapping struct{ http.RoundTripper }

// TestInProcessHandlerContextIsItsOwn: as a server's, the handler's request carries neither the
// client's deadline, nor its values, nor its Cancel channel (a handler proxying on, as a
// Service's pool does, would otherwise see its own request cancelled and answer 502 before the
// client sees its deadline).
func TestInProcessHandlerContextIsItsOwn(t *testing.T) {
	p := NewInProcess(1<<10, nil)
	p.Handle(testAuthority, http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, hasDeadline := r.Context().Deadline()
		w.Header().Set("Deadline", strconv.FormatBool(hasDeadline))
		w.Header().Set("Value", strconv.FormatBool(r.Context().Value(clientKey{}) != nil))
		w.Header().Set("Cancel", strconv.FormatBool(r.Cancel != nil))
	}))
	routed, err := p.Route(&http.Transport{})
	if err != nil {
		t.Fatal(err)
	}
	client := &http.Client{Transport: wrapping{routed.Clone()}, Timeout: time.Minute}
	ctx, cancel := context.WithTimeout(context.WithValue(context.Background(), clientKey{}, 1), time.Minute)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, "http://"+testAuthority+"/", strings.NewReader("event"))
	if err != nil {
		t.Fatal(err)
	}
	resp, err := client.Do(req)
	if err != nil {
		t.Fatal(err)
	}
	resp.Body.Close()
	for _, h := range []string{"Deadline", "Value", "Cancel"} {
		if resp.Header.Get(h) != "false" {
			t.Errorf("the handler saw the client's %s", h)
		}
	}
}
