// Package funchealth reports a Redis-backed function's readiness to func-go's health probes.
package funchealth

import (
	"context"
	"sync/atomic"

	"github.com/redis/go-redis/v9"
)

// Redis is embedded in a function's struct so that its Ready and Alive are promoted onto the
// function and func-go's probes find them. The zero value is not ready.
type Redis struct {
	rdb     redis.UniversalClient
	running atomic.Bool
}

// Started records the function's Redis client and marks it ready; call it last in Start.
// A nil client (a test without Redis) is ready without a ping.
func (r *Redis) Started(rdb redis.UniversalClient) {
	r.rdb = rdb
	r.running.Store(true)
}

// Running reports whether Started was called and Close was not, so handlers can refuse work
// while the function is starting or stopping.
func (r *Redis) Running() bool { return r.running.Load() }

// Stopping marks the function not ready without closing Redis, for a Stop that still has work
// to flush before it calls Close.
func (r *Redis) Stopping() { r.running.Store(false) }

// Ready is true once Started was called and Redis answers a PING.
func (r *Redis) Ready(ctx context.Context) (bool, error) {
	if !r.running.Load() {
		return false, nil
	}
	if r.rdb == nil {
		return true, nil
	}
	return r.rdb.Ping(ctx).Err() == nil, nil
}

// Alive is true while the process serves: a Redis outage is a readiness matter, and restarting
// the function would not cure it.
func (r *Redis) Alive(context.Context) (bool, error) { return true, nil }

// Close marks the function not ready and closes its Redis client, if Started gave one.
func (r *Redis) Close() error {
	r.running.Store(false)
	if r.rdb == nil {
		return nil
	}
	return r.rdb.Close()
}
