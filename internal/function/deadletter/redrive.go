package deadletter

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Publisher sends an event and returns nil only when the receiver accepted it (2xx).
// *sink.Sender is one.
type Publisher interface {
	Send(ctx context.Context, e event.Event) error
}

// RedriveOptions tune Redrive.
type RedriveOptions struct {
	// Rate caps sends per second; 0 means as fast as the broker answers.
	Rate float64
	// Lease is how long a claim keeps other runs off a letter; it must outlast one send
	// (the sender's timeout), so a live run is never overtaken. 0 means one minute.
	Lease time.Duration
	// OnResult, when set, is called after each letter.
	OnResult func(Result)
}

// Outcome of redriving one letter.
type Outcome string

// Outcomes.
const (
	Accepted Outcome = "accepted" // the broker answered 2xx; the letter is removed
	Failed   Outcome = "failed"   // not accepted; the letter stays, with the reason
	Skipped  Outcome = "skipped"  // another run holds the letter, or it is already gone
)

// Result is what happened to one letter.
type Result struct {
	Letter  Letter
	Attempt int // the knfaasredrive value sent
	Outcome Outcome
	Err     error
}

// Report counts a redrive run.
type Report struct {
	Accepted, Failed, Skipped int
}

// ErrNotAccepted is wrapped by Redrive's error when the broker refused or could not be reached.
var ErrNotAccepted = errors.New("broker did not accept the redriven event")

// Redrive publishes each letter's original event (same id) through pub, in order, adding the
// knfaasredrive extension. Each letter is claimed in Redis before it is sent and removed only
// after pub reports acceptance, so a run that is interrupted — even by kill -9 — can be run
// again with the same filter: accepted letters are gone, the one in flight is sent again once
// its lease expires (with a higher knfaasredrive and the same id), and nothing is lost.
// Redrive stops at the first letter that is not accepted: the broker is then likely unreachable,
// and the remaining letters stay untouched.
func Redrive(ctx context.Context, s *Store, pub Publisher, letters []Letter, opts RedriveOptions) (Report, error) {
	r := newRedriver(s, pub, opts)
	for _, l := range letters {
		if err := r.next(ctx, l); err != nil {
			return r.rep, err
		}
	}
	return r.rep, nil
}

// RedriveMatching is Redrive over the letters matching f, read page by page while they are
// sent, so a large backlog is never held in memory at once.
func RedriveMatching(ctx context.Context, s *Store, pub Publisher, f Filter, opts RedriveOptions) (Report, error) {
	r := newRedriver(s, pub, opts)
	err := s.Scan(ctx, f, func(l Letter) (bool, error) {
		return true, r.next(ctx, l)
	})
	return r.rep, err
}

type redriver struct {
	s        *Store
	pub      Publisher
	opts     RedriveOptions
	interval time.Duration
	start    time.Time
	n        int
	rep      Report
}

func newRedriver(s *Store, pub Publisher, opts RedriveOptions) *redriver {
	if opts.Lease <= 0 {
		opts.Lease = time.Minute
	}
	r := &redriver{s: s, pub: pub, opts: opts, start: time.Now()}
	if opts.Rate > 0 {
		r.interval = time.Duration(float64(time.Second) / opts.Rate)
	}
	return r
}

// next redrives one letter, pacing sends to the rate; it returns the error that stops the run.
func (r *redriver) next(ctx context.Context, l Letter) error {
	if r.interval > 0 {
		if err := sleepUntil(ctx, r.start.Add(time.Duration(r.n)*r.interval)); err != nil {
			return err
		}
	}
	r.n++
	res := redriveOne(ctx, r.s, r.pub, l, r.opts.Lease)
	if r.opts.OnResult != nil {
		r.opts.OnResult(res)
	}
	switch res.Outcome {
	case Accepted:
		r.rep.Accepted++
	case Skipped:
		r.rep.Skipped++
	case Failed:
		r.rep.Failed++
		return res.Err
	}
	return nil
}

func redriveOne(ctx context.Context, s *Store, pub Publisher, l Letter, lease time.Duration) Result {
	res := Result{Letter: l}
	claim, attempts, _, err := s.Claim(ctx, l.ID, lease)
	if err != nil {
		res.Outcome, res.Err = Failed, err
		return res
	}
	if claim != Claimed {
		res.Outcome = Skipped
		return res
	}
	e, err := l.OriginalEvent()
	if err == nil {
		res.Attempt = previousRedrives(e) + attempts
		e.SetExtension(ExtRedrive, int32(res.Attempt))
		err = pub.Send(ctx, e)
		if err != nil {
			err = fmt.Errorf("%w: letter %s (event %s): %w", ErrNotAccepted, l.ID, l.EventID, err)
		}
	}
	if err != nil {
		// Release even when ctx was cancelled (Ctrl-C), so a resumed run need not wait for
		// the lease; a kill -9 skips this and the lease expires instead.
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 5*time.Second)
		defer cancel()
		if rerr := s.Release(rctx, l.ID, err.Error()); rerr != nil {
			err = errors.Join(err, rerr)
		}
		res.Outcome, res.Err = Failed, err
		return res
	}
	if _, err := s.Drop(context.WithoutCancel(ctx), l.ID); err != nil {
		// The broker has the event; the letter will be sent again (same id) by a later run.
		res.Outcome, res.Err = Failed, fmt.Errorf("letter %s was accepted but not removed: %w", l.ID, err)
		return res
	}
	res.Outcome = Accepted
	return res
}

// previousRedrives reads knfaasredrive from an event that was itself a redrive that failed again,
// so attempt counts keep growing across letters of the same event.
func previousRedrives(e event.Event) int {
	v, ok := e.Extensions()[ExtRedrive]
	if !ok {
		return 0
	}
	return codeOf(v)
}

func sleepUntil(ctx context.Context, t time.Time) error {
	d := time.Until(t)
	if d <= 0 {
		return ctx.Err()
	}
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-ctx.Done():
		return ctx.Err()
	case <-timer.C:
		return nil
	}
}
