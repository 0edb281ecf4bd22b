package dedup

import (
	"context"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/groupcommit"
)

// batcher sends the commands of concurrent requests to Redis together, as one pipeline per
// turn: each request still costs one round trip, but under load many requests share it, which
// saves the system calls that dominate a busy intake. An idle batcher sends a lone command at
// once, so a quiet intake pays only a goroutine hand-off.
type batcher struct {
	commands *groupcommit.Batcher[redis.Cmder]
}

// maxBatch bounds one pipeline, so one turn's reply stays small.
const maxBatch = 128

// batchLoops is how many pipelines may be in flight at once.
const batchLoops = 2

func newBatcher(rdb redis.UniversalClient) *batcher {
	b := &batcher{commands: groupcommit.New(func(ctx context.Context, batch []redis.Cmder) error {
		exec(ctx, rdb, batch)
		return nil // each command carries its own error
	}, groupcommit.Options{MaxBatch: maxBatch, QueueLimit: maxBatch})}
	go b.commands.Run(context.Background(), batchLoops)
	return b
}

// do runs cmd in the next pipeline and waits for its reply. If ctx ends first the command may
// still run; the caller only stops waiting.
func (b *batcher) do(ctx context.Context, cmd redis.Cmder) error {
	if err := b.commands.Do(ctx, cmd); err != nil {
		return err // ctx.Err(), or groupcommit.ErrClosed after close
	}
	return cmd.Err()
}

func exec(ctx context.Context, rdb redis.UniversalClient, batch []redis.Cmder) {
	if len(batch) == 1 {
		_ = rdb.Process(ctx, batch[0])
		return
	}
	pipe := rdb.Pipeline()
	for _, cmd := range batch {
		_ = pipe.Process(ctx, cmd)
	}
	_, _ = pipe.Exec(ctx) // each command carries its own error
}

// close runs what was queued before it, so no caller is left waiting, and stops the pipelines.
func (b *batcher) close() { b.commands.Close() }

// isNoScript reports Redis' answer to EVALSHA of a script it does not hold (after a restart
// or SCRIPT FLUSH): a Redis error reply, possibly wrapped, never any error whose text happens
// to start the same way.
func isNoScript(err error) bool {
	return redis.HasErrorPrefix(err, "NOSCRIPT")
}
