// Package funcstart does what the Start of a Redis-backed function does first: read its
// configuration from the environment, refuse a bad value naming the variable, set up tracing
// and open Redis.
package funcstart

import (
	"context"
	"fmt"
	"log/slog"

	"github.com/kelseyhightower/envconfig"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Checker is a configuration with rules its envconfig tags cannot state (a range, a bound, a
// relation between two variables). Check's error names the variable at fault.
type Checker interface {
	Check() error
}

// ReadConfig fills cfg, a pointer to a struct with envconfig tags, from the environment. Each
// default is stated once: in the field's default tag or, where it is a Go constant, in the value
// the field holds before the call (a variable left unset keeps it). When cfg is a Checker, Check
// runs next. Every error starts with the function's name. It also sets up tracing from the
// OTEL_* environment, once per process (tracing.SetupFunction); a tracing error is only logged.
func ReadConfig(function string, cfg any) error {
	if err := tracing.SetupFunction(function); err != nil {
		slog.Warn("tracing stays off", "function", function, "err", err)
	}
	if err := envconfig.Process("", cfg); err != nil {
		return fmt.Errorf("%s: reading configuration: %w", function, err)
	}
	if c, ok := cfg.(Checker); ok {
		if err := c.Check(); err != nil {
			return fmt.Errorf("%s: %w", function, err)
		}
	}
	return nil
}

// Open reads cfg as ReadConfig does, then builds the function's Redis client from REDIS_URL
// (redisconn.FromEnv). It does not dial: Redis may come up after the function, and readiness
// follows it.
func Open(function string, cfg any) (*redis.Client, error) {
	if err := ReadConfig(function, cfg); err != nil {
		return nil, err
	}
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", function, err)
	}
	return rdb, nil
}

// Start is the whole Start of a function that needs nothing but its configuration and Redis:
// it reads cfg (preset with any Go-constant defaults) and builds the client as Open does, then
// hands both to start.
func Start[C any](ctx context.Context, function string, cfg *C, start func(context.Context, C, *redis.Client) error) error {
	rdb, err := Open(function, cfg)
	if err != nil {
		return err
	}
	return start(ctx, *cfg, rdb)
}
