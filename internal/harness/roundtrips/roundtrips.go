// Package roundtrips counts the round trips a go-redis client makes, for tests and benchmarks that hold code to a number of them.
package roundtrips

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Counter is a go-redis hook (client.AddHook) that counts one round trip per command or
// pipeline sent.
type Counter struct{ n atomic.Int64 }

// Count is the number of round trips counted so far.
func (c *Counter) Count() int64 { return c.n.Load() }

// DialHook passes dialing through uncounted.
func (c *Counter) DialHook(next redis.DialHook) redis.DialHook { return next }

// ProcessHook counts a command sent alone.
func (c *Counter) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { c.n.Add(1); return next(ctx, cmd) }
}

// ProcessPipelineHook counts a pipeline, however many commands it holds.
func (c *Counter) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { c.n.Add(1); return next(ctx, cmds) }
}
