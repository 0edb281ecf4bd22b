package broker

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	knbroker "knative.dev/eventing/pkg/broker"

	"github.com/knfaas/knfaas/internal/metrics"
)

// DefaultTTL is the number of broker hops an event may make before it is dropped, the value the
// Knative MT broker ingress uses.
const DefaultTTL = 255

// MaxEventBytes bounds a request body the ingress reads.
const MaxEventBytes = 10 << 20

// ReplyTTLParam carries the TTL of the event a reply answers; the reply gets it back, as the
// Knative broker filter reattaches it, so reply loops end.
const ReplyTTLParam = "knfaas-ttl"

// Ingress accepts events for brokers at /<namespace>/<broker>.
type Ingress struct {
	store   *Store
	log     *slog.Logger
	metrics *metrics.Runtime

	mu      sync.RWMutex
	brokers map[string]bool
	// full marks brokers whose backlog is over the limit: they refuse events with 503 until
	// their triggers catch up.
	full map[string]bool
}

// NewIngress returns an ingress for no brokers; Add registers them.
func NewIngress(store *Store, log *slog.Logger, m *metrics.Runtime) *Ingress {
	return &Ingress{store: store, log: log, metrics: m, brokers: map[string]bool{}, full: map[string]bool{}}
}

// Add makes a broker known.
func (in *Ingress) Add(namespace, name string) {
	in.mu.Lock()
	in.brokers[namespace+"/"+name] = true
	in.mu.Unlock()
}

// Path is the ingress path of a broker.
func Path(namespace, name string) string { return "/" + namespace + "/" + name }

// ServeHTTP stores a binary or structured CloudEvent and answers 202 once it is durable.
func (in *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 2 {
		http.Error(w, "broker ingress paths are /<namespace>/<broker>", http.StatusNotFound)
		return
	}
	key := parts[0] + "/" + parts[1]
	in.mu.RLock()
	known, full := in.brokers[key], in.full[key]
	in.mu.RUnlock()
	if !known {
		http.Error(w, fmt.Sprintf("broker %s not found", key), http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "broker ingress accepts only POST", http.StatusMethodNotAllowed)
		return
	}
	if full {
		in.metrics.EventsRejected.WithLabelValues(key, "503").Inc()
		w.Header().Set("Retry-After", "5")
		http.Error(w, fmt.Sprintf("broker %s has reached its backlog limit; its triggers are behind: retry later", key), http.StatusServiceUnavailable)
		return
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxEventBytes)
	status, err := in.receive(r.Context(), r, parts[0], parts[1])
	if err != nil {
		in.metrics.EventsRejected.WithLabelValues(key, strconv.Itoa(status)).Inc()
		if status == http.StatusServiceUnavailable {
			w.Header().Set("Retry-After", "1")
			in.log.Error("storing event failed", "broker", key, "error", err)
		}
		http.Error(w, err.Error(), status)
		return
	}
	in.metrics.EventsAccepted.WithLabelValues(key).Inc()
	w.WriteHeader(http.StatusAccepted)
}

func (in *Ingress) receive(ctx context.Context, r *http.Request, namespace, name string) (int, error) {
	msg := cehttp.NewMessageFromHttpRequest(r)
	defer msg.Finish(nil)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		return http.StatusBadRequest, errors.New("not a CloudEvent: send binary mode (ce-* headers) or structured mode (Content-Type: application/cloudevents+json)")
	}
	event, err := binding.ToEvent(ctx, msg)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			return http.StatusRequestEntityTooLarge, fmt.Errorf("event larger than %d bytes", MaxEventBytes)
		}
		return http.StatusBadRequest, fmt.Errorf("invalid CloudEvent: %w", err)
	}
	if err := event.Validate(); err != nil {
		return http.StatusBadRequest, fmt.Errorf("invalid CloudEvent: %w", err)
	}
	if v := r.URL.Query().Get(ReplyTTLParam); v != "" {
		if ttl, err := strconv.Atoi(v); err == nil {
			_ = knbroker.SetTTL(event.Context, int32(ttl))
		}
	}
	*event = knbroker.TTLDefaulter(zap.NewNop(), DefaultTTL)(ctx, *event)
	if ttl, err := knbroker.GetTTL(event.Context); err != nil || ttl <= 0 {
		return http.StatusBadRequest, fmt.Errorf("event %s exhausted its broker TTL (%s): a reply loop?", event.ID(), knbroker.TTLAttribute)
	}
	data, err := json.Marshal(event)
	if err != nil {
		return http.StatusBadRequest, fmt.Errorf("encoding event: %w", err)
	}
	if _, err := in.store.Append(ctx, StreamKey(namespace, name), eventField, data); err != nil {
		return http.StatusServiceUnavailable, err
	}
	return http.StatusAccepted, nil
}

// Maintain trims every broker's stream of the entries all its triggers have acknowledged and
// marks a broker full while its stream still holds more than maxBacklog entries, every
// interval until ctx ends. Nothing pending is ever trimmed: a full broker pushes back on
// senders instead.
func (in *Ingress) Maintain(ctx context.Context, rdb redis.UniversalClient, interval time.Duration, maxBacklog int64) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		in.maintainOnce(ctx, rdb, maxBacklog)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (in *Ingress) maintainOnce(ctx context.Context, rdb redis.UniversalClient, maxBacklog int64) {
	in.mu.RLock()
	keys := make([]string, 0, len(in.brokers))
	for k := range in.brokers {
		keys = append(keys, k)
	}
	in.mu.RUnlock()
	for _, key := range keys {
		ns, name, _ := strings.Cut(key, "/")
		stream := StreamKey(ns, name)
		if _, err := Trim(ctx, rdb, stream); err != nil {
			in.log.Warn("trimming broker stream failed", "broker", key, "error", err)
			continue
		}
		n, err := rdb.XLen(ctx, stream).Result()
		if err != nil {
			continue
		}
		full := maxBacklog > 0 && n > maxBacklog
		in.mu.Lock()
		was := in.full[key]
		in.full[key] = full
		in.mu.Unlock()
		if full != was {
			in.log.Warn("broker backlog limit", "broker", key, "entries", n, "limit", maxBacklog, "refusing_events", full)
		}
	}
}
