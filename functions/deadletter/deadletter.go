// Package main is the dead-letter function: the Broker's deadLetterSink, which stores every
// dead letter in Redis so that it can be listed and redriven with `knfaas dlq`.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/kelseyhightower/envconfig"

	"github.com/knfaas/knfaas/internal/deadletter"
	"github.com/knfaas/knfaas/internal/funchealth"
	"github.com/knfaas/knfaas/internal/redisconn"
)

// Config is read once at start.
type Config struct {
	// MaxLetters bounds the number of letters kept; the oldest go first.
	MaxLetters int `envconfig:"DEADLETTER_MAX_LETTERS" default:"100000"`
	// MaxAge bounds how long a letter is kept.
	MaxAge time.Duration `envconfig:"DEADLETTER_MAX_AGE" default:"168h"`
}

// Function stores dead letters.
type Function struct {
	store atomic.Pointer[deadletter.Store]
	funchealth.Redis
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration and opens the Redis client; a bad value stops start-up.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	if err := envconfig.Process("", &cfg); err != nil {
		return fmt.Errorf("deadletter: reading configuration: %w", err)
	}
	if cfg.MaxLetters <= 0 || cfg.MaxAge <= 0 {
		return fmt.Errorf("deadletter: DEADLETTER_MAX_LETTERS (%d) and DEADLETTER_MAX_AGE (%s) must be positive: retention is never unbounded",
			cfg.MaxLetters, cfg.MaxAge)
	}
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return fmt.Errorf("deadletter: %w", err)
	}
	f.store.Store(deadletter.NewStore(rdb, deadletter.Options{MaxLetters: cfg.MaxLetters, MaxAge: cfg.MaxAge}))
	f.Started(rdb)
	return nil
}

// Stop closes the Redis client.
func (f *Function) Stop(context.Context) error { return f.Close() }

// Handle stores one dead letter. A Redis failure is returned (5xx) so the broker retries: a dead
// letter is only acknowledged once it is stored.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	store := f.store.Load()
	if store == nil {
		return nil, cloudevents.NewHTTPResult(http.StatusServiceUnavailable, "dead-letter store is starting")
	}
	l, err := deadletter.FromEvent(e)
	if err != nil {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "event %s cannot be stored: %v", e.ID(), err)
	}
	id, stored, err := store.Add(ctx, l)
	if err != nil {
		return nil, fmt.Errorf("deadletter: %w", err)
	}
	if !l.ErrorExtensions {
		slog.WarnContext(ctx, "stored an event without knativeerror* extensions (posted directly?)",
			"letter", id, "type", l.EventType, "source", l.Source, "id", l.EventID)
	}
	if !stored {
		slog.DebugContext(ctx, "duplicate dead letter", "letter", id, "source", l.Source, "id", l.EventID, "dest", l.Dest)
	}
	return nil, nil
}
