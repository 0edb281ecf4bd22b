// Package deadline is the Redis sorted set of pending deadlines shared by the process manager,
// which schedules and cancels them, and functions/timer, which fires them when due.
package deadline

import (
	"context"
	_ "embed"
	"encoding/json"
	"fmt"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Redis keys. A deadline id is unique per occurrence ("<instance>:<step>:<attempt>:deadline").
const (
	KeyDeadlines = "knfaas:timer:deadlines" // zset: deadline id by due time (unix ms)
	KeyPayloads  = "knfaas:timer:payloads"  // hash: deadline id → Payload JSON
	KeyOutbox    = "knfaas:timer:outbox"    // hash: fired deadline id → Payload JSON, until published
)

// TypeFired is the event type functions/timer emits when a deadline is due; its id is the
// deadline id, so firing the same deadline again is recognisably the same event.
const TypeFired = "dev.knfaas.timer.fired"

// Payload describes what to do when a deadline is due.
type Payload struct {
	// Subject becomes the fired event's subject (the process instance).
	Subject string `json:"subject"`
	// Command is the id of the command whose wait the deadline bounds (knfaascommand extension).
	Command string `json:"command"`
	// Owner is copied to the knfaasowner extension, so each process manager's Trigger receives
	// only its own deadlines.
	Owner string `json:"owner"`
	// Due is when the deadline was due (unix ms).
	Due int64 `json:"due"`
	// TraceParent is the W3C traceparent of the span that scheduled the deadline, if any: the
	// fire is a span of the tick's trace, linked to this one.
	TraceParent string `json:"traceparent,omitempty"`
}

//go:embed fire.lua
var fireLua string

var fireScript = redis.NewScript(fireLua)

// Fired is a deadline moved to the outbox by Take.
type Fired struct {
	ID      string
	Payload Payload
	Raw     string
}

// Take atomically moves up to limit deadlines due at or before cutoff into the outbox and
// returns them. A deadline is taken once: a second Take with the same cutoff finds nothing.
func Take(ctx context.Context, rdb redis.Scripter, cutoff time.Time, limit int) ([]Fired, error) {
	vals, err := fireScript.Run(ctx, rdb, []string{KeyDeadlines, KeyPayloads, KeyOutbox}, cutoff.UnixMilli(), limit).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("taking due deadlines: %w", err)
	}
	return decode(vals)
}

// Pending returns up to limit fired deadlines still in the outbox: taken by a tick that crashed
// (or is still running) before publishing them.
func Pending(ctx context.Context, rdb redis.Cmdable, limit int64) ([]Fired, error) {
	var vals []string
	iter := rdb.HScan(ctx, KeyOutbox, 0, "", limit).Iterator()
	for iter.Next(ctx) && int64(len(vals)) < 2*limit {
		vals = append(vals, iter.Val())
	}
	if err := iter.Err(); err != nil {
		return nil, fmt.Errorf("reading the timer outbox: %w", err)
	}
	return decode(vals)
}

// Ack removes published deadlines from the outbox.
func Ack(ctx context.Context, rdb redis.Cmdable, ids ...string) error {
	if len(ids) == 0 {
		return nil
	}
	if err := rdb.HDel(ctx, KeyOutbox, ids...).Err(); err != nil {
		return fmt.Errorf("acknowledging %d fired deadlines: %w", len(ids), err)
	}
	return nil
}

// Schedule adds a deadline outside the process manager's script (tests, other owners). Without
// p.TraceParent, the deadline keeps the span context of ctx.
func Schedule(ctx context.Context, rdb redis.Cmdable, id string, p Payload) error {
	if p.TraceParent == "" {
		p.TraceParent = tracing.TraceParent(ctx)
	}
	b, err := json.Marshal(p)
	if err != nil {
		return fmt.Errorf("encoding deadline %s: %w", id, err)
	}
	_, err = rdb.TxPipelined(ctx, func(pipe redis.Pipeliner) error {
		pipe.ZAdd(ctx, KeyDeadlines, redis.Z{Score: float64(p.Due), Member: id})
		pipe.HSet(ctx, KeyPayloads, id, b)
		return nil
	})
	if err != nil {
		return fmt.Errorf("scheduling deadline %s: %w", id, err)
	}
	return nil
}

func decode(vals []string) ([]Fired, error) {
	out := make([]Fired, 0, len(vals)/2)
	for i := 0; i+1 < len(vals); i += 2 {
		f := Fired{ID: vals[i], Raw: vals[i+1]}
		if err := json.Unmarshal([]byte(vals[i+1]), &f.Payload); err != nil {
			return nil, fmt.Errorf("decoding deadline %s: %w", vals[i], err)
		}
		out = append(out, f)
	}
	return out, nil
}
