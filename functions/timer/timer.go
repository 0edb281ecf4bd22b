// Package main is the timer function: on every PingSource tick it fires the deadlines that are
// due as dev.knfaas.timer.fired events.
package main

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/trace"

	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/logging"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// TypePing is the type of the PingSource events that tick the timer.
const TypePing = "dev.knative.sources.ping"

// Source is the source of the events the timer emits.
const Source = "/knfaas/timer"

// MaxBatch bounds TIMER_BATCH: one Redis step returns its whole batch in one script reply.
const MaxBatch = 2000

// Config is read once at start; each default is in its tag, and Check refuses a bad value.
type Config struct {
	// Batch is how many due deadlines one Redis step takes: 1 to MaxBatch.
	Batch int `envconfig:"TIMER_BATCH" default:"1000"`
	// Concurrency is how many fired events are sent to K_SINK at once: at least 1.
	Concurrency int `envconfig:"TIMER_CONCURRENCY" default:"64"`
	// SendTimeout bounds each send: positive.
	SendTimeout time.Duration `envconfig:"TIMER_SEND_TIMEOUT" default:"10s"`
	// Sink is the Broker (set by the SinkBinding).
	Sink string `envconfig:"K_SINK" required:"true"`
}

// Check refuses values out of range, naming each variable.
func (c Config) Check() error {
	var errs []error
	if c.Batch < 1 || c.Batch > MaxBatch {
		errs = append(errs, fmt.Errorf("TIMER_BATCH (%d) must be from 1 to %d", c.Batch, MaxBatch))
	}
	if c.Concurrency < 1 {
		errs = append(errs, fmt.Errorf("TIMER_CONCURRENCY (%d) must be at least 1", c.Concurrency))
	}
	if c.SendTimeout <= 0 {
		errs = append(errs, fmt.Errorf("TIMER_SEND_TIMEOUT (%s) must be positive", c.SendTimeout))
	}
	return errors.Join(errs...)
}

// Function fires due deadlines.
type Function struct {
	cfg  Config
	rdb  *redis.Client
	send func(context.Context, event.Event) error
	now  func() time.Time
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{now: time.Now} }

// Start reads the configuration, refusing a bad value, and opens Redis and the sink.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	rdb, err := funcstart.Open("timer", &cfg)
	if err != nil {
		return err
	}
	s, err := sink.New(cfg.Sink, cfg.SendTimeout)
	if err != nil {
		return fmt.Errorf("timer: %w", err)
	}
	f.start(cfg, rdb, s.Send)
	return nil
}

func (f *Function) start(cfg Config, rdb *redis.Client, send func(context.Context, event.Event) error) {
	f.cfg, f.rdb, f.send = cfg, rdb, send
	f.Started(rdb)
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error { return f.Close() }

// Handle fires every deadline due at or before the tick's slot time (the event's time, which
// PingSource sets to the cron slot; never later than now). Deadlines are moved to an outbox
// atomically before they are sent, so a tick delivered twice finds nothing new to fire, and a
// tick that crashed mid-way leaves its deadlines in the outbox for the next tick to send again.
//
// The tick is a span continuing its trace; the deadlines it fires continue it.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.Running() {
		return nil, errors.New("timer is starting")
	}
	if e.Type() != TypePing {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "timer accepts only %s events, not %s", TypePing, e.Type())
	}
	cutoff := f.now()
	if t := e.Time(); !t.IsZero() && t.Before(cutoff) {
		cutoff = t
	}
	n, err := f.Tick(ctx, cutoff)
	if err != nil {
		return nil, err
	}
	if n > 0 {
		logging.ForEvent(ctx, e).Info("fired deadlines", "count", n, "cutoff", cutoff)
	}
	return nil, nil
}

// Tick sends leftovers of earlier ticks, then fires every deadline due at or before cutoff,
// batch by batch, and returns how many it sent.
func (f *Function) Tick(ctx context.Context, cutoff time.Time) (int, error) {
	left, err := deadline.Pending(ctx, f.rdb, int64(f.cfg.Batch))
	if err != nil {
		return 0, err
	}
	sent, err := f.fire(ctx, left)
	if err != nil {
		return sent, err
	}
	for {
		batch, err := deadline.Take(ctx, f.rdb, cutoff, f.cfg.Batch)
		if err != nil {
			return sent, err
		}
		n, err := f.fire(ctx, batch)
		sent += n
		if err != nil || len(batch) < f.cfg.Batch {
			return sent, err
		}
	}
}

// fire sends fired deadlines concurrently and acknowledges those that were accepted.
func (f *Function) fire(ctx context.Context, batch []deadline.Fired) (int, error) {
	if len(batch) == 0 {
		return 0, nil
	}
	var (
		mu      sync.Mutex
		ok      = make([]string, 0, len(batch))
		firstEr error
		wg      sync.WaitGroup
		work    = make(chan deadline.Fired)
	)
	for range min(f.cfg.Concurrency, len(batch)) {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for d := range work {
				err := f.fireOne(ctx, d)
				mu.Lock()
				if err != nil {
					if firstEr == nil {
						firstEr = fmt.Errorf("sending fired deadline %s: %w", d.ID, err)
					}
				} else {
					ok = append(ok, d.ID)
				}
				mu.Unlock()
			}
		}()
	}
	for _, d := range batch {
		work <- d
	}
	close(work)
	wg.Wait()
	if err := deadline.Ack(ctx, f.rdb, ok...); err != nil {
		return len(ok), err
	}
	return len(ok), firstEr
}

// fireOne sends the event of one due deadline as the span "fire deadline": a child of the
// tick's span, so the fired event continues the tick's trace, with a link to the span that
// scheduled the deadline (a process step, in its own trace), when the deadline kept it.
func (f *Function) fireOne(ctx context.Context, d deadline.Fired) error {
	opts := []trace.SpanStartOption{trace.WithAttributes(
		attribute.String(AttrDeadlineID, d.ID), attribute.String(AttrDeadlineSubject, d.Payload.Subject))}
	if scheduled := tracing.SpanContextOf(d.Payload.TraceParent); scheduled.IsValid() {
		opts = append(opts, trace.WithLinks(trace.Link{SpanContext: scheduled, Attributes: []attribute.KeyValue{attribute.String(AttrLinkKind, "scheduled-by")}}))
	}
	ctx, span := tracing.Tracer().Start(ctx, "fire deadline", opts...)
	err := f.send(ctx, FiredEvent(d))
	tracing.End(span, err)
	return err
}

// Attributes of the "fire deadline" span and its link.
const (
	AttrDeadlineID      = "knfaas.deadline.id"
	AttrDeadlineSubject = "knfaas.deadline.subject"
	AttrLinkKind        = "knfaas.link.kind"
)

// FiredEvent is the event for a due deadline: its id is the deadline id, so sending it again
// (a retried tick) is the same event to every consumer.
func FiredEvent(d deadline.Fired) event.Event {
	e := cloudevents.NewEvent()
	e.SetID(d.ID)
	e.SetType(deadline.TypeFired)
	e.SetSource(Source)
	e.SetSubject(d.Payload.Subject)
	e.SetTime(time.UnixMilli(d.Payload.Due).UTC())
	if d.Payload.Owner != "" {
		e.SetExtension("knfaasowner", d.Payload.Owner)
	}
	if d.Payload.Command != "" {
		e.SetExtension("knfaascommand", d.Payload.Command)
	}
	_ = e.SetData(cloudevents.ApplicationJSON, []byte(d.Raw))
	return e
}
