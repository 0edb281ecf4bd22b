// Package sink sends CloudEvents to a function's K_SINK with one shared, tuned HTTP client.
package sink

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/google/uuid"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// EnvSink is the variable Knative (SinkBinding, ContainerSource) and knfaas up set to the
// address events should be sent to.
const EnvSink = "K_SINK"

// ErrNoSink is returned by New when the target is empty (K_SINK unset).
var ErrNoSink = errors.New(EnvSink + " is not set")

// Sender publishes events to one target URL in binary mode.
//
// It encodes with sdk-go's binding package (cehttp.WriteRequest) and posts with a plain
// http.Client rather than through sdk-go's client and protocol layers, which cost about as much
// per event again as the HTTP exchange (BenchmarkSendVsBareHTTP) and read a refusal's whole
// body into the error.
type Sender struct {
	target  string
	http    *http.Client
	timeout time.Duration
}

// maxRefusalBody bounds how much of a refusal's body Send reads into its error.
const maxRefusalBody = 512

// Transport returns an HTTP transport sized for many concurrent sends to one host: the
// default of two idle connections per host makes a busy sender open and close sockets until
// the machine runs out of ephemeral ports.
func Transport() *http.Transport {
	t := http.DefaultTransport.(*http.Transport).Clone()
	t.MaxIdleConns = 512
	t.MaxIdleConnsPerHost = 256
	t.IdleConnTimeout = 90 * time.Second
	t.DialContext = (&net.Dialer{Timeout: 2 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	return t
}

// New returns a Sender to target. timeout bounds each send (0 means 10s).
func New(target string, timeout time.Duration) (*Sender, error) {
	return NewWithTransport(target, timeout, Transport())
}

// NewWithTransport returns a Sender to target that uses rt.
func NewWithTransport(target string, timeout time.Duration, rt http.RoundTripper) (*Sender, error) {
	if target == "" {
		return nil, ErrNoSink
	}
	if timeout == 0 {
		timeout = 10 * time.Second
	}
	u, err := url.Parse(target)
	if err != nil {
		return nil, fmt.Errorf("%s %q: %w", EnvSink, target, err)
	}
	if u.Scheme != "http" && u.Scheme != "https" || u.Host == "" {
		return nil, fmt.Errorf("%s %q: want an absolute http(s) URL", EnvSink, target)
	}
	return &Sender{
		target: target,
		// No http.Client.Timeout: send bounds each send through its context instead, which
		// costs nothing more when the caller's deadline comes first (the client's timeout is
		// one more timer and context per request, even then).
		http:    &http.Client{Transport: tracing.Transport(withOIDCToken(rt, OIDCTokenFile))},
		timeout: timeout,
	}, nil
}

// Target is the URL events are sent to.
func (s *Sender) Target() string { return s.target }

// Send delivers e and returns nil only when the receiver answered 2xx. Any other answer or a
// transport failure is an error wrapping the HTTP status where there was one, so callers can
// tell a refusal (4xx) from an outage (5xx, network) with errors.As(err, *cehttp.Result).
//
// The send is the span "publish <type>" (a child of ctx's span), and e carries it on as its
// distributed-tracing extension and traceparent header.
func (s *Sender) Send(ctx context.Context, e event.Event) error {
	// e is a copy, but its context is shared with the caller's event: the defaults and the
	// tracing extension set below go on a clone, so callers may send one event concurrently.
	if e.Context != nil {
		e.Context = e.Context.Clone()
	}
	ctx, span := tracing.StartPublish(ctx, &e)
	err := s.send(ctx, &e)
	if err != nil {
		err = fmt.Errorf("sending event %s to %s: %w", e.ID(), s.target, err)
	}
	tracing.End(span, err)
	return err
}

// send fills an event's id and time when it has none, as sdk-go's client does with its UUID
// and time defaulters, refuses an invalid event before any request, and posts it.
func (s *Sender) send(ctx context.Context, e *event.Event) error {
	if e.Context == nil {
		return errors.New("invalid event: no context (use cloudevents.NewEvent)")
	}
	if e.ID() == "" {
		e.SetID(uuid.NewString())
	}
	if e.Time().IsZero() {
		e.SetTime(time.Now())
	}
	if err := e.Validate(); err != nil {
		return fmt.Errorf("invalid event: %w", err)
	}
	if deadline, ok := ctx.Deadline(); !ok || time.Until(deadline) > s.timeout {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.timeout)
		defer cancel() // after the answer's body is read below
	}
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.target, nil)
	if err != nil {
		return err
	}
	if err := cehttp.WriteRequest(ctx, binding.ToMessage(e), req); err != nil {
		return fmt.Errorf("encoding: %w", err)
	}
	resp, err := s.http.Do(req)
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	if resp.StatusCode >= 200 && resp.StatusCode < 300 {
		// Drain a small answer so the connection is reused; a large one costs a new connection.
		_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 4<<10))
		return nil
	}
	return refusal(resp)
}

// refusal turns a non-2xx answer into a *cehttp.Result with the status and the start of the
// body, which usually says what was wrong.
func refusal(resp *http.Response) error {
	raw, _ := io.ReadAll(io.LimitReader(resp.Body, maxRefusalBody))
	said := strings.TrimSpace(strings.ToValidUTF8(string(raw), string(utf8.RuneError)))
	if said == "" {
		return cehttp.NewResult(resp.StatusCode, "answered %d %s", resp.StatusCode, http.StatusText(resp.StatusCode))
	}
	return cehttp.NewResult(resp.StatusCode, "answered %d %s: %s", resp.StatusCode, http.StatusText(resp.StatusCode), said)
}

// StatusCode returns the HTTP status inside an error from Send, or 0 when the send failed
// before any answer (connection refused, timeout).
func StatusCode(err error) int {
	var r *cehttp.Result
	if errors.As(err, &r) {
		return r.StatusCode
	}
	return 0
}
