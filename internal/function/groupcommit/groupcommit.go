// Package groupcommit gathers items submitted concurrently into batches that one flush (typically
// one Redis pipeline) commits together, and hands every submitter that waits its batch's outcome.
package groupcommit

import (
	"context"
	"errors"
	"sync"
	"time"
)

// ErrClosed reports a Batcher that takes no more items: Close was called or Run has returned.
var ErrClosed = errors.New("group commit: batcher closed")

// DefaultMaxBatch is the batch size when Options.MaxBatch is not set.
const DefaultMaxBatch = 128

// Flush commits one batch. It runs on a flusher goroutine, never on a submitter's, and must not
// keep batch after it returns (the slice is reused). ctx is never cancelled, not even when Run's
// context ends, so that a drain still reaches Redis: Flush bounds its own calls. An error it
// returns is the outcome of every item of the batch; per-item outcomes travel in the items.
type Flush[T any] func(ctx context.Context, batch []T) error

// Options tune a Batcher.
type Options struct {
	// MaxBatch bounds how many items one flush takes: DefaultMaxBatch when <= 0.
	MaxBatch int
	// Linger is how long a flusher waits for a batch to fill once it holds its first item. With
	// 0 it flushes at once whatever is queued, so a lone item pays only a goroutine hand-off and
	// items queue up (and share a flush) only while the flushers are busy.
	Linger time.Duration
	// QueueLimit bounds the items submitted and not yet taken by a flusher; Submit waits for
	// room. 16 × MaxBatch when <= 0.
	QueueLimit int
}

// Batcher is a group commit of items of type T. Submitted items are flushed by Run: when a
// batch is full, when its linger has passed, and, once Run's context ends or Close is called,
// all that were submitted before (the drain). A Batcher is safe for concurrent use.
type Batcher[T any] struct {
	flush  Flush[T]
	max    int
	linger time.Duration
	queue  chan *Ticket[T]

	// mu orders Submit against closing: a Submit holds it shared while it checks closed and
	// queues, so that once closed is set under the exclusive lock, the queue only shrinks and a
	// drain sees every item that was accepted. It is taken exclusively only after stopping is
	// closed, which frees every Submit waiting for room.
	mu     sync.RWMutex
	closed bool

	// startMu guards started: whether Run ran or Close took its place.
	startMu sync.Mutex
	started bool

	stopOnce sync.Once
	stopping chan struct{} // closed when the Batcher stops taking items
	finished chan struct{} // closed when the last item is flushed and Run has returned
}

// Ticket is the outcome of one submitted item.
type Ticket[T any] struct {
	item T
	err  error
	done chan struct{}
	b    *Batcher[T]
}

// New returns a Batcher that commits with flush. Items queue until Run runs.
func New[T any](flush Flush[T], opts Options) *Batcher[T] {
	if opts.MaxBatch <= 0 {
		opts.MaxBatch = DefaultMaxBatch
	}
	if opts.QueueLimit <= 0 {
		opts.QueueLimit = 16 * opts.MaxBatch
	}
	return &Batcher[T]{
		flush: flush, max: opts.MaxBatch, linger: opts.Linger,
		queue:    make(chan *Ticket[T], opts.QueueLimit),
		stopping: make(chan struct{}), finished: make(chan struct{}),
	}
}

// Submit queues item for the next batch and returns its ticket; it does not wait for the flush.
// It waits while the queue is full, until ctx ends (ctx.Err()) or the Batcher closes (ErrClosed).
// After Close, or once Run has returned, it returns ErrClosed at once.
func (b *Batcher[T]) Submit(ctx context.Context, item T) (*Ticket[T], error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	t := &Ticket[T]{item: item, done: make(chan struct{}), b: b}
	b.mu.RLock()
	defer b.mu.RUnlock()
	if b.closed {
		return nil, ErrClosed
	}
	select {
	case b.queue <- t:
		return t, nil
	case <-ctx.Done():
		return nil, ctx.Err()
	case <-b.stopping:
		return nil, ErrClosed
	}
}

// Do submits item and waits for the outcome of its batch (see Submit and Ticket.Wait).
func (b *Batcher[T]) Do(ctx context.Context, item T) error {
	t, err := b.Submit(ctx, item)
	if err != nil {
		return err
	}
	return t.Wait(ctx)
}

// Wait returns the error of the flush that committed the ticket's item. If ctx ends first it
// returns ctx.Err(): the caller stops waiting, the item is still flushed. It never blocks once
// the Batcher has finished: an item it did not flush (there is none, short of a bug) gets
// ErrClosed.
func (t *Ticket[T]) Wait(ctx context.Context) error {
	select {
	case <-t.done:
		return t.err
	case <-ctx.Done():
		return ctx.Err()
	case <-t.b.finished:
		select {
		case <-t.done:
			return t.err
		default:
			return ErrClosed
		}
	}
}

// Run flushes batches with flushers concurrent flushes (1 when <= 0) until ctx ends or Close is
// called. Then it refuses new items, flushes every item submitted before, and returns. Run runs
// once: a second call, or a call after Close, returns at once.
func (b *Batcher[T]) Run(ctx context.Context, flushers int) {
	b.startMu.Lock()
	if b.started {
		b.startMu.Unlock()
		return
	}
	b.started = true
	b.startMu.Unlock()
	stopped := context.AfterFunc(ctx, b.stop)
	defer stopped()
	var wg sync.WaitGroup
	for range max(flushers, 1) {
		wg.Go(b.loop)
	}
	wg.Wait()
	b.finish()
}

// Close stops taking items, waits until every item submitted before is flushed, and makes Run
// return. Without a Run it flushes them itself. Close may be called more than once.
func (b *Batcher[T]) Close() {
	b.stop()
	b.startMu.Lock()
	started := b.started
	b.started = true // a Run from now on returns at once
	b.startMu.Unlock()
	if started {
		<-b.finished
		return
	}
	b.finish()
}

// stop wakes the flushers and every Submit waiting for room.
func (b *Batcher[T]) stop() { b.stopOnce.Do(func() { close(b.stopping) }) }

// finish refuses new items, flushes the queue and marks the Batcher finished. It runs once: from
// Run, or from Close when Run never started.
func (b *Batcher[T]) finish() {
	b.stop()
	b.mu.Lock()
	b.closed = true
	b.mu.Unlock()
	batch := make([]*Ticket[T], 0, b.max)
	items := make([]T, 0, b.max)
	for {
		batch = b.fill(batch[:0])
		if len(batch) == 0 {
			break
		}
		items = b.commit(batch, items)
	}
	close(b.finished)
}

// loop takes batches off the queue and flushes them until the Batcher stops.
func (b *Batcher[T]) loop() {
	batch := make([]*Ticket[T], 0, b.max)
	items := make([]T, 0, b.max)
	var timer *time.Timer
	for {
		select {
		case <-b.stopping:
			return
		case t := <-b.queue:
			batch = append(batch[:0], t)
		}
		batch = b.fill(batch)
		if b.linger > 0 && len(batch) < b.max {
			if timer == nil {
				timer = time.NewTimer(b.linger)
			} else {
				timer.Reset(b.linger)
			}
		linger:
			for len(batch) < b.max {
				select {
				case t := <-b.queue:
					batch = b.fill(append(batch, t))
				case <-timer.C:
					break linger
				case <-b.stopping:
					break linger // flush what is held; the drain takes the rest
				}
			}
			timer.Stop()
		}
		items = b.commit(batch, items)
	}
}

// fill adds queued items to batch, without waiting, up to the batch size.
func (b *Batcher[T]) fill(batch []*Ticket[T]) []*Ticket[T] {
	for len(batch) < b.max {
		select {
		case t := <-b.queue:
			batch = append(batch, t)
		default:
			return batch
		}
	}
	return batch
}

// commit flushes batch and hands the outcome to its tickets. It returns items for reuse.
func (b *Batcher[T]) commit(batch []*Ticket[T], items []T) []T {
	items = items[:0]
	for _, t := range batch {
		items = append(items, t.item)
	}
	err := b.flush(context.Background(), items)
	var zero T
	for i, t := range batch {
		t.err = err
		t.item = zero // the flusher is done with it; do not keep it alive through the ticket
		close(t.done)
		batch[i] = nil
	}
	clear(items)
	return items
}
