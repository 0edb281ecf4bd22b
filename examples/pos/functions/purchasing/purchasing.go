// Package main is the point-of-sale purchasing function: it reacts to reorder requests by
// recording a purchase order, once per request, in a Redis read model.
package main

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/examples/pos/posevents"
	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/logging"
	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// TypeReorderRequested is the event consumed (emitted by examples/pos/functions/stock).
const TypeReorderRequested = posevents.TypeReorderRequested

// Names of the projector and its read model.
const (
	ProjectorName = "purchasing"
	ModelName     = "purchase-orders"
)

// Config is read once at start.
type Config struct {
	// OrderUpTo is the stock level a purchase order refills a store to.
	OrderUpTo int64 `envconfig:"POS_ORDER_UP_TO" default:"50"`
	// InboxTTL is the deduplication horizon.
	InboxTTL time.Duration `envconfig:"POS_INBOX_TTL" default:"168h"`
}

// ReorderRequest is the data of TypeReorderRequested.
type ReorderRequest = posevents.ReorderRequest

// Function is the purchasing function.
type Function struct {
	// Lifecycle gives the function Ready (once started and while Redis answers), Alive and
	// Running, and closes Redis in Stop.
	funchealth.Lifecycle
	projector *projection.Projector
	orderUpTo int64
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration and opens Redis.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	return funcstart.Start(ctx, "purchasing", &Config{}, f.start)
}

func (f *Function) start(ctx context.Context, cfg Config, rdb *redis.Client) error {
	if cfg.OrderUpTo <= 0 {
		return errors.New("purchasing: POS_ORDER_UP_TO must be positive")
	}
	projector, err := projection.Open(ctx, rdb, ProjectorName, ModelName, projection.Options{InboxTTL: cfg.InboxTTL})
	if err != nil {
		return fmt.Errorf("purchasing: %w", err)
	}
	f.projector, f.orderUpTo = projector, cfg.OrderUpTo
	f.Started(rdb)
	return nil
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error { return f.Close() }

// OrderKey is the purchase order's key, derived from the request so that a redelivered
// request names the same order.
func OrderKey(e event.Event) string {
	sum := sha256.Sum256([]byte(e.Source() + "\x00" + e.ID()))
	return "PO-" + hex.EncodeToString(sum[:8])
}

// Handle records one purchase order per reorder request.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

// handle is Handle without its span.
func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.Running() {
		return nil, errors.New("purchasing is starting")
	}
	if e.Type() != TypeReorderRequested {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "unexpected event type %q", e.Type())
	}
	var r ReorderRequest
	dec := json.NewDecoder(bytes.NewReader(e.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&r); err != nil {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "data must be a reorder request {sku, store, stock, threshold}: %s", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "data must be one JSON object, with nothing after it")
	}
	if !projection.ValidKey(r.SKU) || r.Store == "" {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "data.sku and data.store are required")
	}
	qty := f.orderUpTo - r.Stock
	if qty <= 0 {
		qty = f.orderUpTo
	}
	ch := projection.Change{Key: OrderKey(e), Ops: []projection.Op{
		projection.Set("sku", r.SKU),
		projection.Set("store", r.Store),
		projection.Set("quantity", strconv.FormatInt(qty, 10)),
		projection.Set("status", "requested"),
		projection.Set("requested_at", e.Time().UTC().Format(time.RFC3339)),
	}}
	res, err := f.projector.Apply(ctx, projection.EventRef{Source: e.Source(), ID: e.ID()}, ch)
	if errors.Is(err, projection.ErrInvalidChange) {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "%s", err.Error())
	}
	if err != nil {
		return nil, err
	}
	if !res.Duplicate {
		logging.ForEvent(ctx, e).Info("purchase order recorded", "order", ch.Key, "sku", r.SKU, "store", r.Store, "quantity", qty)
	}
	return nil, nil
}
