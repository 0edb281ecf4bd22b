// Package sink sends CloudEvents to a function's K_SINK with one shared, tuned HTTP client.
package sink

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// EnvSink is the variable Knative (SinkBinding, ContainerSource) and knfaas up set to the
// address events should be sent to.
const EnvSink = "K_SINK"

// ErrNoSink is returned by New when the target is empty (K_SINK unset).
var ErrNoSink = errors.New(EnvSink + " is not set")

// Sender publishes events to one target URL in binary mode.
type Sender struct {
	target string
	client cloudevents.Client
}

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
	p, err := cehttp.New(
		cehttp.WithTarget(target),
		cehttp.WithClient(http.Client{Transport: tracing.Transport(withOIDCToken(rt, OIDCTokenFile)), Timeout: timeout}),
	)
	if err != nil {
		return nil, fmt.Errorf("creating CloudEvents HTTP protocol for %s: %w", target, err)
	}
	c, err := cloudevents.NewClient(p, cloudevents.WithTimeNow(), cloudevents.WithUUIDs())
	if err != nil {
		return nil, fmt.Errorf("creating CloudEvents client: %w", err)
	}
	return &Sender{target: target, client: c}, nil
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
	ctx, span := tracing.StartPublish(ctx, &e)
	res := s.client.Send(ctx, e)
	if cloudevents.IsACK(res) {
		span.End()
		return nil
	}
	err := fmt.Errorf("sending event %s to %s: %w", e.ID(), s.target, res)
	tracing.End(span, err)
	return err
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
