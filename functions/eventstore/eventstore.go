// Package main is the event store function: it appends every event routed to it to an
// append-only log on Redis Streams and serves that log over HTTP.
package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"strconv"
	"time"

	"github.com/cloudevents/sdk-go/v2/binding"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/eventlog"
	"github.com/knfaas/knfaas/internal/function/eventsize"
	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/logging"
)

// It is an HTTP function, not a CloudEvents one, because func-go's CloudEvents runtime
// answers only CloudEvents: POST / takes events (binary or structured mode, parsed with the
// CloudEvents SDK), and GET routes on the same port read the log.

// Config is read once at start; each default is in its tag or, where it is a shared constant,
// preset by Start before the environment is read. Check refuses a bad value.
type Config struct {
	// Retention drops events older than this from every stream.
	Retention time.Duration `envconfig:"EVENTSTORE_RETENTION" default:"720h"`
	// MaxLen caps the global stream.
	MaxLen int64 `envconfig:"EVENTSTORE_MAXLEN" default:"1000000"`
	// StreamMaxLen caps each per-subject and per-type stream.
	StreamMaxLen int64 `envconfig:"EVENTSTORE_STREAM_MAXLEN" default:"10000"`
	// DedupTTL is how long a (source, id) is remembered; at least Retention, so that replaying
	// any event still in the log (which routes it back here) does not log it twice.
	DedupTTL time.Duration `envconfig:"EVENTSTORE_DEDUP_TTL" default:"720h"`
	// MaxEventBytes refuses larger request bodies with 413; positive. Unset, it is
	// eventsize.DefaultMaxEventBytes, what a Broker accepts, so that every event a Broker took
	// can be logged.
	MaxEventBytes int64 `envconfig:"EVENTSTORE_MAX_EVENT_BYTES"`
}

// DefaultLimit is the page size when a read does not ask for one.
const DefaultLimit = 100

// Function is the event store.
type Function struct {
	// events is the append-only event log on Redis Streams.
	events *eventlog.Log
	cfg    Config
	mux    *http.ServeMux
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration, refusing a bad value, and opens Redis.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	cfg := Config{MaxEventBytes: eventsize.DefaultMaxEventBytes}
	rdb, err := funcstart.Open("eventstore", &cfg)
	if err != nil {
		return err
	}
	if cfg.MaxEventBytes < eventsize.DefaultMaxEventBytes {
		slog.Warn("EVENTSTORE_MAX_EVENT_BYTES is below what a Broker accepts by default: larger events will be refused here (413) and dead-lettered",
			"maxEventBytes", cfg.MaxEventBytes, "brokerDefault", eventsize.DefaultMaxEventBytes)
	}
	f.start(ctx, cfg, rdb)
	return nil
}

// Check refuses a bad value, naming the variable.
func (c Config) Check() error {
	if c.MaxEventBytes <= 0 {
		return fmt.Errorf("EVENTSTORE_MAX_EVENT_BYTES (%d) must be positive", c.MaxEventBytes)
	}
	if c.DedupTTL < c.Retention {
		return fmt.Errorf("EVENTSTORE_DEDUP_TTL (%s) is shorter than EVENTSTORE_RETENTION (%s): replayed events would be logged twice", c.DedupTTL, c.Retention)
	}
	return nil
}

func (f *Function) start(ctx context.Context, cfg Config, rdb *redis.Client) {
	f.cfg = cfg
	f.events = eventlog.New(rdb, eventlog.Options{
		Retention: cfg.Retention, MaxLen: cfg.MaxLen, StreamMaxLen: cfg.StreamMaxLen, DedupTTL: cfg.DedupTTL,
	})
	if err := f.events.Load(ctx); err != nil {
		slog.Warn("redis not reachable yet; readiness will follow it", "err", err)
	}
	mux := http.NewServeMux()
	mux.HandleFunc("POST /{$}", f.append)
	mux.HandleFunc("GET /events", f.read(func(*http.Request) eventlog.Query { return eventlog.Query{} }))
	mux.HandleFunc("GET /subjects/{subject}/events", f.read(func(r *http.Request) eventlog.Query {
		return eventlog.Query{Subject: r.PathValue("subject"), Type: r.URL.Query().Get("type")}
	}))
	mux.HandleFunc("GET /types/{type}/events", f.read(func(r *http.Request) eventlog.Query {
		return eventlog.Query{Type: r.PathValue("type")}
	}))
	f.mux = mux
	f.Started(rdb)
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error { return f.Close() }

// Handle routes appends and reads.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	if f.RefuseWhileStarting(w, "event store") {
		return
	}
	f.mux.ServeHTTP(w, r)
}

func (f *Function) append(w http.ResponseWriter, r *http.Request) {
	r.Body = http.MaxBytesReader(w, r.Body, f.cfg.MaxEventBytes)
	e, err := binding.ToEvent(r.Context(), cehttp.NewMessageFromHttpRequest(r))
	if err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			http.Error(w, fmt.Sprintf("event larger than %d bytes (EVENTSTORE_MAX_EVENT_BYTES)", f.cfg.MaxEventBytes), http.StatusRequestEntityTooLarge)
			return
		}
		http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
		return
	}
	res, err := f.events.Append(r.Context(), *e)
	if errors.Is(err, eventlog.ErrInvalidEvent) {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	if err != nil {
		// Transient (Redis): the broker retries, then dead-letters.
		logging.ForEvent(r.Context(), *e).Error("appending event failed", "id", e.ID(), "source", e.Source(), "err", err)
		http.Error(w, "event store unavailable", http.StatusServiceUnavailable)
		return
	}
	w.Header().Set("Knfaas-Eventstore-Cursor", res.Cursor)
	w.Header().Set("Knfaas-Eventstore-Duplicate", strconv.FormatBool(res.Duplicate))
	w.WriteHeader(http.StatusAccepted)
}

func (f *Function) read(base func(*http.Request) eventlog.Query) http.HandlerFunc {
	return func(w http.ResponseWriter, r *http.Request) {
		q := base(r)
		if err := parseWindow(r, &q); err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		page, err := f.events.Read(r.Context(), q)
		if errors.Is(err, eventlog.ErrInvalidQuery) {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		if err != nil {
			slog.Error("reading the event log failed", "err", err)
			http.Error(w, "event store unavailable", http.StatusServiceUnavailable)
			return
		}
		if page.Records == nil {
			page.Records = []eventlog.Record{}
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(page)
	}
}

// parseWindow reads ?since=&until= (RFC 3339), ?after= (a cursor) and ?limit=.
func parseWindow(r *http.Request, q *eventlog.Query) error {
	v := r.URL.Query()
	for name, dst := range map[string]*time.Time{"since": &q.Since, "until": &q.Until} {
		if s := v.Get(name); s != "" {
			t, err := time.Parse(time.RFC3339Nano, s)
			if err != nil {
				return fmt.Errorf("%s must be an RFC 3339 time: %w", name, err)
			}
			*dst = t
		}
	}
	q.After = v.Get("after")
	q.Limit = DefaultLimit
	if s := v.Get("limit"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			return fmt.Errorf("limit must be a number: %w", err)
		}
		q.Limit = n
	}
	return nil
}
