package serving

import (
	"bytes"
	"context"
	"crypto/tls"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/url"
	"runtime/debug"
	"strconv"
)

// InProcess is an http.RoundTripper that serves requests for registered authorities (host:port)
// by calling their handlers in this process: no connection, no HTTP/1 encoding or parsing. The
// handler sees a request as a server would hand it over, and its answer is buffered (at most
// MaxResponseBytes) into the *http.Response. The request's context bounds the exchange: when it
// ends, RoundTrip returns its error at once and the handler's context (its own, as a server
// gives it) ends.
// A panic in a handler is answered 500 (http.ErrAbortHandler: an error, as a reset connection).
// A handler that is a RoundTripHandler (a Service's Pool) answers itself, in the caller's
// goroutine, on the caller's request: see RoundTripHandler.
//
// Route installs it below an *http.Transport, so that clients built from clones of that
// transport (Knative's dispatcher clones http.DefaultTransport) reach the handlers directly.
type InProcess struct {
	handlers map[string]http.Handler
	// MaxResponseBytes bounds a buffered answer; a larger one fails the request.
	MaxResponseBytes int64
	log              *slog.Logger
}

// RemoteAddr is the remote address handlers see on in-process requests.
const RemoteAddr = "in-process"

// ErrResponseTooLarge is returned to a handler writing past InProcess.MaxResponseBytes.
var ErrResponseTooLarge = errors.New("in-process response exceeds its bound")

// NewInProcess returns an InProcess with no handlers; maxResponseBytes bounds each answer.
func NewInProcess(maxResponseBytes int64, log *slog.Logger) *InProcess {
	return &InProcess{handlers: map[string]http.Handler{}, MaxResponseBytes: maxResponseBytes, log: log}
}

// Handle serves the authority host:port (port 80 when omitted) with h. Call it before the first
// request.
func (p *InProcess) Handle(authority string, h http.Handler) {
	p.handlers[canonicalAuthority(authority, "http")] = h
}

// Serves reports whether authority (host or host:port) has a handler.
func (p *InProcess) Serves(authority string) bool {
	_, ok := p.handlers[canonicalAuthority(authority, "http")]
	return ok
}

func canonicalAuthority(authority, scheme string) string {
	if _, _, err := net.SplitHostPort(authority); err == nil {
		return authority
	}
	if scheme == "https" {
		return authority + ":443"
	}
	return authority + ":80"
}

// RoundTrip serves an http:// request for a registered authority; any other request fails.
func (p *InProcess) RoundTrip(req *http.Request) (*http.Response, error) {
	h, ok := p.handlers[canonicalAuthority(req.URL.Host, req.URL.Scheme)]
	if !ok || req.URL.Scheme != "http" {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, fmt.Errorf("no in-process handler for %s://%s", req.URL.Scheme, req.URL.Host)
	}
	if rt, ok := h.(RoundTripHandler); ok {
		if err := req.Context().Err(); err != nil {
			if req.Body != nil {
				_ = req.Body.Close()
			}
			return nil, err
		}
		return rt.RoundTripInProcess(req, p.MaxResponseBytes)
	}
	return p.serve(h, req)
}

// A RoundTripHandler is a handler that also answers in-process requests itself, as a
// RoundTripper: InProcess hands it the caller's request, in the caller's goroutine, instead of
// running ServeHTTP in a goroutine of its own on a copy of the request. It must answer as
// ServeHTTP would over a connection, read the answer whole (at most maxResponseBytes, else
// fail with ErrResponseTooLarge), close the request's body, and return the context's error
// when the caller gives up. A Pool is one.
type RoundTripHandler interface {
	http.Handler
	RoundTripInProcess(req *http.Request, maxResponseBytes int64) (*http.Response, error)
}

type handlerResult struct {
	panicked any
}

func (p *InProcess) serve(h http.Handler, req *http.Request) (*http.Response, error) {
	if err := req.Context().Err(); err != nil {
		if req.Body != nil {
			_ = req.Body.Close()
		}
		return nil, err
	}
	// As a server's, the handler's context is its own (no client deadline or values: a handler
	// that bounds its own work, as a Service's timeout does, answers as it would over the
	// network) and ends when the handler returns or the client gives up.
	ctx, cancel := context.WithCancel(context.Background())
	stop := context.AfterFunc(req.Context(), cancel)
	in := serverRequest(ctx, req)
	w := &bufferedResponse{header: http.Header{}, max: p.MaxResponseBytes}
	done := make(chan handlerResult, 1)
	go func() {
		defer cancel()
		defer stop()
		defer func() {
			if req.Body != nil {
				_ = req.Body.Close()
			}
		}()
		defer func() {
			if v := recover(); v != nil {
				if v != http.ErrAbortHandler && p.log != nil {
					p.log.Error("in-process handler panicked", "url", req.URL.String(), "panic", v, "stack", string(debug.Stack()))
				}
				done <- handlerResult{panicked: v}
			}
		}()
		h.ServeHTTP(w, in)
		done <- handlerResult{}
	}()
	select {
	case res := <-done:
		if req.Context().Err() == nil {
			return p.response(req, w, res)
		}
		// An answer that came as the client gave up is not seen, as over a connection.
	case <-req.Context().Done():
		// The handler may still run: w is its own from now on.
	}
	return nil, fmt.Errorf("in-process request to %s: %w", req.URL.Host, context.Cause(req.Context()))
}

func (p *InProcess) response(req *http.Request, w *bufferedResponse, res handlerResult) (*http.Response, error) {
	switch {
	case res.panicked == http.ErrAbortHandler:
		return nil, fmt.Errorf("in-process handler for %s aborted its response", req.URL.Host)
	case res.panicked != nil:
		body := []byte(fmt.Sprintf("in-process handler for %s panicked: %v\n", req.URL.Host, res.panicked))
		return newResponse(req, http.StatusInternalServerError, http.Header{"Content-Type": {"text/plain; charset=utf-8"}}, body), nil
	case w.tooLarge:
		return nil, fmt.Errorf("in-process response from %s: %w (%d bytes)", req.URL.Host, ErrResponseTooLarge, p.MaxResponseBytes)
	}
	w.WriteHeader(http.StatusOK) // no-op when the handler wrote one
	header := w.sent
	body := w.body.Bytes()
	if _, ok := header["Content-Type"]; !ok && len(body) > 0 && req.Method != http.MethodHead {
		// As a server does for a handler that set none.
		header.Set("Content-Type", http.DetectContentType(body))
	}
	return newResponse(req, w.status, header, body), nil
}

func newResponse(req *http.Request, status int, header http.Header, body []byte) *http.Response {
	if header.Get("Content-Length") == "" {
		header.Set("Content-Length", strconv.Itoa(len(body)))
	}
	return &http.Response{
		Status:        strconv.Itoa(status) + " " + http.StatusText(status),
		StatusCode:    status,
		Proto:         "HTTP/1.1",
		ProtoMajor:    1,
		ProtoMinor:    1,
		Header:        header,
		Body:          io.NopCloser(bytes.NewReader(body)),
		ContentLength: int64(len(body)),
		Request:       req,
	}
}

// serverRequest is req as a server hands it to a handler: its own header map and URL (path
// and query only), Host, RequestURI and RemoteAddr set, no Cancel channel, and ctx as its
// context.
func serverRequest(ctx context.Context, req *http.Request) *http.Request {
	in := req.WithContext(ctx)
	in.Header = req.Header.Clone()
	if in.Header == nil {
		in.Header = http.Header{}
	}
	if in.Host == "" {
		in.Host = req.URL.Host
	}
	in.URL = &url.URL{Path: req.URL.Path, RawPath: req.URL.RawPath, RawQuery: req.URL.RawQuery}
	in.RequestURI = req.URL.RequestURI()
	in.RemoteAddr = RemoteAddr
	in.Proto, in.ProtoMajor, in.ProtoMinor = "HTTP/1.1", 1, 1
	in.Close = false
	in.GetBody = nil
	in.Response = nil
	in.TLS = nil
	// http.Client sets the deprecated Cancel channel for its Timeout below transports it does
	// not know (Knative's tracing one); a handler that proxies on must not inherit it.
	in.Cancel = nil
	if in.Body == nil {
		in.Body = http.NoBody
	}
	return in
}

// bufferedResponse is the ResponseWriter of an in-process request.
type bufferedResponse struct {
	header   http.Header
	sent     http.Header // header as of WriteHeader
	status   int
	body     bytes.Buffer
	max      int64
	tooLarge bool
}

func (w *bufferedResponse) Header() http.Header { return w.header }

func (w *bufferedResponse) WriteHeader(status int) {
	if w.sent != nil || (status >= 100 && status < 200 && status != http.StatusSwitchingProtocols) {
		return // informational answers (103 Early Hints) are not passed on
	}
	w.status = status
	w.sent = w.header.Clone()
}

func (w *bufferedResponse) Write(b []byte) (int, error) {
	w.WriteHeader(http.StatusOK)
	if w.tooLarge || int64(w.body.Len()+len(b)) > w.max {
		w.tooLarge = true
		return 0, ErrResponseTooLarge
	}
	return w.body.Write(b)
}

// Flush does nothing: the answer is handed over whole when the handler returns.
func (w *bufferedResponse) Flush() {}

// Route returns a clone of base whose http:// requests for p's authorities reach p without a
// connection, and that is otherwise base (base takes the other http:// requests, base's clone
// the https:// ones, with HTTP/1.1: base's HTTP/2 is not offered).
//
// The hook is the transport's "unencrypted HTTP/2" switch: with Protocols set to unencrypted
// HTTP/2 only, the transport hands each new connection for an http:// authority to
// TLSNextProto["unencrypted_http2"], whose RoundTripper then takes the requests for it; a
// TLSNextProto["h2"] keeps the bundled HTTP/2 from taking that key over. Unlike a registered
// protocol, TLSNextProto survives Clone, which Knative's dispatcher calls for each client. That
// key is not part of net/http's documented interface, so Route checks the hook on a clone
// before it returns, and answers an error when it no longer holds (callers then keep base).
func (p *InProcess) Route(base *http.Transport) (*http.Transport, error) {
	check := NewInProcess(1<<10, nil)
	const checkAuthority = "knfaas-in-process-check.invalid:80"
	check.Handle(checkAuthority, http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.WriteHeader(http.StatusNoContent)
	}))
	probe := check.route(base).Clone()
	defer probe.CloseIdleConnections()
	req, err := http.NewRequest(http.MethodGet, "http://"+checkAuthority+"/", nil)
	if err != nil {
		return nil, err
	}
	resp, err := probe.RoundTrip(req)
	if err != nil {
		return nil, fmt.Errorf("this Go's net/http does not route through TLSNextProto[%q]: %w", unencryptedHTTP2, err)
	}
	_ = resp.Body.Close()
	if resp.StatusCode != http.StatusNoContent {
		return nil, fmt.Errorf("this Go's net/http does not route through TLSNextProto[%q]: the check answered %s", unencryptedHTTP2, resp.Status)
	}
	return p.route(base), nil
}

// unencryptedHTTP2 is the TLSNextProto key net/http uses for HTTP/2 with prior knowledge.
const unencryptedHTTP2 = "unencrypted_http2"

func (p *InProcess) route(base *http.Transport) *http.Transport {
	out := base.Clone()
	out.Protocols = new(http.Protocols)
	out.Protocols.SetUnencryptedHTTP2(true)
	out.Protocols.SetHTTP2(true)
	dial := base.DialContext
	if dial == nil {
		dial = (&net.Dialer{}).DialContext
	}
	out.DialContext = func(ctx context.Context, network, addr string) (net.Conn, error) {
		if p.Serves(addr) {
			return placeholderConn(addr), nil
		}
		return dial(ctx, network, addr)
	}
	proxy := base.Proxy
	out.Proxy = func(req *http.Request) (*url.URL, error) {
		if req.URL.Scheme == "http" && p.Serves(req.URL.Host) || proxy == nil {
			return nil, nil
		}
		return proxy(req)
	}
	out.TLSNextProto = map[string]func(string, *tls.Conn) http.RoundTripper{
		// Never offered (TLSClientConfig has no NextProtos): present so the bundled HTTP/2
		// leaves unencryptedHTTP2 alone.
		"h2": func(authority string, c *tls.Conn) http.RoundTripper {
			_ = c.Close()
			return failing{fmt.Errorf("HTTP/2 to %s: not offered by this transport", authority)}
		},
		unencryptedHTTP2: func(authority string, c *tls.Conn) http.RoundTripper {
			// The connection was only dialed for the transport's bookkeeping.
			if nc, ok := c.NetConn().(interface{ UnencryptedNetConn() net.Conn }); ok {
				_ = nc.UnencryptedNetConn().Close()
			}
			if p.Serves(authority) {
				return p
			}
			return base
		},
	}
	return out
}

// failing answers every request with err.
type failing struct{ err error }

func (f failing) RoundTrip(req *http.Request) (*http.Response, error) {
	if req.Body != nil {
		_ = req.Body.Close()
	}
	return nil, f.err
}

// placeholderConn is the connection the transport dials for an in-process authority; no byte
// is ever written to or read from it.
func placeholderConn(addr string) net.Conn {
	client, server := net.Pipe()
	_ = server.Close()
	return addrConn{Conn: client, remote: pipeAddrOf(addr)}
}

type addrConn struct {
	net.Conn
	remote net.Addr
}

func (c addrConn) RemoteAddr() net.Addr { return c.remote }

type pipeAddrOf string

func (a pipeAddrOf) Network() string { return "in-process" }
func (a pipeAddrOf) String() string  { return string(a) }
