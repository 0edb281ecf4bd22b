// Package main is the point-of-sale stock projector: it keeps stock per SKU and store in a
// Redis read model and requests a reorder once each time a store's stock dips below its
// SKU's threshold.
package main

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"strconv"
	"strings"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/examples/pos/posevents"
	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Event types consumed (subject = SKU, data = {"store": "...", "quantity": n}).
const (
	TypeSaleRecorded  = "dev.knfaas.example.pos.sale.recorded"
	TypeSaleReturned  = "dev.knfaas.example.pos.sale.returned"
	TypeStockReceived = "dev.knfaas.example.pos.stock.received"
)

// TypeReorderRequested is the reply emitted when a store's stock of a SKU dips below the
// SKU's threshold (subject = SKU, data = ReorderRequest).
const TypeReorderRequested = posevents.TypeReorderRequested

// Source is the source of the events this function emits.
const Source = "knfaas/examples/pos/stock"

// Names of the projector and its read model.
const (
	ProjectorName = "stock-projector"
	ModelName     = "stock"
)

// Config is read once at start.
type Config struct {
	// ThresholdsFile lists per-SKU reorder thresholds, lines "SKU=n" (# comments allowed);
	// a mounted ConfigMap. Optional.
	ThresholdsFile string `envconfig:"POS_THRESHOLDS_FILE"`
	// DefaultThreshold applies to SKUs the file does not list.
	DefaultThreshold int64 `envconfig:"POS_DEFAULT_THRESHOLD" default:"5"`
	// InboxTTL is the deduplication horizon of the projector.
	InboxTTL time.Duration `envconfig:"POS_INBOX_TTL" default:"168h"`
}

// Sale is the data of the three consumed events.
type Sale struct {
	Store    string `json:"store"`
	Quantity int64  `json:"quantity"`
}

// ReorderRequest is the data of TypeReorderRequested.
type ReorderRequest = posevents.ReorderRequest

// Function is the stock projector.
type Function struct {
	// Lifecycle gives the function Ready (once started and while Redis answers), Alive and
	// Running, and closes Redis in Stop.
	funchealth.Lifecycle
	projector  *projection.Projector
	thresholds map[string]int64
	fallback   int64
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the thresholds and opens Redis; a malformed thresholds file stops start-up.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	return funcstart.Start(ctx, "stock", &Config{}, f.start)
}

func (f *Function) start(ctx context.Context, cfg Config, rdb *redis.Client) error {
	f.thresholds = map[string]int64{}
	if cfg.ThresholdsFile != "" {
		b, err := os.ReadFile(cfg.ThresholdsFile)
		if err != nil {
			return fmt.Errorf("stock: reading POS_THRESHOLDS_FILE: %w", err)
		}
		if f.thresholds, err = ParseThresholds(b); err != nil {
			return fmt.Errorf("stock: POS_THRESHOLDS_FILE %s: %w", cfg.ThresholdsFile, err)
		}
	}
	projector, err := projection.Open(ctx, rdb, ProjectorName, ModelName, projection.Options{InboxTTL: cfg.InboxTTL})
	if err != nil {
		return fmt.Errorf("stock: %w", err)
	}
	f.projector, f.fallback = projector, cfg.DefaultThreshold
	f.Started(rdb)
	return nil
}

// ParseThresholds reads lines "SKU=n".
func ParseThresholds(b []byte) (map[string]int64, error) {
	out := map[string]int64{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(sc.Text())
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		sku, v, ok := strings.Cut(line, "=")
		sku = strings.TrimSpace(sku)
		t, err := strconv.ParseInt(strings.TrimSpace(v), 10, 64)
		if !ok || !projection.ValidKey(sku) || err != nil || t < 0 {
			return nil, fmt.Errorf("line %d: want SKU=<non-negative integer>", n)
		}
		out[sku] = t
	}
	return out, sc.Err()
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error { return f.Close() }

var storeRE = regexp.MustCompile(`^[a-z0-9][a-z0-9-]{0,62}$`)

// Decode checks an event against the schema and returns its change, or an error naming the
// offending attribute or field.
func (f *Function) Decode(e event.Event) (projection.Change, error) {
	var sign int64
	switch e.Type() {
	case TypeSaleRecorded:
		sign = -1
	case TypeSaleReturned, TypeStockReceived:
		sign = 1
	default:
		return projection.Change{}, fmt.Errorf("unexpected event type %q", e.Type())
	}
	if !projection.ValidKey(e.Subject()) {
		return projection.Change{}, fmt.Errorf("subject must be the SKU (1-128 of A-Z a-z 0-9 . _ ~ -), got %q", e.Subject())
	}
	var s Sale
	dec := json.NewDecoder(bytes.NewReader(e.Data()))
	dec.DisallowUnknownFields()
	if err := dec.Decode(&s); err != nil {
		return projection.Change{}, fmt.Errorf("data must be {\"store\": string, \"quantity\": integer}: %w", err)
	}
	if _, err := dec.Token(); !errors.Is(err, io.EOF) {
		return projection.Change{}, errors.New("data must be one JSON object, with nothing after it")
	}
	if !storeRE.MatchString(s.Store) {
		return projection.Change{}, fmt.Errorf("data.store must be 1-63 of a-z 0-9 -, got %q", s.Store)
	}
	if s.Quantity <= 0 || s.Quantity > 1_000_000 {
		return projection.Change{}, fmt.Errorf("data.quantity must be an integer in 1..1000000, got %d", s.Quantity)
	}
	return projection.Change{
		Key:     e.Subject(),
		Ops:     []projection.Op{projection.Incr(s.Store, sign*s.Quantity)},
		Watches: []projection.Watch{{Field: s.Store, Threshold: f.threshold(e.Subject())}},
	}, nil
}

func (f *Function) threshold(sku string) int64 {
	if t, ok := f.thresholds[sku]; ok {
		return t
	}
	return f.fallback
}

// Handle applies one event exactly once and replies with a reorder request when the stock
// dipped. A redelivered event gets the same reply (same id) again: the first reply may have
// been lost, and the purchasing function deduplicates on (source, id).
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

// handle is Handle without its span.
func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.Running() {
		return nil, errors.New("stock projector is starting")
	}
	ch, err := f.Decode(e)
	if err != nil {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "%s", err.Error())
	}
	res, err := f.projector.Apply(ctx, projection.EventRef{Source: e.Source(), ID: e.ID()}, ch)
	if errors.Is(err, projection.ErrInvalidChange) {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "%s", err.Error())
	}
	if err != nil {
		return nil, err
	}
	for _, c := range res.Crossings {
		if c.Direction != projection.Below {
			continue
		}
		return reorder(e, ReorderRequest{SKU: e.Subject(), Store: c.Field, Stock: int64(c.Value), Threshold: int64(c.Threshold)})
	}
	return nil, nil
}

func reorder(cause event.Event, r ReorderRequest) (*event.Event, error) {
	sum := sha256.Sum256([]byte(cause.Source() + "\x00" + cause.ID()))
	out := event.New()
	out.SetID("reorder-" + hex.EncodeToString(sum[:12]))
	out.SetSource(Source)
	out.SetType(TypeReorderRequested)
	out.SetSubject(r.SKU)
	out.SetTime(time.Now())
	if err := out.SetData(cloudevents.ApplicationJSON, r); err != nil {
		return nil, fmt.Errorf("encoding reorder request: %w", err)
	}
	return &out, nil
}
