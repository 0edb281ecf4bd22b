package dedup

import (
	"context"
	"errors"
	"sync"

	"github.com/redis/go-redis/v9"
)

// batcher sends the commands of concurrent requests to Redis together, as one pipeline per
// turn: each request still costs one round trip, but under load many requests share it, which
// saves the system calls that dominate a busy intake. An idle batcher sends a lone command at
// once, so a quiet intake pays only a goroutine hand-off.
type batcher struct {
	rdb  redis.UniversalClient
	in   chan *op
	stop chan struct{}
	wg   sync.WaitGroup
}

type op struct {
	cmd  redis.Cmder
	done chan struct{}
}

// maxBatch bounds one pipeline, so one turn's reply stays small.
const maxBatch = 128

// batchLoops is how many pipelines may be in flight at once.
const batchLoops = 2

var opPool = sync.Pool{New: func() any { return &op{done: make(chan struct{}, 1)} }}

func newBatcher(rdb redis.UniversalClient) *batcher {
	b := &batcher{rdb: rdb, in: make(chan *op, maxBatch), stop: make(chan struct{})}
	for range batchLoops {
		b.wg.Add(1)
		go b.loop()
	}
	return b
}

// do runs cmd in the next pipeline and waits for its reply. If ctx ends first the command may
// still run; the caller only stops waiting.
func (b *batcher) do(ctx context.Context, cmd redis.Cmder) error {
	o := opPool.Get().(*op)
	o.cmd = cmd
	select {
	case b.in <- o:
	case <-ctx.Done():
		opPool.Put(o)
		return ctx.Err()
	case <-b.stop:
		opPool.Put(o)
		return errors.New("dedup batcher closed")
	}
	select {
	case <-o.done:
		o.cmd = nil
		opPool.Put(o)
		return cmd.Err()
	case <-ctx.Done():
		// The loop still signals o.done later; o is not reused.
		return ctx.Err()
	}
}

func (b *batcher) loop() {
	defer b.wg.Done()
	batch := make([]*op, 0, maxBatch)
	for {
		select {
		case <-b.stop:
			b.drain(batch)
			return
		case o := <-b.in:
			batch = append(batch[:0], o)
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case o := <-b.in:
				batch = append(batch, o)
			default:
				break fill
			}
		}
		b.exec(batch)
	}
}

func (b *batcher) exec(batch []*op) {
	ctx := context.Background()
	if len(batch) == 1 {
		_ = b.rdb.Process(ctx, batch[0].cmd)
	} else {
		pipe := b.rdb.Pipeline()
		for _, o := range batch {
			_ = pipe.Process(ctx, o.cmd)
		}
		_, _ = pipe.Exec(ctx) // each command carries its own error
	}
	for _, o := range batch {
		o.done <- struct{}{}
	}
}

// drain runs what was queued before close, so no caller is left waiting.
func (b *batcher) drain(batch []*op) {
	for {
		batch = batch[:0]
	fill:
		for len(batch) < maxBatch {
			select {
			case o := <-b.in:
				batch = append(batch, o)
			default:
				break fill
			}
		}
		if len(batch) == 0 {
			return
		}
		b.exec(batch)
	}
}

func (b *batcher) close() {
	close(b.stop)
	b.wg.Wait()
}

// isNoScript reports Redis' answer to EVALSHA of a script it does not hold (after a restart
// or SCRIPT FLUSH): a Redis error reply, possibly wrapped, never any error whose text happens
// to start the same way.
func isNoScript(err error) bool {
	return redis.HasErrorPrefix(err, "NOSCRIPT")
}
