package serving

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// RoundTripInProcess answers an in-process request to the Service as ServeHTTP answers one that
// came over a connection, with the same statuses, timeout and queueing, but as a RoundTripper
// does: in the caller's goroutine, on the caller's request, returning the instance's answer
// read whole (at most maxResponseBytes). It saves what the handler path costs on each event:
// a goroutine, a copy of the request as a server would hand it over, a ResponseWriter to
// buffer into, and a reverse proxy's copy of the request and of the answer.
//
// A body of known length up to maxBufferedBody is read here, in the caller's goroutine, before
// the request takes a slot: in-process callers send bodies they hold (Knative's dispatcher
// buffers each event). Other bodies stream to the instance.
//
// When the caller gives up (its context ends), RoundTripInProcess returns its error, as a
// client whose connection was dropped sees; the Service's own timeout is answered 504.
func (s *Pool) RoundTripInProcess(req *http.Request, maxResponseBytes int64) (*http.Response, error) {
	if s.requests == nil {
		return s.roundTrip(req, maxResponseBytes)
	}
	began := time.Now()
	eventType, traceID := req.Header.Get("Ce-Type"), sampledTraceID(req.Header)
	resp, err := s.roundTrip(req, maxResponseBytes)
	status := http.StatusBadGateway // the answer did not come back whole
	if err == nil {
		status = resp.StatusCode
	}
	s.requests.ObserveRequest(s.spec.Namespace, s.spec.Name, eventType, status, time.Since(began), traceID)
	return resp, err
}

func (s *Pool) roundTrip(req *http.Request, maxResponseBytes int64) (*http.Response, error) {
	clientCtx := req.Context()
	ctx, deadline, cancel := s.withTimeout(clientCtx)
	defer cancel()
	body, reserved, err := s.readInProcessBody(req)
	defer s.buffered.Add(-reserved)
	if err != nil {
		return s.failure(req, err), nil
	}
	// From here the body is the outgoing request's (streamed) or read and closed (buffered).
	inst, err := s.acquire(ctx)
	if err != nil {
		closeBody(req, body)
		if clientCtx.Err() != nil {
			return nil, s.clientGaveUp(clientCtx)
		}
		return s.failure(req, err), nil
	}
	defer s.release(inst)
	resp, err := s.transport.RoundTrip(s.forwarded(ctx, req, inst, body))
	if err != nil {
		switch {
		case clientCtx.Err() != nil:
			return nil, s.clientGaveUp(clientCtx)
		case !deadline.IsZero() && !time.Now().Before(deadline):
			return s.timedOut(req), nil
		}
		s.log.Warn("proxying request failed", "error", err)
		return textResponse(req, http.StatusBadGateway, fmt.Sprintf("instance of %s failed: %v", s.Name(), err)), nil
	}
	// The instance's slot is held until its answer is read, as the reverse proxy holds it
	// while it copies the answer.
	data, err := readResponse(resp, maxResponseBytes)
	if err != nil {
		if clientCtx.Err() != nil {
			return nil, s.clientGaveUp(clientCtx)
		}
		return nil, fmt.Errorf("in-process request to %s: reading the answer: %w", s.Name(), err)
	}
	header := resp.Header
	removeHopByHopHeaders(header)
	return newResponse(req, resp.StatusCode, header, data), nil
}

// readInProcessBody reads a body of known length up to maxBufferedBody, within the Service's
// buffer budget, and closes it; it returns nil (and leaves the body to stream) otherwise. The
// bytes it reserved of the budget are the caller's to give back.
func (s *Pool) readInProcessBody(req *http.Request) ([]byte, int64, error) {
	n := req.ContentLength
	if req.Body == nil || req.Body == http.NoBody || n <= 0 || n > maxBufferedBody {
		return nil, 0, nil
	}
	if s.buffered.Add(n) > s.bufferBudget {
		s.buffered.Add(-n)
		return nil, 0, nil
	}
	buf := make([]byte, n)
	read, err := io.ReadFull(req.Body, buf)
	_ = req.Body.Close()
	if err != nil {
		return nil, n, &bodyError{read: read, err: err}
	}
	return buf, n, nil
}

// forwarded is the request to the instance: req's method, path, headers (less the hop-by-hop
// ones, plus X-Forwarded-Host and -Proto, as the reverse proxy sends) and body, under ctx.
func (s *Pool) forwarded(ctx context.Context, req *http.Request, inst *instance, body []byte) *http.Request {
	out := req.Clone(ctx)
	out.URL.Scheme = "http"
	out.URL.Host = "127.0.0.1:" + strconv.Itoa(inst.port)
	out.Host = req.Host
	if out.Host == "" {
		out.Host = req.URL.Host
	}
	out.RequestURI = ""
	// The caller's context ends the request (its deadline included); http.Client also closes
	// the deprecated Cancel channel for its Timeout below a transport it does not know
	// (Knative's tracing one), which would end it as "request canceled" a moment before the
	// context's deadline shows, and make a client that gave up look like a failed instance.
	out.Cancel = nil
	removeHopByHopHeaders(out.Header)
	out.Header.Del("X-Forwarded-For") // an in-process caller has no address to name
	out.Header.Set("X-Forwarded-Host", out.Host)
	out.Header.Set("X-Forwarded-Proto", "http")
	if body != nil {
		// One write for headers and body; and the transport may resend a request that a
		// closing keep-alive connection lost.
		out.Body = io.NopCloser(bytes.NewReader(body))
		out.ContentLength = int64(len(body))
		out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	}
	return out
}

// readResponse reads resp's body whole, at most max bytes, and closes it.
func readResponse(resp *http.Response, max int64) ([]byte, error) {
	defer resp.Body.Close()
	if resp.ContentLength > max {
		return nil, fmt.Errorf("%w (%d bytes)", ErrResponseTooLarge, max)
	}
	if resp.ContentLength == 0 {
		return nil, nil // most deliveries: an event accepted, no reply
	}
	var buf bytes.Buffer
	if resp.ContentLength > 0 {
		// Room for the whole answer and the read that finds its end: one allocation.
		buf.Grow(int(resp.ContentLength) + bytes.MinRead)
	}
	if _, err := buf.ReadFrom(io.LimitReader(resp.Body, max+1)); err != nil {
		return nil, err
	}
	if int64(buf.Len()) > max {
		return nil, fmt.Errorf("%w (%d bytes)", ErrResponseTooLarge, max)
	}
	return buf.Bytes(), nil
}

// closeBody closes req's body unless it was already read (body != nil).
func closeBody(req *http.Request, body []byte) {
	if body == nil && req.Body != nil {
		_ = req.Body.Close()
	}
}

// failure is ServeHTTP's answer to a request that did not reach an instance (see Pool.fail).
func (s *Pool) failure(req *http.Request, err error) *http.Response {
	rec := &bufferedResponse{header: http.Header{}, max: 1 << 16}
	s.fail(rec, http.NewResponseController(rec), err)
	rec.WriteHeader(http.StatusOK)
	return newResponse(req, rec.status, rec.sent, rec.body.Bytes())
}

// timedOut is the answer to a request the Service's timeout cut off while the instance worked.
func (s *Pool) timedOut(req *http.Request) *http.Response {
	return textResponse(req, http.StatusGatewayTimeout, fmt.Sprintf("request to %s exceeded its timeout of %s", s.Name(), s.spec.Timeout))
}

func (s *Pool) clientGaveUp(ctx context.Context) error {
	return fmt.Errorf("in-process request to %s: %w", s.Name(), context.Cause(ctx))
}

// textResponse is an answer of status with msg as its text body, as http.Error writes one.
func textResponse(req *http.Request, status int, msg string) *http.Response {
	header := http.Header{"Content-Type": {"text/plain; charset=utf-8"}, "X-Content-Type-Options": {"nosniff"}}
	return newResponse(req, status, header, []byte(msg+"\n"))
}

// hopByHopHeaders are the headers of one connection (RFC 9110, section 7.6.1), which a proxy
// does not pass on.
var hopByHopHeaders = []string{
	"Connection", "Proxy-Connection", "Keep-Alive", "Proxy-Authenticate", "Proxy-Authorization",
	"Te", "Trailer", "Transfer-Encoding", "Upgrade",
}

// removeHopByHopHeaders deletes the hop-by-hop headers of h, and those its Connection header
// names.
func removeHopByHopHeaders(h http.Header) {
	for _, value := range h["Connection"] {
		for _, name := range strings.Split(value, ",") {
			if name = strings.TrimSpace(name); name != "" {
				h.Del(name)
			}
		}
	}
	for _, name := range hopByHopHeaders {
		h.Del(name)
	}
}

var _ RoundTripHandler = (*Pool)(nil)
