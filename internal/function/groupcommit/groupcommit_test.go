package groupcommit_test

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/groupcommit"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// recorder is a Flush that remembers its batches; fail, when set, is every flush's error, and
// gate, when set, holds each flush until it is closed.
type recorder struct {
	mu      sync.Mutex
	batches [][]int
	fail    error
	gate    chan struct{}
	started chan struct{} // receives once per flush, when set
}

func (r *recorder) flush(_ context.Context, batch []int) error {
	if r.started != nil {
		r.started <- struct{}{}
	}
	if r.gate != nil {
		<-r.gate
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	r.batches = append(r.batches, slices.Clone(batch))
	return r.fail
}

func (r *recorder) sizes() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for _, b := range r.batches {
		out = append(out, len(b))
	}
	return out
}

func (r *recorder) items() []int {
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for _, b := range r.batches {
		out = append(out, b...)
	}
	slices.Sort(out)
	return out
}

// submitAll submits items and returns their tickets.
func submitAll(t *testing.T, b *groupcommit.Batcher[int], items ...int) []*groupcommit.Ticket[int] {
	t.Helper()
	var tickets []*groupcommit.Ticket[int]
	for _, i := range items {
		tk, err := b.Submit(context.Background(), i)
		if err != nil {
			t.Fatalf("Submit(%d): %v", i, err)
		}
		tickets = append(tickets, tk)
	}
	return tickets
}

// waitAll waits for every ticket, within a bound, and returns their errors.
func waitAll(t *testing.T, tickets []*groupcommit.Ticket[int]) []error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	var errs []error
	for _, tk := range tickets {
		err := tk.Wait(ctx)
		if errors.Is(err, context.DeadlineExceeded) {
			t.Fatal("a ticket was not flushed within 5s")
		}
		errs = append(errs, err)
	}
	return errs
}

// running starts Run with flushers and returns a function that cancels it and waits for it.
func running(b *groupcommit.Batcher[int], flushers int) (stop func()) {
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { b.Run(ctx, flushers); close(done) }()
	return func() { cancel(); <-done }
}

func TestBatcher(t *testing.T) {
	errFlush := errors.New("redis said no")
	tests := map[string]struct {
		opts groupcommit.Options
		rec  *recorder // nil: one that records and succeeds
		run  func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder)
	}{
		"a full batch flushes without waiting for the linger": {
			opts: groupcommit.Options{MaxBatch: 4, Linger: time.Hour},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				defer running(b, 1)()
				for _, err := range waitAll(t, submitAll(t, b, 1, 2, 3, 4)) {
					if err != nil {
						t.Fatal(err)
					}
				}
				if got := rec.sizes(); !slices.Equal(got, []int{4}) {
					t.Fatalf("batch sizes %v, want [4]", got)
				}
			},
		},
		"a partial batch flushes once the linger passed": {
			opts: groupcommit.Options{MaxBatch: 100, Linger: 50 * time.Millisecond},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				defer running(b, 1)()
				start := time.Now()
				waitAll(t, submitAll(t, b, 1, 2, 3))
				if took := time.Since(start); took < 50*time.Millisecond {
					t.Fatalf("flushed after %s, before the 50ms linger", took)
				}
				if got := rec.sizes(); !slices.Equal(got, []int{3}) {
					t.Fatalf("batch sizes %v, want [3]", got)
				}
			},
		},
		"without a linger a lone item flushes at once": {
			opts: groupcommit.Options{MaxBatch: 100},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				defer running(b, 1)()
				if err := b.Do(context.Background(), 7); err != nil {
					t.Fatal(err)
				}
				if got := rec.items(); !slices.Equal(got, []int{7}) {
					t.Fatalf("flushed %v, want [7]", got)
				}
			},
		},
		"close drains the items submitted before it": {
			opts: groupcommit.Options{MaxBatch: 2, Linger: time.Hour},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				stop := running(b, 1)
				defer stop()
				tickets := submitAll(t, b, 1, 2, 3, 4, 5)
				b.Close()
				for _, err := range waitAll(t, tickets) {
					if err != nil {
						t.Fatal(err)
					}
				}
				if got := rec.items(); !slices.Equal(got, []int{1, 2, 3, 4, 5}) {
					t.Fatalf("flushed %v, want 1..5", got)
				}
			},
		},
		"the end of Run's context drains the items submitted before it": {
			opts: groupcommit.Options{MaxBatch: 100, Linger: time.Hour},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				stop := running(b, 2)
				tickets := submitAll(t, b, 1, 2, 3)
				stop()
				waitAll(t, tickets)
				if got := rec.items(); !slices.Equal(got, []int{1, 2, 3}) {
					t.Fatalf("flushed %v, want 1..3", got)
				}
			},
		},
		"close without Run flushes what was submitted": {
			opts: groupcommit.Options{},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				tickets := submitAll(t, b, 1, 2)
				b.Close()
				waitAll(t, tickets)
				if got := rec.items(); !slices.Equal(got, []int{1, 2}) {
					t.Fatalf("flushed %v, want [1 2]", got)
				}
				b.Run(context.Background(), 1) // returns at once
			},
		},
		"a waiter whose context ends stops waiting; its item is still flushed": {
			opts: groupcommit.Options{},
			rec:  &recorder{gate: make(chan struct{}), started: make(chan struct{}, 1)},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				defer running(b, 1)()
				ctx, cancel := context.WithCancel(context.Background())
				tk, err := b.Submit(ctx, 1)
				if err != nil {
					t.Fatal(err)
				}
				<-rec.started // the flush holds the item
				cancel()
				if err := tk.Wait(ctx); !errors.Is(err, context.Canceled) {
					t.Fatalf("Wait = %v, want context.Canceled", err)
				}
				close(rec.gate)
				waitAll(t, []*groupcommit.Ticket[int]{tk})
				if got := rec.items(); !slices.Equal(got, []int{1}) {
					t.Fatalf("flushed %v, want [1]", got)
				}
			},
		},
		"a submitter whose context ends while the queue is full stops waiting": {
			opts: groupcommit.Options{MaxBatch: 1, QueueLimit: 1},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				submitAll(t, b, 1) // no Run: the queue stays full
				ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
				defer cancel()
				if _, err := b.Submit(ctx, 2); !errors.Is(err, context.DeadlineExceeded) {
					t.Fatalf("Submit = %v, want context.DeadlineExceeded", err)
				}
				b.Close()
			},
		},
		"submitting after close fails at once": {
			opts: groupcommit.Options{},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				b.Close()
				if err := b.Do(context.Background(), 1); !errors.Is(err, groupcommit.ErrClosed) {
					t.Fatalf("Do after Close = %v, want ErrClosed", err)
				}
			},
		},
		"submitting after Run returned fails at once": {
			opts: groupcommit.Options{},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				running(b, 1)()
				if err := b.Do(context.Background(), 1); !errors.Is(err, groupcommit.ErrClosed) {
					t.Fatalf("Do after Run returned = %v, want ErrClosed", err)
				}
				if len(rec.items()) != 0 {
					t.Fatalf("flushed %v after Run returned", rec.items())
				}
			},
		},
		"a submitter waiting for room when the batcher closes is refused": {
			opts: groupcommit.Options{MaxBatch: 1, QueueLimit: 1},
			rec:  &recorder{gate: make(chan struct{}), started: make(chan struct{}, 1)},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				stop := running(b, 1)
				first := submitAll(t, b, 1)
				<-rec.started // the flusher holds 1
				submitAll(t, b, 2)
				refused := make(chan error, 1)
				go func() { _, err := b.Submit(context.Background(), 3); refused <- err }()
				closed := make(chan struct{})
				go func() { b.Close(); close(closed) }()
				if err := <-refused; !errors.Is(err, groupcommit.ErrClosed) {
					t.Fatalf("Submit while closing = %v, want ErrClosed", err)
				}
				close(rec.gate)
				<-rec.started // the drain flushes 2
				<-closed
				stop()
				waitAll(t, first)
				if got := rec.items(); !slices.Equal(got, []int{1, 2}) {
					t.Fatalf("flushed %v, want [1 2]", got)
				}
			},
		},
		"a flush error reaches every waiter of its batch": {
			opts: groupcommit.Options{MaxBatch: 3, Linger: time.Hour},
			rec:  &recorder{fail: errFlush},
			run: func(t *testing.T, b *groupcommit.Batcher[int], rec *recorder) {
				defer running(b, 1)()
				for i, err := range waitAll(t, submitAll(t, b, 1, 2, 3)) {
					if !errors.Is(err, errFlush) {
						t.Fatalf("waiter %d got %v, want the flush error", i, err)
					}
				}
				if got := rec.sizes(); !slices.Equal(got, []int{3}) {
					t.Fatalf("batch sizes %v, want [3]", got)
				}
			},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			rec := tc.rec
			if rec == nil {
				rec = &recorder{}
			}
			b := groupcommit.New(rec.flush, tc.opts)
			tc.run(t, b, rec)
		})
	}
}

// TestConcurrentSubmittersOnRedis has many goroutines increment their own counters through one
// Batcher whose flush is a Redis pipeline: every submitter gets its own reply, and every command
// runs exactly once. Run it with -race.
func TestConcurrentSubmittersOnRedis(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	tests := map[string]struct {
		opts     groupcommit.Options
		flushers int
	}{
		"one flusher, no linger":        {groupcommit.Options{MaxBatch: 64}, 1},
		"two flushers, no linger":       {groupcommit.Options{MaxBatch: 64}, 2},
		"two flushers, a 1ms linger":    {groupcommit.Options{MaxBatch: 64, Linger: time.Millisecond}, 2},
		"batches of one, a small queue": {groupcommit.Options{MaxBatch: 1, QueueLimit: 1}, 2},
		"large batches, a tiny queue":   {groupcommit.Options{MaxBatch: 512, QueueLimit: 8}, 1},
		"eight flushers, small batches": {groupcommit.Options{MaxBatch: 8}, 8},
	}
	const submitters, each = 32, 50
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			ctx := context.Background()
			prefix := "groupcommit-test:" + name + ":"
			b := groupcommit.New(pipeline(rdb), tc.opts)
			stop := make(chan struct{})
			go func() { b.Run(ctx, tc.flushers); close(stop) }()
			var wg sync.WaitGroup
			errs := make(chan error, submitters)
			for s := range submitters {
				wg.Go(func() {
					for i := range each {
						cmd := redis.NewIntCmd(ctx, "incr", fmt.Sprintf("%s%d:%d", prefix, s, i))
						if err := b.Do(ctx, cmd); err != nil {
							errs <- err
							return
						}
						if n, err := cmd.Result(); err != nil || n != 1 {
							errs <- fmt.Errorf("submitter %d item %d: reply %d, %v; want 1", s, i, n, err)
							return
						}
					}
				})
			}
			wg.Wait()
			b.Close()
			<-stop
			close(errs)
			for err := range errs {
				t.Error(err)
			}
			keys, err := rdb.Keys(ctx, prefix+"*").Result()
			if err != nil {
				t.Fatal(err)
			}
			if len(keys) != submitters*each {
				t.Fatalf("%d counters in redis, want %d", len(keys), submitters*each)
			}
		})
	}
}

// pipeline is a Flush that runs its commands in one Redis pipeline; each command carries its
// own reply and error.
func pipeline(rdb redis.UniversalClient) groupcommit.Flush[redis.Cmder] {
	return func(ctx context.Context, batch []redis.Cmder) error {
		pipe := rdb.Pipeline()
		for _, c := range batch {
			_ = pipe.Process(ctx, c)
		}
		_, _ = pipe.Exec(ctx)
		return nil
	}
}
