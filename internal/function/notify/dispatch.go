package notify

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/duequeue"
)

// Outcomes logged per attempt.
const (
	OutcomeDelivered = "delivered"
	OutcomeRetry     = "retry"
	OutcomeDead      = "dead"
	OutcomeGone      = "gone"
)

// maxExcerpt bounds the response excerpt kept per attempt; maxDrain bounds what is read of a
// response at all (the rest is dropped with the connection).
const (
	maxExcerpt = 512
	maxDrain   = 64 << 10
)

// DeadLetters is where a message goes after its last attempt at an endpoint (deadletter.Store).
type DeadLetters interface {
	Add(ctx context.Context, l deadletter.Letter) (string, bool, error)
}

// Options configure a Dispatcher.
type Options struct {
	Schedule Schedule
	// Poll is how often the loop looks for due deliveries when not woken.
	Poll time.Duration
	// Batch is how many due deliveries one claim takes.
	Batch int
	// Client sends the deliveries; its Transport should guard where it connects.
	Client *http.Client
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Breaker decides when an endpoint's circuit opens (breaker.Default when zero).
	Breaker breaker.Settings
	// DisableAfter disables an endpoint whose attempts have all failed for that long (zero:
	// never).
	DisableAfter time.Duration
	// OnDisabled is told when this instance disables an endpoint (a 410, or DisableAfter), to
	// publish that it did; nil: it is only logged.
	OnDisabled func(ctx context.Context, ep *Endpoint, reason string, at time.Time)
}

// Dispatcher runs the attempts: it claims due (message, endpoint) pairs from the Store and
// delivers each inside its endpoint's bulkhead.
type Dispatcher struct {
	store *Store
	dead  DeadLetters
	opts  Options
	// mu guards endpoints and api: the API's endpoints come and go at run time.
	mu         sync.RWMutex
	endpoints  map[string]*runner
	configured map[string]bool
	api        map[string]apiEntry
	refreshed  time.Time
	breakers   *breaker.Store
	// Loop runs the claim steps and the attempts; its Run, Wake and Drain are the dispatcher's.
	*duequeue.Loop
	// gone holds the endpoints this instance saw answer 410, so that attempts it claimed before
	// the disabled mark was read are not made.
	gone sync.Map
}

// apiEntry is what the dispatcher last built of an API endpoint: rebuilt when the stored record
// changes or when its signing keys change by themselves (a rotation's overlap ends).
type apiEntry struct {
	record  string
	changes time.Time
}

// runner is one endpoint with its bulkhead and its circuit breaker (made on first use: Redis
// may come up after the function).
type runner struct {
	ep      *Endpoint
	slots   chan struct{}
	mu      sync.Mutex
	breaker *breaker.Breaker
}

// NewDispatcher returns a Dispatcher for endpoints.
func NewDispatcher(store *Store, dead DeadLetters, endpoints []*Endpoint, opts Options) *Dispatcher {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	if opts.Batch <= 0 {
		opts.Batch = 256
	}
	if opts.Client == nil {
		opts.Client = &http.Client{}
	}
	if opts.Breaker == (breaker.Settings{}) {
		opts.Breaker = breaker.Default
	}
	d := &Dispatcher{store: store, dead: dead, opts: opts, endpoints: map[string]*runner{},
		breakers: breaker.NewStore(store.rdb, breakerLabels), configured: map[string]bool{}, api: map[string]apiEntry{}}
	d.Loop = duequeue.NewLoop(store.queue, d.step, duequeue.LoopOptions{Poll: opts.Poll, Batch: opts.Batch, Now: opts.Now, Log: "notify", Items: "deliveries"})
	for _, ep := range endpoints {
		d.endpoints[ep.Name] = &runner{ep: ep, slots: make(chan struct{}, ep.Concurrency)}
		d.configured[ep.Name] = true
	}
	return d
}

// RefreshInterval is how stale a dispatcher's view of the API's endpoints may get: every
// instance reads them from Redis at most that long after a change.
const RefreshInterval = time.Second

// Refresh reads the API's endpoints from Redis when the last read is older than
// RefreshInterval (or always, with force) and rebuilds the ones that changed. An API endpoint
// named like a ConfigMap one is ignored: the ConfigMap wins.
func (d *Dispatcher) Refresh(ctx context.Context, force bool) error {
	now := d.opts.Now()
	d.mu.RLock()
	fresh := !force && now.Sub(d.refreshed) < RefreshInterval
	d.mu.RUnlock()
	if fresh {
		return nil
	}
	stored, err := d.store.APIEndpoints(ctx)
	if err != nil {
		return err
	}
	d.mu.Lock()
	defer d.mu.Unlock()
	d.refreshed = now
	for name := range d.api {
		if _, ok := stored[name]; !ok {
			delete(d.api, name)
			delete(d.endpoints, name)
		}
	}
	for name, s := range stored {
		if d.configured[name] {
			continue
		}
		raw, _ := json.Marshal(s)
		old, ok := d.api[name]
		if ok && old.record == string(raw) && (old.changes.IsZero() || now.Before(old.changes)) {
			continue
		}
		ep, changes, err := s.Endpoint(now)
		if err != nil {
			slog.Error("notify: an API endpoint in Redis is not valid; it gets nothing", "endpoint", name, "err", err)
			delete(d.endpoints, name)
			d.api[name] = apiEntry{record: string(raw)}
			continue
		}
		d.api[name] = apiEntry{record: string(raw), changes: changes}
		d.endpoints[name] = &runner{ep: ep, slots: make(chan struct{}, ep.Concurrency)}
	}
	return nil
}

// Match returns the names of the endpoints that want events of type typ: the enabled
// ConfigMap ones and the API ones, paused or not (a paused one keeps its messages waiting).
func (d *Dispatcher) Match(typ string) []string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []string
	for name, r := range d.endpoints {
		if !r.ep.Disabled && r.ep.Wants(typ) {
			out = append(out, name)
		}
	}
	return out
}

// Endpoint returns an endpoint (ConfigMap or API) by name.
func (d *Dispatcher) Endpoint(name string) (*Endpoint, bool) {
	r, ok := d.runner(name)
	if !ok {
		return nil, false
	}
	return r.ep, true
}

// Configured returns the ConfigMap's endpoints, by name.
func (d *Dispatcher) Configured() []*Endpoint {
	d.mu.RLock()
	defer d.mu.RUnlock()
	var out []*Endpoint
	for _, name := range sortedNames(d.configured) {
		out = append(out, d.endpoints[name].ep)
	}
	return out
}

// IsConfigured reports whether name is a ConfigMap endpoint.
func (d *Dispatcher) IsConfigured(name string) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.configured[name]
}

func (d *Dispatcher) runner(name string) (*runner, bool) {
	d.mu.RLock()
	defer d.mu.RUnlock()
	r, ok := d.endpoints[name]
	return r, ok
}

// lease is how long a claimed pair stays with this instance: the longest attempt plus a margin.
func (d *Dispatcher) lease() time.Duration {
	d.mu.RLock()
	defer d.mu.RUnlock()
	longest := DefaultTimeout
	for _, r := range d.endpoints {
		longest = max(longest, r.ep.Timeout)
	}
	return longest + 30*time.Second
}

// leaseMargin is how long before its lease ends a job stops trying to record its attempt, so
// that another instance does not claim it while this one still writes.
const leaseMargin = 5 * time.Second

// step claims one batch of due pairs and starts their attempts; it returns how many it claimed.
func (d *Dispatcher) step(ctx context.Context) (int, error) {
	if err := d.Refresh(ctx, false); err != nil {
		return 0, err
	}
	disabled, err := d.store.Disabled(ctx)
	if err != nil {
		return 0, err
	}
	// An endpoint re-enabled by an operator (its mark removed from Redis) is tried again.
	d.gone.Range(func(name, since any) bool {
		if disabled[name.(string)] == "" && d.opts.Now().Sub(since.(time.Time)) > 10*time.Second {
			d.gone.Delete(name)
		}
		return true
	})
	jobs, err := d.store.Claim(ctx, d.opts.Now(), d.lease(), d.opts.Batch)
	if err != nil {
		return 0, err
	}
	admitted := map[string]breaker.Admission{}
	refreshed := false
	for _, j := range jobs {
		r, ok := d.runner(j.Endpoint)
		if !ok && !refreshed {
			// Made through the API since this instance last looked: read the endpoints again.
			refreshed = true
			if err := d.Refresh(ctx, true); err == nil {
				r, ok = d.runner(j.Endpoint)
			}
		}
		switch {
		case len(j.Raw) == 0:
			slog.Error("notify: message record expired before its delivery finished; raise NOTIFY_RETENTION", "message", j.Message, "endpoint", j.Endpoint)
			d.finish(ctx, j, StateDead, time.Time{}, nil)
			continue
		case !ok:
			// Removed from the configuration, or not yet known to this instance (a rollout):
			// a failed attempt, so it is retried on the schedule and then dead-lettered.
			d.retryOrDeadLetter(ctx, nil, j, Attempt{At: d.opts.Now().UTC(), Number: j.Tries + 1,
				Error: "endpoint not configured in this instance"}, nil)
			continue
		case r.ep.Paused:
			// Disabled through the API: the message waits for the endpoint to be enabled.
			d.finish(ctx, j, outcomeDefer, d.opts.Now().Add(PausedRecheck), nil)
			continue
		case r.ep.Disabled || disabled[j.Endpoint] != "" || d.isGone(j.Endpoint):
			why := "endpoint disabled in the configuration"
			if disabled[j.Endpoint] != "" {
				why = "endpoint disabled: " + disabled[j.Endpoint]
			} else if d.isGone(j.Endpoint) {
				why = "endpoint disabled: it answered 410 Gone"
			}
			d.deadLetter(ctx, j, r.ep, &Attempt{At: d.opts.Now(), Outcome: OutcomeDead, Error: why})
			continue
		}
		adm, ok := admitted[j.Endpoint]
		if !ok {
			adm, err = d.admit(ctx, r)
			if err != nil {
				slog.Warn("notify: reading the circuit failed", "endpoint", j.Endpoint, "err", err)
				adm = breaker.Admission{Until: d.opts.Now().Add(time.Second)}
			}
			admitted[j.Endpoint] = adm
		}
		if !adm.Until.IsZero() {
			// An open circuit: the message waits, without an attempt counted, until a probe may go.
			d.finish(ctx, j, outcomeDefer, adm.Until, nil)
			continue
		}
		if r.ep.RateLimit > 0 {
			now := d.opts.Now()
			ok, err := d.store.takeRate(ctx, j.Endpoint, now, r.ep.RateLimit)
			if err != nil || !ok {
				// Over the endpoint's rate this second: wait for the next, no attempt counted.
				d.finish(ctx, j, outcomeDefer, now.Truncate(time.Second).Add(time.Second), nil)
				continue
			}
		}
		select {
		case r.slots <- struct{}{}:
		default:
			// The bulkhead is full: this endpoint is slow; others are not held up by it.
			d.finish(ctx, j, outcomeDefer, d.opts.Now().Add(50*time.Millisecond), nil)
			continue
		}
		if adm.Probe {
			// This job is the half-open probe; the step's other jobs for the endpoint wait.
			admitted[j.Endpoint] = adm.AfterProbe(d.opts.Now())
		}
		d.Go(func() {
			defer func() { <-r.slots }()
			d.deliver(context.WithoutCancel(ctx), r, j, adm)
		})
	}
	return len(jobs), nil
}

func (d *Dispatcher) isGone(endpoint string) bool {
	_, ok := d.gone.Load(endpoint)
	return ok
}

// admit reads the endpoint's circuit for one step, making its breaker on first use.
func (d *Dispatcher) admit(ctx context.Context, r *runner) (breaker.Admission, error) {
	r.mu.Lock()
	if r.breaker == nil {
		b, err := d.breakers.New(r.ep.Name, d.opts.Breaker, r.ep.Timeout+5*time.Second)
		if err != nil {
			r.mu.Unlock()
			return breaker.Admission{}, err
		}
		r.breaker = b
	}
	b := r.breaker
	r.mu.Unlock()
	return b.Admit(ctx, d.opts.Now())
}

// deliver makes one attempt, reports it to the endpoint's circuit and records its outcome.
func (d *Dispatcher) deliver(ctx context.Context, r *runner, j Job, adm breaker.Admission) {
	ep := r.ep
	if d.isGone(ep.Name) {
		d.deadLetter(ctx, j, ep, &Attempt{At: d.opts.Now(), Outcome: OutcomeDead, Error: "endpoint disabled: it answered 410 Gone"})
		return
	}
	a, header := d.attempt(ctx, ep, j)
	a.Breaker = adm.Logged()
	r.breaker.Record(ctx, countsAsFailure(a), adm.Probe)
	now := d.opts.Now()
	switch {
	case a.Status >= 200 && a.Status < 300:
		a.Outcome = OutcomeDelivered
		d.finish(ctx, j, StateDelivered, time.Time{}, &a)
	case a.Status == http.StatusGone:
		a.Outcome = OutcomeGone
		d.gone.Store(ep.Name, now)
		if err := d.disable(ctx, ep, fmt.Sprintf("410 Gone from %s for message %s", ep.URL, j.Message), now); err != nil {
			d.finish(ctx, j, outcomeRetry, now.Add(time.Second), &a)
			return
		}
		d.deadLetter(ctx, j, ep, &a)
	default:
		d.retryOrDeadLetter(ctx, ep, j, a, header)
	}
}

// retryOrDeadLetter schedules the next attempt after a failed one, or dead-letters the message
// after the last.
func (d *Dispatcher) retryOrDeadLetter(ctx context.Context, ep *Endpoint, j Job, a Attempt, header http.Header) {
	wait, more := d.opts.Schedule.Next(a.Number)
	if !more {
		a.Outcome = OutcomeDead
		d.deadLetter(ctx, j, ep, &a)
		return
	}
	now := d.opts.Now()
	if a.Status == http.StatusTooManyRequests || a.Status == http.StatusServiceUnavailable {
		wait = max(wait, RetryAfter(header, now))
	}
	a.Outcome, a.Next = OutcomeRetry, now.Add(wait)
	d.finish(ctx, j, outcomeRetry, a.Next, &a)
}

// attempt POSTs the message to the endpoint once: the event's data byte for byte with its
// content type, the event's attributes as CloudEvents binary-mode headers, the endpoint's own
// headers and the Standard Webhooks headers.
func (d *Dispatcher) attempt(ctx context.Context, ep *Endpoint, j Job) (Attempt, http.Header) {
	start := d.opts.Now()
	a := Attempt{At: start.UTC(), Number: j.Tries + 1, made: true}
	body := j.Event.Data()
	ctx, cancel := context.WithTimeout(ctx, ep.Timeout)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, ep.URL, bytes.NewReader(body))
	if err != nil {
		a.Error = err.Error()
		return a, nil
	}
	for k, v := range ep.Headers {
		req.Header.Set(k, v)
	}
	SetEventHeaders(req.Header, j.Event)
	req.Header.Set("User-Agent", "knfaas-notify")
	ep.signerAt(start).SetHeaders(req.Header, j.Message, start, body)
	resp, err := d.opts.Client.Do(req)
	a.Latency = float64(time.Since(start).Microseconds()) / 1000
	if err != nil {
		a.Error = err.Error()
		return a, nil
	}
	defer resp.Body.Close()
	a.Status = resp.StatusCode
	head, _ := io.ReadAll(io.LimitReader(resp.Body, maxExcerpt))
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, maxDrain))
	a.Response = excerpt(head)
	return a, resp.Header
}

// SetEventHeaders sets Content-Type and the ce-* headers of CloudEvents binary mode.
func SetEventHeaders(h http.Header, e event.Event) {
	ct := e.DataContentType()
	if ct == "" {
		ct = "application/json"
	}
	h.Set("Content-Type", ct)
	h.Set("ce-specversion", e.SpecVersion())
	h.Set("ce-id", e.ID())
	h.Set("ce-source", e.Source())
	h.Set("ce-type", e.Type())
	if s := e.Subject(); s != "" {
		h.Set("ce-subject", s)
	}
	if t := e.Time(); !t.IsZero() {
		h.Set("ce-time", t.UTC().Format(time.RFC3339Nano))
	}
}

func excerpt(b []byte) string {
	for len(b) > 0 && !utf8.Valid(b) {
		b = b[:len(b)-1]
	}
	return string(b)
}

func (d *Dispatcher) finish(ctx context.Context, j Job, outcome string, next time.Time, a *Attempt) {
	health := ""
	if a != nil && a.made && a.Outcome != OutcomeGone {
		health = duequeue.HealthOK
		if countsAsFailure(*a) {
			health = duequeue.HealthFailed
		}
	}
	now := d.opts.Now()
	failing, err := d.store.finish(ctx, j, outcome, next, a, health, now)
	if err != nil {
		// The pair stays leased; it is due again when the lease runs out.
		slog.Error("notify: recording an attempt failed", "message", j.Message, "endpoint", j.Endpoint, "err", err)
		return
	}
	if d.opts.DisableAfter > 0 && !failing.IsZero() && now.Sub(failing) >= d.opts.DisableAfter && !d.isGone(j.Endpoint) {
		r, ok := d.runner(j.Endpoint)
		if !ok {
			return
		}
		d.gone.Store(j.Endpoint, now)
		reason := fmt.Sprintf("every attempt failed since %s (more than NOTIFY_DISABLE_AFTER %s)", failing.UTC().Format(time.RFC3339), d.opts.DisableAfter)
		d.disable(ctx, r.ep, reason, now)
	}
}

// disable marks an endpoint disabled and says so.
func (d *Dispatcher) disable(ctx context.Context, ep *Endpoint, reason string, at time.Time) error {
	if err := d.store.Disable(ctx, ep.Name, reason, at); err != nil {
		slog.Error("notify: disabling endpoint failed", "endpoint", ep.Name, "err", err)
		return err
	}
	slog.Warn("notify: endpoint disabled; its pending messages go to the dead letters", "endpoint", ep.Name, "reason", reason)
	if d.opts.OnDisabled != nil {
		d.opts.OnDisabled(ctx, ep, reason, at)
	}
	return nil
}

// deadLetter stores the message as a dead letter naming the endpoint, its attempts and last
// answer, then marks the pair dead. If storing fails the pair is retried in a minute: nothing
// is dropped.
func (d *Dispatcher) deadLetter(ctx context.Context, j Job, ep *Endpoint, last *Attempt) {
	e := j.Event.Clone()
	e.SetExtension(ExtEndpoint, j.Endpoint)
	l, err := deadletter.FromEvent(e)
	if err == nil {
		url := ""
		if ep != nil {
			url = ep.URL
		}
		l.ErrorExtensions = true
		l.Dest = url
		l.Code = last.Status
		l.ErrorData = last.Response
		if last.Error != "" {
			l.ErrorData = last.Error
		}
		l.Trigger = "notify/" + j.Endpoint
		l.Detail = fmt.Sprintf("notify endpoint %s (%s), message %s: %d attempts; last: %s", j.Endpoint, url, j.Message,
			j.Tries+boolInt(last.Number > 0), describe(last))
		_, _, err = d.dead.Add(ctx, l)
	}
	if err != nil {
		slog.Error("notify: storing dead letter failed; retrying in a minute", "message", j.Message, "endpoint", j.Endpoint, "err", err)
		d.finish(ctx, j, outcomeDefer, d.opts.Now().Add(time.Minute), last)
		return
	}
	slog.Warn("notify: message dead-lettered", "message", j.Message, "endpoint", j.Endpoint, "last", describe(last))
	d.finish(ctx, j, StateDead, time.Time{}, last)
}

func boolInt(b bool) int {
	if b {
		return 1
	}
	return 0
}

func describe(a *Attempt) string {
	switch {
	case a.Error != "":
		return a.Error
	case a.Status != 0:
		return strconv.Itoa(a.Status) + " " + a.Response
	}
	return a.Outcome
}
