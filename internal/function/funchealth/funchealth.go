// Package funchealth reports a Redis-backed function's readiness to func-go's health probes.
package funchealth

import (
	"context"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Lifecycle tracks a Redis-backed function from Start to Stop: embedded in the function's
// struct, its Ready and Alive are promoted onto the function, where func-go's probes find them,
// and its Running tells handlers whether to take work. The zero value is not ready.
type Lifecycle struct {
	rdb     redis.UniversalClient
	running atomic.Bool
}

// Started records the function's Redis client and marks it ready; call it last in Start.
// A nil client (a test without Redis) is ready without a ping.
func (l *Lifecycle) Started(rdb redis.UniversalClient) {
	l.rdb = rdb
	l.running.Store(true)
}

// Running reports whether Started was called and Close was not, so handlers can refuse work
// while the function is starting or stopping.
func (l *Lifecycle) Running() bool { return l.running.Load() }

// RefuseWhileStarting answers 503 "<function> is starting" and reports true while the function
// is not Running, so that an HTTP handler returns at once and the caller retries later.
func (l *Lifecycle) RefuseWhileStarting(w http.ResponseWriter, function string) bool {
	if l.Running() {
		return false
	}
	http.Error(w, function+" is starting", http.StatusServiceUnavailable)
	return true
}

// Stopping marks the function not ready without closing Redis, for a Stop that still has work
// to flush before it calls Close.
func (l *Lifecycle) Stopping() { l.running.Store(false) }

// Ready is true once Started was called and Redis answers a PING.
func (l *Lifecycle) Ready(ctx context.Context) (bool, error) {
	if !l.running.Load() {
		return false, nil
	}
	if l.rdb == nil {
		return true, nil
	}
	return l.rdb.Ping(ctx).Err() == nil, nil
}

// Alive is true while the process serves: a Redis outage is a readiness matter, and restarting
// the function would not cure it.
func (l *Lifecycle) Alive(context.Context) (bool, error) { return true, nil }

// flushTimeout bounds the flush of the spans in Close; the platform waits 10 s (the runtime) or
// the pod's grace period (Knative) after SIGTERM before it kills the process.
const flushTimeout = 3 * time.Second

// Close marks the function not ready, sends the spans the process still buffers (func-go calls
// Stop, which ends with Close, after SIGTERM and once the server has finished its requests, just
// before the process exits), and closes its Redis client, if Started gave one.
func (l *Lifecycle) Close() error {
	l.running.Store(false)
	ctx, cancel := context.WithTimeout(context.Background(), flushTimeout)
	defer cancel()
	if err := tracing.Flush(ctx); err != nil {
		slog.Warn("spans not sent before stopping", "err", err)
	}
	if l.rdb == nil {
		return nil
	}
	return l.rdb.Close()
}
