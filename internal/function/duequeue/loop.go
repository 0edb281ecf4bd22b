package duequeue

import (
	"context"
	"log/slog"
	"sync"
	"time"
)

// LoopOptions configure a Loop.
type LoopOptions struct {
	// Poll is how often the loop looks for due items when not woken (a second when zero).
	Poll time.Duration
	// Batch is how many items one step claims at most: a full batch is followed by another
	// step at once.
	Batch int
	// Now is the clock (time.Now when nil).
	Now func() time.Time
	// Log starts the loop's log lines ("notify"); Items names what it claims ("deliveries").
	Log, Items string
}

// Loop runs a dispatcher's claim steps: one at each wake-up, poll or full batch. It counts what
// is running (steps and the attempts they start), so that Drain knows when all that was due is
// done.
type Loop struct {
	queue    *Queue
	step     func(context.Context) (int, error)
	opts     LoopOptions
	wake     chan struct{}
	inflight sync.WaitGroup
	mu       sync.Mutex
	running  int
}

// NewLoop returns a Loop whose step claims from queue and starts the attempts (with Go); it
// returns how many items it claimed.
func NewLoop(queue *Queue, step func(context.Context) (int, error), opts LoopOptions) *Loop {
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Poll <= 0 {
		opts.Poll = time.Second
	}
	return &Loop{queue: queue, step: step, opts: opts, wake: make(chan struct{}, 1)}
}

// Run steps until ctx ends, then waits for the attempts in flight.
func (l *Loop) Run(ctx context.Context) {
	defer l.inflight.Wait()
	timer := time.NewTimer(0)
	defer timer.Stop()
	for {
		n, err := l.Step(ctx)
		if err != nil && ctx.Err() == nil {
			slog.Warn(l.opts.Log+": claiming due "+l.opts.Items+" failed", "err", err)
		}
		if n == l.opts.Batch && err == nil {
			continue
		}
		timer.Reset(l.opts.Poll)
		select {
		case <-ctx.Done():
			return
		case <-l.wake:
		case <-timer.C:
		}
	}
}

// Step runs one claim step, counted as running while it claims and starts its attempts, so
// that Drain does not see "nothing due, nothing running" between the claim and their start.
func (l *Loop) Step(ctx context.Context) (int, error) {
	l.add(1)
	defer l.add(-1)
	return l.step(ctx)
}

// Go runs an attempt, counted as running; Run waits for it before it returns.
func (l *Loop) Go(attempt func()) {
	l.inflight.Add(1)
	l.add(1)
	go func() {
		defer func() {
			l.add(-1)
			l.inflight.Done()
		}()
		attempt()
	}()
}

// Wake makes the loop look for due items now.
func (l *Loop) Wake() {
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

func (l *Loop) add(n int) {
	l.mu.Lock()
	l.running += n
	l.mu.Unlock()
}

// Running is how many attempts and claim steps are in flight.
func (l *Loop) Running() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.running
}

// Drain runs the loop until nothing is due and nothing is running, or ctx ends.
func (l *Loop) Drain(ctx context.Context) error {
	for {
		n, err := l.queue.Due(ctx, l.opts.Now())
		if err != nil {
			return err
		}
		if n == 0 && l.Running() == 0 {
			return nil
		}
		l.Wake()
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
	}
}
