// Package main is the process manager function: it moves Redis-backed process instances one
// atomic step per event and publishes the commands each step emits.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/groupcommit"
	"github.com/knfaas/knfaas/internal/function/placeholder"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Config is read once at start; each default is in its tag, and Check refuses a bad value.
type Config struct {
	// DefinitionsDir holds the process definitions, one *.yaml per process (a mounted ConfigMap).
	DefinitionsDir string `envconfig:"PROCESS_DEFINITIONS_DIR" default:"/etc/knfaas/process"`
	// Owner names this process manager in the deadlines it schedules; its timer Trigger filters
	// on it. Defaults to K_SERVICE (the Knative Service name), else "process".
	Owner string `envconfig:"PROCESS_OWNER"`
	// Retention keeps finished instances, their timelines and their outbox this long; positive.
	Retention time.Duration `envconfig:"PROCESS_RETENTION" default:"168h"`
	// TimelineMax caps each instance's timeline; at least 1.
	TimelineMax int `envconfig:"PROCESS_TIMELINE_MAX" default:"500"`
	// SendTimeout bounds each publish to K_SINK; positive.
	SendTimeout time.Duration `envconfig:"PROCESS_SEND_TIMEOUT" default:"10s"`
	// AckInterval is how long a published outbox entry waits to be removed together with others,
	// in one pipeline per batch; positive.
	AckInterval time.Duration `envconfig:"PROCESS_ACK_INTERVAL" default:"50ms"`
	// Sink is where commands are published (the Broker, set by the SinkBinding).
	Sink string `envconfig:"K_SINK" required:"true"`
	// Service is set by Knative Serving.
	Service string `envconfig:"K_SERVICE"`
	// SigningKey verifies the signatures of human task decisions (the tasks-signing Secret, key
	// current, shared with functions/tasks). Required when a definition has a task step.
	SigningKey string `envconfig:"TASKS_SIGNING_KEY"`
	// SigningKeyPrevious also verifies, during a key rotation (key previous).
	SigningKeyPrevious string `envconfig:"TASKS_SIGNING_KEY_PREVIOUS"`
}

// Function is the process manager.
type Function struct {
	rdb    *redis.Client
	engine *process.Engine
	send   func(context.Context, event.Event) error
	acks   *acker
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the definitions, refusing to start on any error (naming the process and step), and
// on a signing key that still holds a template placeholder (CHANGE-ME).
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	rdb, err := funcstart.Open("process", &cfg)
	if err != nil {
		return err
	}
	s, err := sink.New(cfg.Sink, cfg.SendTimeout)
	if err != nil {
		return fmt.Errorf("process: %w", err)
	}
	return f.start(ctx, cfg, rdb, s.Send)
}

// Check refuses a signing key that still holds a template placeholder and a bound of zero or
// less (which the engine would replace by its own default, or the acker's ticker refuse), naming
// the variable.
func (c Config) Check() error {
	for _, v := range []struct{ what, value string }{
		{"TASKS_SIGNING_KEY (Secret tasks-signing, key current)", c.SigningKey},
		{"TASKS_SIGNING_KEY_PREVIOUS (Secret tasks-signing, key previous)", c.SigningKeyPrevious},
	} {
		if err := placeholder.Check(v.what, v.value); err != nil {
			return fmt.Errorf("refusing to start: %w", err)
		}
	}
	var errs []error
	for _, d := range []struct {
		name  string
		value time.Duration
	}{{"PROCESS_RETENTION", c.Retention}, {"PROCESS_SEND_TIMEOUT", c.SendTimeout}, {"PROCESS_ACK_INTERVAL", c.AckInterval}} {
		if d.value <= 0 {
			errs = append(errs, fmt.Errorf("%s (%s) must be positive", d.name, d.value))
		}
	}
	if c.TimelineMax < 1 {
		errs = append(errs, fmt.Errorf("PROCESS_TIMELINE_MAX (%d) must be at least 1", c.TimelineMax))
	}
	return errors.Join(errs...)
}

func (f *Function) start(ctx context.Context, cfg Config, rdb *redis.Client, send func(context.Context, event.Event) error) error {
	defs, err := process.LoadDir(cfg.DefinitionsDir)
	if err != nil {
		return fmt.Errorf("process: refusing to start: %w", err)
	}
	var keys *process.SigningKeys
	switch {
	case cfg.SigningKey != "":
		if keys, err = process.NewSigningKeys(cfg.SigningKey, cfg.SigningKeyPrevious); err != nil {
			return fmt.Errorf("process: refusing to start: TASKS_SIGNING_KEY: %w", err)
		}
	case defs.HasTasks():
		return fmt.Errorf("process: refusing to start: TASKS_SIGNING_KEY is required to verify the decisions of human task steps (processes %v)", defs.Names())
	}
	owner := cfg.Owner
	if owner == "" {
		owner = cfg.Service
	}
	f.rdb = rdb
	f.send = send
	f.engine = process.NewEngine(rdb, defs, process.Options{Owner: owner, Retention: cfg.Retention, TimelineMax: cfg.TimelineMax, Keys: keys})
	f.acks = newAcker(rdb, cfg.AckInterval)
	if err := rdb.Ping(ctx).Err(); err != nil {
		slog.Warn("redis not reachable yet; readiness will follow it", "err", err)
	}
	slog.Info("process manager started", "processes", defs.Names(), "owner", owner)
	f.Started(rdb)
	return nil
}

// Stop flushes pending acknowledgements and closes Redis.
func (f *Function) Stop(ctx context.Context) error {
	// Refuse new events first, so none adds an acknowledgement after the flush.
	f.Stopping()
	if f.acks != nil {
		f.acks.close()
	}
	return f.Close()
}

// Handle applies one event (a start event, a reply, a fired deadline) and publishes what the
// step emitted. It never replies with an event: a step can emit several, and all go through K_SINK.
// The step is a span continuing the event's trace, and so are the commands it publishes.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	return tracing.HandleEvent(ctx, e, f.handle)
}

func (f *Function) handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.Running() {
		return nil, errors.New("process manager is starting")
	}
	ev := process.EventFrom(e)
	res, err := f.engine.Apply(ctx, ev)
	switch {
	case errors.Is(err, process.ErrBadEvent):
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "%s", err.Error())
	case errors.Is(err, process.ErrForbidden):
		slog.Warn("refused an event without authority", "type", ev.Type, "id", ev.ID, "source", ev.Source, "subject", ev.Subject, "err", err)
		return nil, cloudevents.NewHTTPResult(http.StatusForbidden, "%s", err.Error())
	}
	if err != nil {
		return nil, err
	}
	acked := make([]process.Acked, 0, len(res.Outbox))
	for _, em := range res.Outbox {
		a := em.Acked(ev.Subject)
		if f.acks.published(a) {
			continue // published by this replica; its removal from the outbox is in flight
		}
		if err := f.send(ctx, em.Event()); err != nil {
			// Leave the rest in the outbox: the broker redelivers this event, the step is a
			// duplicate by then, and the outbox is offered again.
			f.acks.add(ctx, acked...)
			return nil, fmt.Errorf("publishing %s %s: %w", em.Type, em.ID, err)
		}
		acked = append(acked, a)
	}
	f.acks.add(ctx, acked...)
	switch res.Status {
	case process.StatusUnknown, process.StatusStale, process.StatusConflict:
		// 422, not 404/409: Knative retries those, and no retry can make this event apply.
		return nil, cloudevents.NewHTTPResult(http.StatusUnprocessableEntity, "%s: %s", res.Status, res.Message)
	}
	return nil, nil
}

// acker removes published entries from instance outboxes in batches, off the request path: an
// entry left behind by a crash is only published again, with the same id.
type acker struct {
	rdb     *redis.Client
	batches *groupcommit.Batcher[process.Acked]
	mu      sync.Mutex
	// inFlight holds the entries published and not yet removed, or removed less than ackGrace
	// ago.
	inFlight map[process.Acked]struct{}
	// removed holds batches already removed from the outboxes; they stay in inFlight for
	// ackGrace, because a transition that read its outbox just before the removal still
	// returns them.
	removed []ackedBatch
}

// ackedBatch is one batch of entries removed from the outboxes at a time.
type ackedBatch struct {
	at   time.Time
	keys []process.Acked
}

// ackGrace is how long a removed entry is still reported as published.
const ackGrace = time.Second

// maxAckBatch bounds the entries one pipeline removes; a full batch goes without waiting for
// the interval.
const maxAckBatch = 1024

// newAcker returns a running acker that removes entries every interval (or when a batch is full).
func newAcker(rdb *redis.Client, every time.Duration) *acker {
	a := &acker{rdb: rdb, inFlight: map[process.Acked]struct{}{}}
	a.batches = groupcommit.New(a.flush, groupcommit.Options{MaxBatch: maxAckBatch, Linger: every, QueueLimit: 16 * maxAckBatch})
	go a.batches.Run(context.Background(), 1)
	return a
}

// add queues published entries for removal. An entry it cannot queue (ctx ended while the
// queue was full, or the acker is closed) stays in the outbox and is published again.
func (a *acker) add(ctx context.Context, acks ...process.Acked) {
	if len(acks) == 0 {
		return
	}
	a.mu.Lock()
	a.forgetRemoved()
	for _, k := range acks {
		a.inFlight[k] = struct{}{}
	}
	a.mu.Unlock()
	for i, k := range acks {
		if _, err := a.batches.Submit(ctx, k); err != nil {
			a.mu.Lock()
			for _, k := range acks[i:] {
				delete(a.inFlight, k)
			}
			a.mu.Unlock()
			return
		}
	}
}

func (a *acker) published(k process.Acked) bool {
	a.mu.Lock()
	defer a.mu.Unlock()
	a.forgetRemoved()
	_, ok := a.inFlight[k]
	return ok
}

// forgetRemoved drops from inFlight the batches removed ackGrace ago or earlier. a.mu is held.
func (a *acker) forgetRemoved() {
	now := time.Now()
	for len(a.removed) > 0 && now.Sub(a.removed[0].at) >= ackGrace {
		for _, k := range a.removed[0].keys {
			delete(a.inFlight, k)
		}
		a.removed = a.removed[1:]
	}
}

// flush removes one batch from the outboxes.
func (a *acker) flush(ctx context.Context, batch []process.Acked) error {
	a.mu.Lock()
	a.forgetRemoved()
	a.mu.Unlock()
	err := process.Ack(ctx, a.rdb, batch...)
	a.mu.Lock()
	defer a.mu.Unlock()
	if err != nil {
		// Entries stay in the outbox and are published again with the same ids; harmless.
		slog.Warn("acknowledging published commands", "err", err)
		for _, k := range batch {
			delete(a.inFlight, k)
		}
		return nil
	}
	a.removed = append(a.removed, ackedBatch{at: time.Now(), keys: slices.Clone(batch)})
	return nil
}

// close removes the entries added before it and stops the acker. It may be called more than once.
func (a *acker) close() { a.batches.Close() }
