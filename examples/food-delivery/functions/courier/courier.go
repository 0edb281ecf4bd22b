// Package main is the food-delivery example's courier service: it answers the courier commands of the
// food-order process (see food.Courier).
package main

import (
	"context"
	"errors"
	"fmt"
	"sync/atomic"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/kelseyhightower/envconfig"

	"github.com/knfaas/knfaas/examples/food-delivery/food"
)

// Function is the courier service.
type Function struct {
	svc     food.Courier
	started atomic.Bool
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the service's configuration.
func (f *Function) Start(context.Context, map[string]string) error {
	if err := envconfig.Process("", &f.svc); err != nil {
		return fmt.Errorf("courier: reading configuration: %w", err)
	}
	f.started.Store(true)
	return nil
}

// Ready is true once Start has finished (the service keeps no state).
func (f *Function) Ready(context.Context) (bool, error) { return f.started.Load(), nil }

// Handle answers one command with its reply event.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.started.Load() {
		return nil, errors.New("courier is starting")
	}
	return f.svc.Handle(ctx, e)
}
