package mail

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/duequeue"
	"github.com/knfaas/knfaas/internal/function/notify"
)

// DeadLetters is where a mail goes after its last attempt, or at once when it can never be sent
// (deadletter.Store).
type DeadLetters interface {
	Add(ctx context.Context, l deadletter.Letter) (string, bool, error)
}

// Options configure a Dispatcher.
type Options struct {
	// Server is where mails are sent; its Name keys the circuit breaker.
	Server Server
	Sender Sender
	// Schedule is the wait before each retry (notify's schedule type and parser).
	Schedule notify.Schedule
	// Timeout bounds one attempt.
	Timeout time.Duration
	// Concurrency is the bulkhead: attempts in flight at once.
	Concurrency int
	// Poll is how often the loop looks for due mails when not woken.
	Poll time.Duration
	// Batch is how many due mails one claim takes.
	Batch int
	// Breaker decides when the server's circuit opens (breaker.Default when zero).
	Breaker breaker.Settings
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// Dispatcher runs the attempts: it claims due mails from the Store and sends each inside the
// bulkhead, behind the server's circuit breaker.
type Dispatcher struct {
	store    *Store
	dead     DeadLetters
	opts     Options
	slots    chan struct{}
	breakers *breaker.Store
	mu       sync.Mutex
	breaker  *breaker.Breaker
	// Loop runs the claim steps and the attempts; its Run, Wake and Drain are the dispatcher's.
	*duequeue.Loop
}

// NewDispatcher returns a Dispatcher.
func NewDispatcher(store *Store, dead DeadLetters, opts Options) *Dispatcher {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	if opts.Batch <= 0 {
		opts.Batch = 64
	}
	if opts.Concurrency <= 0 {
		opts.Concurrency = 4
	}
	if opts.Timeout <= 0 {
		opts.Timeout = 30 * time.Second
	}
	if opts.Breaker == (breaker.Settings{}) {
		opts.Breaker = breaker.Default
	}
	d := &Dispatcher{store: store, dead: dead, opts: opts, slots: make(chan struct{}, opts.Concurrency),
		breakers: breaker.NewStore(store.rdb, breakerLabels)}
	d.Loop = duequeue.NewLoop(store.queue, d.step, duequeue.LoopOptions{Poll: opts.Poll, Batch: opts.Batch, Now: opts.Now, Log: "mail", Items: "mails"})
	return d
}

// lease is how long a claimed mail stays with this instance: the attempt's timeout and a margin.
func (d *Dispatcher) lease() time.Duration { return d.opts.Timeout + 30*time.Second }

// leaseMargin is how long before its lease ends a job stops trying to record its attempt, so
// that another instance does not claim it while this one still writes.
const leaseMargin = 5 * time.Second

// step claims one batch of due mails and starts their attempts; it returns how many it claimed.
func (d *Dispatcher) step(ctx context.Context) (int, error) {
	jobs, err := d.store.Claim(ctx, d.opts.Now(), d.lease(), d.opts.Batch)
	if err != nil || len(jobs) == 0 {
		return len(jobs), err
	}
	adm, err := d.admit(ctx)
	if err != nil {
		slog.Warn("mail: reading the circuit failed", "server", d.opts.Server.Name(), "err", err)
		adm = breaker.Admission{Until: d.opts.Now().Add(time.Second)}
	}
	for _, j := range jobs {
		if j.Mail == nil {
			slog.Error("mail: record expired before its delivery finished; raise MAIL_RETENTION", "mail", j.ID)
			d.finish(ctx, j, StateDead, time.Time{}, nil)
			continue
		}
		if !adm.Until.IsZero() {
			// An open circuit: the mail waits, without an attempt counted, until a probe may go.
			d.finish(ctx, j, outcomeDefer, adm.Until, nil)
			continue
		}
		select {
		case d.slots <- struct{}{}:
		default:
			// The bulkhead is full: the server is slow; the mail waits a moment.
			d.finish(ctx, j, outcomeDefer, d.opts.Now().Add(50*time.Millisecond), nil)
			continue
		}
		this := adm
		if adm.Probe {
			// This mail is the half-open probe; the step's others wait.
			adm = adm.AfterProbe(d.opts.Now())
		}
		d.Go(func() {
			defer func() { <-d.slots }()
			d.deliver(context.WithoutCancel(ctx), j, this)
		})
	}
	return len(jobs), nil
}

// admit reads the server's circuit for one step, making its breaker on first use (Redis may
// come up after the function).
func (d *Dispatcher) admit(ctx context.Context) (breaker.Admission, error) {
	d.mu.Lock()
	if d.breaker == nil {
		b, err := d.breakers.New(d.opts.Server.Name(), d.opts.Breaker, d.opts.Timeout+5*time.Second)
		if err != nil {
			d.mu.Unlock()
			return breaker.Admission{}, err
		}
		d.breaker = b
	}
	b := d.breaker
	d.mu.Unlock()
	return b.Admit(ctx, d.opts.Now())
}

// deliver makes one attempt, reports it to the circuit and records its outcome.
func (d *Dispatcher) deliver(ctx context.Context, j Job, adm breaker.Admission) {
	start := d.opts.Now()
	a := Attempt{At: start.UTC(), Number: j.Tries + 1, Breaker: adm.Logged()}
	actx, cancel := context.WithTimeout(ctx, d.opts.Timeout)
	err := d.opts.Sender.Send(actx, j.Mail)
	cancel()
	a.Latency = float64(time.Since(start).Microseconds()) / 1000
	var permanent *PermanentError
	isPermanent := errors.As(err, &permanent)
	// A refusal the server gave shows it is up: only no answer, a timeout or a 4xx counts.
	d.breaker.Record(ctx, err != nil && !isPermanent, adm.Probe)
	switch {
	case err == nil:
		a.Outcome = StateDelivered
		d.finish(ctx, j, StateDelivered, time.Time{}, &a)
		slog.Info("mail: sent", "mail", j.ID, "template", j.Mail.Template, "attempt", a.Number)
	case isPermanent:
		a.Code, a.Error, a.Outcome = permanent.Code, errorText(err), StateDead
		d.deadLetter(ctx, j, &a)
	default:
		a.Code, a.Error = CodeOf(err), errorText(err)
		wait, more := d.opts.Schedule.Next(a.Number)
		if !more {
			a.Outcome = StateDead
			d.deadLetter(ctx, j, &a)
			return
		}
		a.Outcome, a.Next = outcomeRetry, d.opts.Now().Add(wait)
		slog.Warn("mail: attempt failed; retrying", "mail", j.ID, "attempt", a.Number, "next", a.Next, "err", a.Error)
		d.finish(ctx, j, outcomeRetry, a.Next, &a)
	}
}

func (d *Dispatcher) finish(ctx context.Context, j Job, outcome string, next time.Time, a *Attempt) {
	if err := d.store.finish(ctx, j, d.opts.Server.Name(), outcome, next, a); err != nil {
		// The mail stays leased; it is due again when the lease runs out.
		slog.Error("mail: recording an attempt failed", "mail", j.ID, "err", err)
	}
}

// deadLetter stores the request event as a dead letter naming the server, the attempts and the
// last error, then marks the mail dead. If storing fails the mail is retried in a minute:
// nothing is dropped.
func (d *Dispatcher) deadLetter(ctx context.Context, j Job, last *Attempt) {
	l, err := Letter(j.Event, d.opts.Server, last.Code, last.Error,
		fmt.Sprintf("mail %s (template %s, to %s): %d attempts; last: %s", j.ID, j.Mail.Template, strings.Join(j.Mail.To, ", "), last.Number, last.Error))
	if err == nil {
		_, _, err = d.dead.Add(ctx, l)
	}
	if err != nil {
		slog.Error("mail: storing dead letter failed; retrying in a minute", "mail", j.ID, "err", err)
		d.finish(ctx, j, outcomeDefer, d.opts.Now().Add(time.Minute), last)
		return
	}
	slog.Warn("mail: dead-lettered", "mail", j.ID, "last", last.Error)
	d.finish(ctx, j, StateDead, time.Time{}, last)
}

// Letter is the dead letter of a request event (JSON structured, as the store keeps it): its
// destination is the server, its code the last SMTP reply code, its error data the reason.
func Letter(event []byte, server Server, code int, reason, detail string) (deadletter.Letter, error) {
	e, err := deadletter.Letter{Event: event}.OriginalEvent()
	if err != nil {
		return deadletter.Letter{}, fmt.Errorf("decoding the request event: %w", err)
	}
	l, err := deadletter.FromEvent(e)
	if err != nil {
		return deadletter.Letter{}, err
	}
	l.ErrorExtensions = true
	l.Dest = server.Dest()
	l.Code = code
	l.ErrorData = reason
	l.Trigger = "mail/" + server.Name()
	l.Detail = detail
	return l, nil
}
