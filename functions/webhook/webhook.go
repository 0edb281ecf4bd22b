// Package main is the webhook function: it verifies signed webhook deliveries (GitHub, Stripe,
// Slack, Standard Webhooks, generic HMAC), publishes each delivery once to the Broker as a
// CloudEvent carrying the original body, and answers 2xx only after the Broker accepted it.
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/logging"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/function/webhook/dedup"
	"github.com/knfaas/knfaas/internal/function/webhook/delivery"
	"github.com/knfaas/knfaas/internal/function/webhook/source"
)

// SourcePrefix starts the CloudEvent source of every published delivery: /webhooks/<name>.
const SourcePrefix = "/webhooks/"

// Config is read once at start; each default is in its tag, and Check refuses a bad value.
type Config struct {
	// SourcesFile is the sources YAML, mounted from the webhook-sources ConfigMap; required.
	SourcesFile string `envconfig:"WEBHOOK_SOURCES_FILE" required:"true"`
	// Sink is the Broker (set by the SinkBinding).
	Sink string `envconfig:"K_SINK" required:"true"`
	// PublishTimeout bounds one publish to the Broker, and each Redis call of a delivery; a
	// slower Broker gets a 503. Positive.
	PublishTimeout time.Duration `envconfig:"WEBHOOK_PUBLISH_TIMEOUT" default:"5s"`
	// RetryAfter is what a 503 asks the sender to wait (in whole seconds, at least 1). Positive.
	RetryAfter time.Duration `envconfig:"WEBHOOK_RETRY_AFTER" default:"10s"`
}

// Check refuses what the tags cannot, naming each variable.
func (c Config) Check() error {
	var errs []error
	// envconfig's required accepts a variable that is set but empty.
	if c.SourcesFile == "" {
		errs = append(errs, errors.New("WEBHOOK_SOURCES_FILE is empty: set it to the mounted sources file"))
	}
	if c.PublishTimeout <= 0 {
		errs = append(errs, fmt.Errorf("WEBHOOK_PUBLISH_TIMEOUT (%s) must be positive", c.PublishTimeout))
	}
	if c.RetryAfter <= 0 {
		errs = append(errs, fmt.Errorf("WEBHOOK_RETRY_AFTER (%s) must be positive", c.RetryAfter))
	}
	return errors.Join(errs...)
}

// claimer is the dedup seam: *dedup.Claims in production.
type claimer interface {
	Claim(ctx context.Context, key string, lease time.Duration) (dedup.Claim, dedup.Outcome, error)
	Complete(ctx context.Context, c dedup.Claim, ttl time.Duration) (bool, error)
	Release(ctx context.Context, c dedup.Claim) (bool, error)
	Close()
}

// publisher is the Broker seam: *sink.Sender in production.
type publisher interface {
	Send(ctx context.Context, e event.Event) error
}

// state is everything Start builds; Handle reads it through one atomic pointer.
type state struct {
	cfg     Config
	sources map[string]*source.Source
	claims  claimer
	pub     publisher
	lease   time.Duration
}

// Function is the webhook intake.
type Function struct {
	state atomic.Pointer[state]
	log   *slog.Logger
	now   func() time.Time
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function {
	return &Function{log: slog.Default(), now: time.Now}
}

// Start reads the configuration, refusing a bad value, validates the sources file and opens
// Redis and the sink.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	if err := funcstart.ReadConfig("webhook", &cfg); err != nil {
		return err
	}
	srcs, err := source.Load(cfg.SourcesFile, os.LookupEnv)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	pub, err := sink.New(cfg.Sink, cfg.PublishTimeout)
	if err != nil {
		return fmt.Errorf("webhook: %w", err)
	}
	claims := dedup.New(rdb)
	if err := claims.Preload(ctx); err != nil {
		// Not fatal: Redis may come up later, and Ready reports it until then.
		f.log.Warn("preloading dedup scripts", "error", err)
	}
	f.install(cfg, srcs, claims, pub, rdb)
	names := make([]string, 0, len(srcs))
	for n := range srcs {
		names = append(names, n)
	}
	f.log.Info("webhook started", "sources", names, "sink", cfg.Sink)
	return nil
}

func (f *Function) install(cfg Config, srcs map[string]*source.Source, claims claimer, pub publisher, rdb *redis.Client) {
	f.state.Store(&state{
		cfg: cfg, sources: srcs, claims: claims, pub: pub,
		// The claim must outlive any publish attempt (or a slow publish could be duplicated by a
		// retry), yet expire soon after a crash so the sender's retry is not blocked for long.
		lease: cfg.PublishTimeout + 5*time.Second,
	})
	var c redis.UniversalClient // a nil interface, not a nil *redis.Client, when tests stub the claims
	if rdb != nil {
		c = rdb
	}
	f.Started(c)
}

// Stop closes the dedup pipelines and Redis.
func (f *Function) Stop(context.Context) error {
	if st := f.state.Load(); st != nil {
		st.claims.Close()
	}
	return f.Close()
}

// Handle verifies, deduplicates and publishes one delivery: POST /<source>.
// The intake is a span continuing the sender's traceparent when it sent one.
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	r, span := tracing.StartRequest(r, "webhook intake")
	defer span.End()
	st := f.state.Load()
	if st == nil {
		unavailable(w, 5*time.Second, "starting")
		return
	}
	name := strings.TrimPrefix(r.URL.Path, "/")
	src, ok := st.sources[name]
	if !ok {
		http.Error(w, "unknown webhook source", http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "method not allowed: POST only", http.StatusMethodNotAllowed)
		return
	}
	log := &requestLog{logger: f.log}
	log.attrs = append(log.attrsBuf[:0], slog.String("source", name))

	body, err := readBody(w, r, src.MaxBodyBytes)
	if err != nil {
		var tooLarge *http.MaxBytesError
		if errors.As(err, &tooLarge) {
			log.Warn("body over the limit", slog.Int64("limit", src.MaxBodyBytes), slog.Int64("contentLength", r.ContentLength))
			// Closing stops net/http from draining the rest of the body for keep-alive.
			w.Header().Set("Connection", "close")
			http.Error(w, fmt.Sprintf("body larger than %d bytes", src.MaxBodyBytes), http.StatusRequestEntityTooLarge)
			return
		}
		log.Warn("reading body", slog.Any("error", err))
		http.Error(w, "reading body failed", http.StatusBadRequest)
		return
	}

	if err := src.Verifier.Verify(r.Header, body, f.now()); err != nil {
		// The body says nothing about which check failed; the log does.
		log.Warn("delivery refused", slog.String("reason", err.Error()), slog.String("remote", r.RemoteAddr))
		http.Error(w, "unauthorized", http.StatusUnauthorized)
		return
	}
	d, err := src.Describe(r.Header, body)
	if err != nil {
		log.Warn("verified delivery unusable", slog.String("reason", err.Error()))
		http.Error(w, "bad request: "+err.Error(), http.StatusBadRequest)
		return
	}
	if d.Challenge != "" {
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(map[string]string{"challenge": d.Challenge})
		return
	}
	log.attrs = logging.AppendEventAttrs(r.Context(), log.attrs, d.ID, d.Type)
	f.publishOnce(w, r, st, src, d, body, log)
}

// publishOnce claims the delivery, publishes it and records the outcome. The work is detached
// from the request's context: a sender that hangs up mid-publish must not leave a half-done
// claim behind.
func (f *Function) publishOnce(w http.ResponseWriter, r *http.Request, st *state, src *source.Source, d delivery.Delivery, body []byte, log *requestLog) {
	ctx := context.WithoutCancel(r.Context())
	// Redis calls are bounded like the publish, so a stuck Redis turns into a 503, not a hang.
	redisCtx, cancelRedis := context.WithTimeout(ctx, st.cfg.PublishTimeout)
	defer cancelRedis()
	claim, outcome, err := st.claims.Claim(redisCtx, dedup.Key(src.Name, d.ID), st.lease)
	if err != nil {
		log.Error("dedup claim failed", slog.Any("error", err))
		unavailable(w, st.cfg.RetryAfter, "deduplication store unavailable")
		return
	}
	switch outcome {
	case dedup.Done:
		log.Info("duplicate delivery, already published")
		w.WriteHeader(http.StatusOK)
		_, _ = io.WriteString(w, "duplicate: already accepted\n")
		return
	case dedup.InFlight:
		// Answering 2xx here could lie (the publish in flight may still fail); publishing again
		// would duplicate. So the sender is asked to come back once the first attempt is decided.
		log.Info("duplicate delivery while the first is being published")
		w.Header().Set("Retry-After", seconds(st.cfg.PublishTimeout))
		http.Error(w, "delivery is being processed; retry later", http.StatusConflict)
		return
	}

	err = f.publish(ctx, st, f.events(r, src, d, body))
	if err != nil {
		log.Error("publish to broker failed", slog.Any("error", err), slog.Int("status", sink.StatusCode(err)))
		relCtx, cancelRel := context.WithTimeout(ctx, st.cfg.PublishTimeout)
		ok, rerr := st.claims.Release(relCtx, claim)
		cancelRel()
		if rerr != nil || !ok {
			// The lease expires on its own; until then retries get 409 and come back.
			log.Error("releasing dedup claim", slog.Any("error", rerr), slog.Bool("released", ok))
		}
		unavailable(w, st.cfg.RetryAfter, "broker unavailable")
		return
	}
	doneCtx, cancelDone := context.WithTimeout(ctx, st.cfg.PublishTimeout)
	ok, err := st.claims.Complete(doneCtx, claim, src.DedupTTL)
	cancelDone()
	if err != nil || !ok {
		// The event is safe in the Broker, so the answer is still 2xx; a retry after the lease
		// expires could publish it again, which consumers absorb by (source, id).
		log.Error("marking delivery done", slog.Any("error", err), slog.Bool("completed", ok))
	}
	log.Info("delivery published")
	w.WriteHeader(http.StatusAccepted)
	_, _ = io.WriteString(w, "accepted\n")
}

// events are what a delivery publishes: the body as received, or one event per part.
func (f *Function) events(r *http.Request, src *source.Source, d delivery.Delivery, body []byte) []event.Event {
	newEvent := func(id, typ, subject string) event.Event {
		e := cloudevents.NewEvent()
		e.SetID(id)
		e.SetType(typ)
		e.SetSource(SourcePrefix + src.Name)
		if subject != "" {
			e.SetSubject(subject)
		}
		e.SetTime(f.now())
		return e
	}
	if len(d.Parts) > 0 {
		out := make([]event.Event, 0, len(d.Parts))
		for _, p := range d.Parts {
			e := newEvent(p.ID, p.Type, p.Subject)
			if !p.Time.IsZero() {
				e.SetTime(p.Time)
			}
			_ = e.SetData(cloudevents.ApplicationJSON, p.Data)
			out = append(out, e)
		}
		return out
	}
	e := newEvent(d.ID, d.Type, d.Subject)
	contentType := r.Header.Get("Content-Type")
	if contentType == "" {
		contentType = "application/octet-stream"
	}
	_ = e.SetData(contentType, body) // []byte is stored as is, never re-encoded.
	return []event.Event{e}
}

// publish sends the events in order, all within one publish timeout (so the dedup lease,
// sized for one publish, still outlives it), and stops at the first failure: the sender's
// retry publishes them all again under the same ids.
func (f *Function) publish(ctx context.Context, st *state, events []event.Event) error {
	pubCtx, cancel := context.WithTimeout(ctx, st.cfg.PublishTimeout)
	defer cancel()
	for i, e := range events {
		if err := st.pub.Send(pubCtx, e); err != nil {
			return fmt.Errorf("event %d of %d (%s): %w", i+1, len(events), e.ID(), err)
		}
	}
	return nil
}

// readBody reads at most limit bytes. A declared Content-Length over the limit is refused
// before reading anything; otherwise MaxBytesReader stops at the limit and closes the
// connection, so an oversized body is never read to its end.
func readBody(w http.ResponseWriter, r *http.Request, limit int64) ([]byte, error) {
	if r.ContentLength > limit {
		return nil, &http.MaxBytesError{Limit: limit}
	}
	rd := http.MaxBytesReader(w, r.Body, limit)
	var buf bytes.Buffer
	if r.ContentLength > 0 {
		buf.Grow(int(r.ContentLength))
	}
	if _, err := buf.ReadFrom(rd); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// requestLog writes the lines about one request. The attributes every line carries (the source,
// then the event and trace ids once the delivery is described) are put on each record as its
// first attributes, which writes the same line as a logger made with slog's With, but formats
// them only for a line that is written rather than ahead, on every request.
type requestLog struct {
	logger *slog.Logger
	// attrs has room for the source, the event id and type, the trace and span ids.
	attrs    []slog.Attr
	attrsBuf [5]slog.Attr
}

func (l *requestLog) Info(msg string, attrs ...slog.Attr)  { l.log(slog.LevelInfo, msg, attrs) }
func (l *requestLog) Warn(msg string, attrs ...slog.Attr)  { l.log(slog.LevelWarn, msg, attrs) }
func (l *requestLog) Error(msg string, attrs ...slog.Attr) { l.log(slog.LevelError, msg, attrs) }

func (l *requestLog) log(level slog.Level, msg string, attrs []slog.Attr) {
	ctx := context.Background() // as Logger.Info and friends log
	if !l.logger.Enabled(ctx, level) {
		return
	}
	l.logger.LogAttrs(ctx, level, msg, append(l.attrs[:len(l.attrs):len(l.attrs)], attrs...)...)
}

func unavailable(w http.ResponseWriter, retryAfter time.Duration, msg string) {
	w.Header().Set("Retry-After", seconds(retryAfter))
	http.Error(w, msg+"; retry later", http.StatusServiceUnavailable)
}

// seconds renders a Retry-After value: whole seconds, at least 1.
func seconds(d time.Duration) string {
	return strconv.Itoa(int(math.Max(1, math.Ceil(d.Seconds()))))
}
