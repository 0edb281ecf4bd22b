package embedded

import (
	"context"
	"fmt"
	"os"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/knfaas/knfaas/internal/function/redisconn"
)

// openRedis dials the Redis of Options.RedisURL, or starts an embedded one, with a pool sized
// by the given number of triggers.
func (r *Runtime) openRedis(ctx context.Context, triggers int) error {
	if r.opts.RedisURL == "" {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("starting embedded redis: %w", err)
		}
		r.mini = m
		r.redisURL = "redis://" + m.Addr() + "/0"
		fmt.Fprintf(r.opts.Out, "redis: embedded (miniredis) on %s — set REDIS_URL to use a real server; embedded data is lost on exit\n", m.Addr())
	} else {
		r.redisURL = r.opts.RedisURL
		fmt.Fprintf(r.opts.Out, "redis: %s\n", redactURL(r.redisURL))
	}
	// Each broker stream's shared reader holds one connection in a blocking XREAD; the rest
	// serve the ingress' writes, the Triggers' acknowledgements and reclaims. The bound is
	// generous on purpose: go-redis opens connections only as they are needed.
	pool := 64 + 2*triggers
	rdb, err := redisconn.New(r.redisURL, redisconn.Options{CAFile: os.Getenv(redisconn.EnvCAFile), PoolSize: pool})
	if err != nil {
		return err
	}
	r.rdb = rdb
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := redisconn.Ping(pctx, rdb); err != nil {
		return fmt.Errorf("redis at %s is not reachable: %w", redactURL(r.redisURL), err)
	}
	return nil
}

// advanceEmbeddedClock moves miniredis' clock with the wall clock: miniredis expires keys only
// when told that time passed.
func (r *Runtime) advanceEmbeddedClock(ctx context.Context) {
	if r.mini == nil {
		return
	}
	last := time.Now()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.mini.FastForward(now.Sub(last))
			r.mini.SetTime(now)
			last = now
		}
	}
}
