package food

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync/atomic"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/kelseyhightower/envconfig"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Handler is one of the food services: Payment, Kitchen or Courier.
type Handler interface {
	Handle(ctx context.Context, e event.Event) (*event.Event, error)
}

// Service runs a Handler as a func-go CloudEvents function, its configuration read in Start.
type Service[H Handler] struct {
	name    string
	svc     H
	started atomic.Bool
}

// NewService returns an unstarted Service; name prefixes its errors.
func NewService[H Handler](name string) *Service[H] { return &Service[H]{name: name} }

// Start reads the service's configuration and sets up tracing.
func (s *Service[H]) Start(context.Context, map[string]string) error {
	if err := tracing.SetupFunction(s.name); err != nil {
		slog.Warn("tracing stays off", "function", s.name, "err", err)
	}
	if err := envconfig.Process("", &s.svc); err != nil {
		return fmt.Errorf("%s: reading configuration: %w", s.name, err)
	}
	s.started.Store(true)
	return nil
}

// Stop sends the spans still buffered: func-go calls it after SIGTERM, before the process exits.
func (s *Service[H]) Stop(ctx context.Context) error { return tracing.Flush(ctx) }

// Ready is true once Start has finished (the service keeps no state).
func (s *Service[H]) Ready(context.Context) (bool, error) { return s.started.Load(), nil }

// Handle answers one command with its reply event.
func (s *Service[H]) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, s.handle)
}

// handle is Handle without its span.
func (s *Service[H]) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !s.started.Load() {
		return nil, errors.New(s.name + " is starting")
	}
	return s.svc.Handle(ctx, e)
}
