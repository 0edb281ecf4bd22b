package broker

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"slices"
	"strconv"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/transformer"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"k8s.io/apimachinery/pkg/types"
	knbroker "knative.dev/eventing/pkg/broker"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/eventing/pkg/kncloudevents/attributes"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// TriggerExtension names, on a dead letter, the trigger whose delivery failed
// ("<namespace>/<name>"). Knative sets no such attribute; it is added only to dead letters.
const TriggerExtension = "knfaastrigger"

// ConsumerName is the name `knfaas up` reads under in every consumer group (ConsumerOptions.Name
// when unset). It is stable across restarts so that a restarted runtime finds the entries it
// had read but not acknowledged.
const ConsumerName = "knfaas"

// Trigger is what a consumer needs of a Knative Trigger, resolved to addresses.
type Trigger struct {
	Namespace string
	Name      string
	Broker    string
	// Filter decides which events are delivered; nil delivers all.
	Filter     eventfilter.Filter
	Subscriber duckv1.Addressable
	// DeadLetter receives events whose delivery failed after retries; nil drops them, as Knative does.
	DeadLetter *duckv1.Addressable
	Retry      kncloudevents.RetryConfig
	// ReplyURL is the broker ingress URL replies are sent to.
	ReplyURL string
	// OIDCServiceAccount, when set, is the Trigger's OIDC identity: deliveries to a subscriber or
	// dead-letter sink with an audience carry a token of it for that audience, as Knative's
	// brokers send (the dispatcher's token provider requests it).
	OIDCServiceAccount *types.NamespacedName
}

// sendOptions are the options of every delivery of t, before the per-delivery ones.
func (t *Trigger) sendOptions(opts ...kncloudevents.SendOption) []kncloudevents.SendOption {
	if t.OIDCServiceAccount != nil {
		opts = append(opts, kncloudevents.WithOIDCAuthentication(t.OIDCServiceAccount))
	}
	return opts
}

// Key is namespace/name.
func (t *Trigger) Key() string { return t.Namespace + "/" + t.Name }

// Group is the consumer group of the trigger on its broker's stream.
func (t *Trigger) Group() string { return "trigger:" + t.Key() }

// ConsumerOptions tune delivery. A field left zero takes its default.
type ConsumerOptions struct {
	// Parallelism bounds deliveries in flight per trigger: DefaultParallelism when <= 0.
	Parallelism int
	// RedeliverAfter is how long an entry may stay pending before it is delivered again (after a
	// failure of both subscriber and dead-letter sink, or a crash): DefaultRedeliverAfter when <= 0.
	RedeliverAfter time.Duration
	// Block is how long one read waits for new entries.
	Block time.Duration
	// ShutdownGrace is how long deliveries in flight may go on once Run's context ends; after
	// it they are cut off and handed back: left pending, redelivered after a restart.
	ShutdownGrace time.Duration
	// MaxRounds is how many rounds (a delivery with its retries, then the dead-letter sink with
	// its retries) may fail for one event before it is parked: DefaultMaxRounds when 0.
	MaxRounds int
	// Parker takes events that can never be delivered. Without one they stay pending.
	Parker Parker
	// Name is this process's consumer in every consumer group: ConsumerName when empty.
	// Replicas sharing a group each need their own (a dispatcher uses its pod name); the
	// entries a replica read but never acknowledged are claimed by the others after
	// RedeliverAfter, so a replica that never comes back loses nothing.
	Name string
	// ExternalGroups says the consumer groups are created and deleted by someone else (the
	// Broker class controller, which creates a Trigger's group before it marks the Trigger Ready
	// and destroys it when the Trigger is deleted): Run neither creates a missing group nor
	// recreates one that vanished, it waits for it, so a replica still running a deleted
	// Trigger cannot bring its group back and hold the stream's trim forever.
	ExternalGroups bool
}

// Defaults of ConsumerOptions; `knfaas up` uses them for its flags.
const (
	// DefaultParallelism is ConsumerOptions.Parallelism when unset.
	DefaultParallelism = 128
	// DefaultRedeliverAfter is ConsumerOptions.RedeliverAfter when unset.
	DefaultRedeliverAfter = 30 * time.Second
	// DefaultMaxRounds is the number of failed rounds after which an event is parked.
	DefaultMaxRounds = 3
)

// MaxParkedResponseBytes bounds the response bodies a Parked event keeps.
const MaxParkedResponseBytes = 4 << 10

// roundsTTL is how long the failed rounds of a Trigger's pending events are remembered after the
// last one: a runtime stopped for longer starts counting again from zero.
const roundsTTL = 7 * 24 * time.Hour

// Reasons an event is parked.
const (
	// ParkUndeliverable: MaxRounds rounds in which both the subscriber and the dead-letter sink
	// failed.
	ParkUndeliverable = "undeliverable"
	// ParkUndecodable: the stream entry holds no event this runtime can read.
	ParkUndecodable = "undecodable"
)

// Parker takes an event off a Trigger that can never deliver it, where operators see it. The
// entry is acknowledged only after Park returns nil; otherwise it stays pending and is parked
// again on a later round. Park may therefore see the same entry more than once.
type Parker interface {
	Park(ctx context.Context, p Parked) error
}

// Parked is an event taken off a Trigger, with everything known about why.
type Parked struct {
	// Trigger and Broker are namespace/name.
	Trigger, Broker string
	// EntryID is the stream entry id (its first part is the acceptance time in milliseconds).
	EntryID string
	// Entry is the stream entry's fields as stored (see EncodeEntry): nothing is lost even when
	// the entry cannot be decoded.
	Entry map[string]string
	// Event is the decoded event, nil when Reason is ParkUndecodable.
	Event *cloudevents.Event
	// Reason is ParkUndeliverable or ParkUndecodable; Detail says more.
	Reason, Detail string
	// SubscriberURL is where the event was delivered; SubscriberCode the last HTTP status (-1
	// without a response), SubscriberBody the last response body (at most
	// MaxParkedResponseBytes), SubscriberError the last error.
	SubscriberURL   string
	SubscriberCode  int
	SubscriberBody  []byte
	SubscriberError string
	// DeadLetterURL is the Trigger's dead-letter sink, with its last status, body and error.
	DeadLetterURL   string
	DeadLetterCode  int
	DeadLetterBody  []byte
	DeadLetterError string
	// Rounds is the number of failed rounds.
	Rounds int
	// Time is when the event was parked.
	Time time.Time
}

// Consumer delivers one trigger's events.
type Consumer struct {
	t          *Trigger
	rdb        redis.UniversalClient
	dispatcher *kncloudevents.Dispatcher
	log        *slog.Logger
	metrics    *metrics.Runtime
	opts       ConsumerOptions
	stream     string
	brokerKey  string
	roundsKey  string

	// deliverCtx outlives Run's context by ShutdownGrace.
	deliverCtx context.Context

	// replyBase is the parsed ReplyURL, nil when it cannot take the TTL parameter as the
	// whole query (deliver then parses the URL per event).
	replyBase *apis.URL
	// The trigger's metric series, looked up once instead of per event.
	delivered, filtered, retried func() prometheus.Counter
	latency                      func() prometheus.Observer

	sem      chan struct{}
	mu       sync.Mutex
	inflight map[string]bool
	wg       sync.WaitGroup
	// Deliveries run on workers that are reused while entries keep coming (see work). idle
	// (under mu) holds the workers waiting for an entry, the one that finished last on top;
	// live (under mu) counts the workers that are not retired; workers waits for their
	// goroutines to return; retire is closed once Run dispatches no more, and the idle workers
	// exit.
	idle       []*worker
	live       int
	workers    sync.WaitGroup
	retire     chan struct{}
	workerIdle time.Duration
	// onWorkerStart, when set (by tests), is called with live after a worker is started.
	onWorkerStart func(live int)
	// reader is the stream's shared reader while Run runs; acking counts the entries handed
	// to its acknowledgements and not yet sent.
	reader *streamReader
	acking sync.WaitGroup
}

// NewConsumer returns a consumer for t. It works on its own copy of t and never writes to t.
func NewConsumer(t *Trigger, rdb redis.UniversalClient, d *kncloudevents.Dispatcher, log *slog.Logger, m *metrics.Runtime, opts ConsumerOptions) *Consumer {
	if opts.Parallelism <= 0 {
		opts.Parallelism = DefaultParallelism
	}
	if opts.RedeliverAfter <= 0 {
		opts.RedeliverAfter = DefaultRedeliverAfter
	}
	if opts.Block <= 0 {
		opts.Block = time.Second
	}
	if opts.ShutdownGrace <= 0 {
		opts.ShutdownGrace = 10 * time.Second
	}
	if opts.MaxRounds <= 0 {
		opts.MaxRounds = DefaultMaxRounds
	}
	if opts.Name == "" {
		opts.Name = ConsumerName
	}
	tc := *t
	stream := StreamKey(t.Namespace, t.Broker)
	brokerKey := t.Namespace + "/" + t.Broker
	c := &Consumer{
		t: &tc, rdb: rdb, dispatcher: d, log: log.With("trigger", t.Key(), "broker", brokerKey), metrics: m, opts: opts,
		stream: stream, brokerKey: brokerKey, roundsKey: RoundsKey(stream, tc.Group()),
		sem: make(chan struct{}, opts.Parallelism), inflight: map[string]bool{}, workerIdle: workerIdle,
	}
	if u, err := apis.ParseURL(tc.ReplyURL); err == nil && u != nil && u.RawQuery == "" && u.Fragment == "" && !u.ForceQuery {
		c.replyBase = u
	}
	// Series are created on first use, so a trigger shows only the outcomes it had.
	series := func(v *prometheus.CounterVec) func() prometheus.Counter {
		return sync.OnceValue(func() prometheus.Counter { return v.WithLabelValues(brokerKey, tc.Key()) })
	}
	c.delivered, c.filtered, c.retried = series(m.EventsDelivered), series(m.EventsFiltered), series(m.EventsRetried)
	c.latency = sync.OnceValue(func() prometheus.Observer { return m.DeliveryLatency.WithLabelValues(brokerKey, tc.Key()) })
	return c
}

// replyURL is where the subscriber's reply to an event with this TTL goes: the broker ingress,
// with the TTL to give back to the reply.
func (c *Consumer) replyURL(ttl int32) (*apis.URL, error) {
	query := ReplyTTLParam + "=" + strconv.Itoa(int(ttl))
	if c.replyBase == nil {
		return apis.ParseURL(c.t.ReplyURL + "?" + query)
	}
	u := *c.replyBase
	u.RawQuery = query
	return &u, nil
}

// RoundsKey is the Redis hash counting, per pending entry id, the failed rounds of one
// consumer group. It expires roundsTTL after its last change.
func RoundsKey(stream, group string) string {
	return "knfaas:broker:rounds:" + stream + ":" + group
}

// Run delivers until ctx ends, then waits for deliveries in flight to finish and for their
// acknowledgements to be sent. The consumers of one stream running in a process share its
// reader (see streamReader); each reads and acknowledges in its own consumer group.
func (c *Consumer) Run(ctx context.Context) error {
	c.reader = acquireReader(c)
	defer c.reader.release()
	if !c.opts.ExternalGroups {
		c.reader.serial.Lock()
		err := EnsureGroup(ctx, c.rdb, c.stream, c.t.Group())
		c.reader.serial.Unlock()
		if err != nil {
			return err
		}
	}
	c.retire = make(chan struct{})
	deliverCtx, cancelDeliveries := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDeliveries()
	c.deliverCtx = deliverCtx
	go func() {
		<-ctx.Done()
		sleep(deliverCtx, c.opts.ShutdownGrace)
		cancelDeliveries()
	}()
	// Acknowledgements outlive ctx: deliveries finishing within the grace are acknowledged
	// before the reader is released.
	m := c.reader.join(c)
	var loops sync.WaitGroup
	loops.Add(2)
	go func() { defer loops.Done(); c.reader.pump(ctx, m) }()
	go func() { defer loops.Done(); c.reclaimLoop(ctx) }()
	<-ctx.Done()
	c.reader.leave(m)
	loops.Wait()
	// Nothing dispatches any more: idle workers exit now, busy ones after their delivery.
	close(c.retire)
	c.wg.Wait()
	c.workers.Wait()
	c.acking.Wait()
	return nil
}

// reclaimLoop takes over entries pending longer than RedeliverAfter, whichever consumer of the
// group holds them: deliveries whose subscriber and dead-letter sink both failed, or that a
// crashed runtime or a replica that is gone left behind. The consumers sharing a reader claim
// one at a time (serial), so that they do not each hold a connection.
func (c *Consumer) reclaimLoop(ctx context.Context) {
	interval := c.opts.RedeliverAfter / 2
	for sleep(ctx, interval) {
		start := "0-0"
		for ctx.Err() == nil {
			c.reader.serial.Lock()
			msgs, next, err := c.rdb.XAutoClaim(ctx, &redis.XAutoClaimArgs{
				Stream: c.stream, Group: c.t.Group(), Consumer: c.opts.Name, MinIdle: c.opts.RedeliverAfter, Start: start, Count: 100,
			}).Result()
			c.reader.serial.Unlock()
			if err != nil {
				if ctx.Err() == nil && !errors.Is(err, redis.Nil) {
					c.log.Warn("reclaiming pending events failed", "error", err)
				}
				break
			}
			for _, m := range msgs {
				c.dispatch(ctx, readEntry{msg: m, redelivered: true})
			}
			if next == "0-0" || next == "" {
				break
			}
			start = next
		}
	}
}

func sleep(ctx context.Context, d time.Duration) bool {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-ctx.Done():
		return false
	case <-t.C:
		return true
	}
}

// dispatch starts the delivery of one entry unless it is already being delivered. The delivery
// takes a slot of c.sem and runs on an idle worker, or on a new one when none is idle.
func (c *Consumer) dispatch(ctx context.Context, e readEntry) {
	id := e.msg.ID
	c.mu.Lock()
	if c.inflight[id] {
		c.mu.Unlock()
		return
	}
	c.inflight[id] = true
	c.mu.Unlock()
	select {
	case c.sem <- struct{}{}:
	case <-ctx.Done():
		c.done(id)
		return
	}
	c.wg.Add(1)
	c.mu.Lock()
	if n := len(c.idle); n > 0 {
		w := c.idle[n-1]
		c.idle = c.idle[:n-1]
		c.mu.Unlock()
		w.next <- e
		return
	}
	c.live++
	live := c.live
	c.mu.Unlock()
	c.workers.Add(1)
	go c.work(&worker{next: make(chan readEntry, 1)}, e)
	if c.onWorkerStart != nil {
		c.onWorkerStart(live)
	}
}

// workerIdle is how long a delivery worker waits for its next entry before it exits. A worker
// keeps the stack its deliveries grew (they go deep: the dispatcher, the CloudEvents SDK,
// net/http), where a goroutine per delivery started small and was copied as it grew, for every
// event. A few seconds keep the workers through the gaps of a steady flow of events; after them
// an idle Trigger holds no goroutine for its deliveries.
const workerIdle = 5 * time.Second

// worker is a goroutine running deliveries; next takes its next entry. It is taken off
// Consumer.idle before an entry is sent, so next never holds more than one.
type worker struct {
	next chan readEntry
}

// work runs w's deliveries, starting with e, until w has been idle for workerIdle or Run
// retires the workers. The number of workers never exceeds the capacity of c.sem: a worker
// gives back its delivery's slot only once it is idle, and dispatch starts one only when none
// is idle, so every worker that is not idle holds a slot.
func (c *Consumer) work(w *worker, e readEntry) {
	defer c.workers.Done()
	idle := time.NewTimer(c.workerIdle)
	defer idle.Stop()
	for {
		c.deliverAndAck(e)
		c.mu.Lock()
		c.idle = append(c.idle, w)
		c.mu.Unlock()
		<-c.sem
		c.wg.Done()
		idle.Reset(c.workerIdle)
		select {
		case e = <-w.next:
			continue
		case <-idle.C:
		case <-c.retire:
		}
		if c.retireIdle(w) {
			return
		}
		// A dispatch took w off the idle workers before it could leave: its entry is on the way.
		e = <-w.next
	}
}

// retireIdle takes w off the idle workers and reports whether it was still there.
func (c *Consumer) retireIdle(w *worker) bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	i := slices.Index(c.idle, w)
	if i < 0 {
		return false
	}
	c.idle = slices.Delete(c.idle, i, i+1)
	c.live--
	return true
}

// deliverAndAck delivers e and hands it to the acknowledgements when it may be acknowledged;
// otherwise it is no longer in flight and stays pending.
func (c *Consumer) deliverAndAck(e readEntry) {
	id := e.msg.ID
	// Deliveries in flight may finish within the shutdown grace: cutting them off would only
	// cause a redelivery.
	if c.deliver(c.deliverCtx, e) {
		// The entry stays in flight until it is acknowledged: a reclaim in between would
		// deliver it again.
		c.acking.Add(1)
		if _, err := c.reader.acks.Submit(context.Background(), deliveredAck{c: c, id: id, forgetRounds: e.redelivered}); err != nil {
			c.acking.Done()
			c.done(id) // cannot happen before Run's deliveries are done; left pending
		}
		return
	}
	c.done(id)
}

func (c *Consumer) done(id string) {
	c.mu.Lock()
	delete(c.inflight, id)
	c.mu.Unlock()
}

// deliver returns true when the entry may be acknowledged: the subscriber or the dead-letter
// sink accepted it, the filter rejected it, or it was parked. An entry the reader decoded
// comes with its event, which passed the filter; the delivery works on a copy of it.
func (c *Consumer) deliver(ctx context.Context, e readEntry) bool {
	m := e.msg
	var event *cloudevents.Event
	if e.event != nil {
		clone := e.event.Clone()
		event = &clone
	} else {
		var err error
		event, err = DecodeEntry(m.Values)
		if err != nil {
			return c.park(ctx, Parked{EntryID: m.ID, Entry: entryStrings(m.Values), Reason: ParkUndecodable, Detail: err.Error()})
		}
		if c.t.Filter != nil && c.t.Filter.Filter(ctx, *event) == eventfilter.FailFilter {
			c.filtered().Inc()
			return true
		}
	}
	// The event's logger is made only when something is logged: most deliveries log nothing.
	log := func() *slog.Logger { return c.log.With("event_id", event.ID(), "event_type", event.Type()) }
	ctx, span := c.startDeliverySpan(ctx, event, "deliver")
	outcome := "retry later"
	defer func() { span.SetAttributes(attribute.String("knfaas.delivery.outcome", outcome)); span.End() }()
	// As the Knative broker filter: the TTL is not shown to the subscriber and is given back to
	// its reply.
	ttl, err := knbroker.GetTTL(event.Context)
	if err != nil {
		ttl = DefaultTTL
	}
	_ = knbroker.DeleteTTL(event.Context)
	reply, err := c.replyURL(ttl)
	if err != nil {
		log().Error("bad reply URL", "error", err)
		return false
	}
	// The dispatcher sends the event in binary mode: the entry's data bytes are the body as
	// they are, never re-marshalled.
	retry, attempts := countSubscriberAttempts(c.t.Retry)
	info, err := c.dispatcher.SendEvent(ctx, *event, c.t.Subscriber, c.t.sendOptions(
		kncloudevents.WithRetryConfig(&retry),
		kncloudevents.WithReply(&duckv1.Addressable{URL: reply}),
	)...)
	if *attempts > 1 {
		c.retried().Inc()
	}
	if err != nil && ctx.Err() != nil {
		log().Info("delivery cut off by shutdown; the event stays pending and is redelivered after a restart")
		return false
	}
	if err == nil {
		c.delivered().Inc()
		c.latency().Observe(time.Since(entryTime(m.ID)).Seconds())
		if c.log.Enabled(ctx, slog.LevelDebug) {
			log().Debug("delivered")
		}
		outcome = "delivered"
		return true
	}
	if info == nil {
		info = &kncloudevents.DispatchInfo{ResponseCode: kncloudevents.NoResponse}
	}
	if c.t.DeadLetter == nil {
		c.metrics.EventsDropped.WithLabelValues(c.brokerKey, c.t.Key()).Inc()
		log().Error("delivery failed and the trigger has no dead-letter sink: the event is dropped, as Knative does", "error", err)
		outcome = "dropped"
		tracing.End(span, err)
		return true
	}
	span.SetStatus(codes.Error, err.Error())
	dlRetry := c.t.Retry
	dlCtx, dlSpan := c.startDeliverySpan(ctx, event, "dead-letter")
	dlInfo, dlErr := c.dispatcher.SendEvent(dlCtx, *event, *c.t.DeadLetter, c.t.sendOptions(
		kncloudevents.WithRetryConfig(&dlRetry),
		kncloudevents.WithTransformers(append(ErrorTransformers(c.t.Subscriber.URL, info), transformer.AddExtension(TriggerExtension, c.t.Key()))...),
	)...)
	tracing.End(dlSpan, dlErr)
	if dlErr != nil && ctx.Err() != nil {
		log().Info("dead-lettering cut off by shutdown; the event stays pending and is redelivered after a restart")
		return false
	}
	if dlErr == nil {
		c.metrics.EventsDeadLettered.WithLabelValues(c.brokerKey, c.t.Key()).Inc()
		log().Warn("delivery failed; sent to the dead-letter sink", "error", err, "code", info.ResponseCode)
		outcome = "dead-lettered"
		return true
	}
	if dlInfo == nil {
		dlInfo = &kncloudevents.DispatchInfo{ResponseCode: kncloudevents.NoResponse}
	}
	c.metrics.EventsFailed.WithLabelValues(c.brokerKey, c.t.Key()).Inc()
	c.metrics.DeadLetterFailures.WithLabelValues(c.brokerKey, c.t.Key(), strconv.Itoa(dlInfo.ResponseCode)).Inc()
	rounds, cerr := c.countRound(ctx, m.ID)
	if cerr != nil {
		log().Error("delivery and dead-lettering failed, and counting the failed round failed; the event stays pending and is redelivered",
			"error", err, "dead_letter_error", dlErr, "count_error", cerr, "redeliver_after", c.opts.RedeliverAfter)
		return false
	}
	why := "delivery and dead-lettering failed"
	if dlInfo.ResponseCode == http.StatusServiceUnavailable {
		why = "delivery failed and the dead-letter sink answered 503 (the dead-letter store is full or unavailable)"
	}
	if rounds < c.opts.MaxRounds {
		log().Error(why+"; the event stays pending and is redelivered", "error", err, "code", info.ResponseCode,
			"dead_letter_error", dlErr, "dead_letter_code", dlInfo.ResponseCode, "round", rounds, "max_rounds", c.opts.MaxRounds, "redeliver_after", c.opts.RedeliverAfter)
		return false
	}
	outcome = "parked"
	return c.park(ctx, Parked{
		EntryID: m.ID, Entry: entryStrings(m.Values), Event: event, Reason: ParkUndeliverable,
		Detail:        fmt.Sprintf("%s in %d rounds: %v; dead-letter sink: %v", why, rounds, err, dlErr),
		SubscriberURL: c.t.Subscriber.URL.String(), SubscriberCode: info.ResponseCode, SubscriberBody: bounded(info.ResponseBody), SubscriberError: err.Error(),
		DeadLetterURL: c.t.DeadLetter.URL.String(), DeadLetterCode: dlInfo.ResponseCode, DeadLetterBody: bounded(dlInfo.ResponseBody), DeadLetterError: dlErr.Error(),
		Rounds: rounds,
	})
}

// park hands p to the Parker and reports whether the entry may be acknowledged.
func (c *Consumer) park(ctx context.Context, p Parked) bool {
	p.Trigger, p.Broker, p.Time = c.t.Key(), c.brokerKey, time.Now()
	log := c.log.With("entry", p.EntryID, "reason", p.Reason, "detail", p.Detail, "rounds", p.Rounds)
	if p.Event != nil {
		log = log.With("event_id", p.Event.ID(), "event_type", p.Event.Type())
	}
	if c.opts.Parker == nil {
		log.Error("the event can never be delivered and no parker is configured; it stays pending")
		return false
	}
	if err := c.opts.Parker.Park(ctx, p); err != nil {
		log.Error("parking the event failed; it stays pending and is parked on a later round", "error", err)
		return false
	}
	c.metrics.EventsParked.WithLabelValues(c.brokerKey, c.t.Key(), p.Reason).Inc()
	log.Error("event parked: taken off the trigger and acknowledged",
		"subscriber_code", p.SubscriberCode, "dead_letter_code", p.DeadLetterCode)
	return true
}

// countRound records a failed round of entry id and returns how many there were.
func (c *Consumer) countRound(ctx context.Context, id string) (int, error) {
	pipe := c.rdb.TxPipeline()
	n := pipe.HIncrBy(ctx, c.roundsKey, id, 1)
	pipe.Expire(ctx, c.roundsKey, roundsTTL)
	if _, err := pipe.Exec(ctx); err != nil {
		return 0, fmt.Errorf("counting failed rounds in %s: %w", c.roundsKey, err)
	}
	return int(n.Val()), nil
}

// countSubscriberAttempts returns a copy of rc for one SendEvent to a subscriber, and the
// number of attempts made to the subscriber. The dispatcher uses rc for the subscriber and
// then for the reply; the subscriber's attempts are those up to the first that is not retried
// or the last one rc allows, each followed by one CheckRetry call.
func countSubscriberAttempts(rc kncloudevents.RetryConfig) (kncloudevents.RetryConfig, *int) {
	attempts := new(int)
	done := false
	check := rc.CheckRetry
	rc.CheckRetry = func(ctx context.Context, resp *http.Response, err error) (bool, error) {
		again, cerr := false, error(nil)
		if check != nil {
			again, cerr = check(ctx, resp, err)
		}
		if !done {
			*attempts++
			done = !again || *attempts > rc.RetryMax
		}
		return again, cerr
	}
	return rc, attempts
}

func bounded(b []byte) []byte {
	if len(b) > MaxParkedResponseBytes {
		b = b[:MaxParkedResponseBytes]
	}
	return append([]byte(nil), b...)
}

// entryStrings copies a stream entry's fields.
func entryStrings(values map[string]any) map[string]string {
	out := make(map[string]string, len(values))
	for k, v := range values {
		if s, ok := v.(string); ok {
			out[k] = s
		} else {
			out[k] = fmt.Sprint(v)
		}
	}
	return out
}

// ErrorTransformers add the knativeerrordest, knativeerrorcode and knativeerrordata extensions
// to a dead letter, with Knative's encoding: the failed response body in base64, truncated to
// Knative's maximum length.
func ErrorTransformers(dest *apis.URL, info *kncloudevents.DispatchInfo) binding.Transformers {
	if info == nil {
		info = &kncloudevents.DispatchInfo{ResponseCode: kncloudevents.NoResponse}
	}
	if dest == nil {
		dest = &apis.URL{}
	}
	encoded := base64.StdEncoding.EncodeToString(info.ResponseBody)
	if len(encoded) > attributes.KnativeErrorDataExtensionMaxLength {
		encoded = encoded[:attributes.KnativeErrorDataExtensionMaxLength]
	}
	return attributes.KnativeErrorTransformers(*dest.URL(), info.ResponseCode, encoded)
}

// String describes the trigger for start-up output.
func (t *Trigger) String() string {
	return fmt.Sprintf("%s: broker %s → %s", t.Key(), t.Broker, t.Subscriber.URL)
}
