package notify

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"slices"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/duequeue"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
)

// ErrNotFound is returned for a (message, endpoint) pair the store does not hold.
var ErrNotFound = errors.New("not found")

var retryScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], ARGV[1])
if not st then return -1 end
if st == 'delivered' then return 0 end
if redis.call('EXISTS', KEYS[5]) == 0 then return -2 end
redis.call('HSET', KEYS[1], ARGV[1], 'pending')
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[2])
if st == 'dead' then redis.call('HDEL', KEYS[3], ARGV[2]) end
redis.call('ZADD', KEYS[4], ARGV[5], ARGV[4])
redis.call('HSET', KEYS[6], ARGV[4], ARGV[6])
return 1
`)

// Retry schedules a pending or dead (message, endpoint) pair for an attempt now, with a fresh
// schedule when it was dead, and arms a timer deadline so that a function scaled to zero is
// woken for it. It returns false when the pair was already delivered (nothing is sent again).
func (s *Store) Retry(ctx context.Context, message, endpoint string, now time.Time) (bool, error) {
	w := duequeue.WakeAt(Owner, now)
	n, err := retryScript.Run(ctx, s.rdb,
		[]string{keyState + message, keyDue, keyTries, deadline.KeyDeadlines, keyMessage + message, deadline.KeyPayloads},
		endpoint, message+" "+endpoint, now.UnixMilli(), w.ID, w.Due, w.Payload).Int()
	switch {
	case err != nil:
		return false, fmt.Errorf("retrying %s at %s: %w", message, endpoint, err)
	case n == -1:
		return false, fmt.Errorf("message %s at endpoint %s: %w", message, endpoint, ErrNotFound)
	case n == -2:
		return false, fmt.Errorf("message %s: its record expired (NOTIFY_RETENTION): %w", message, ErrNotFound)
	}
	return n == 1, nil
}

// EndpointStatus is what the store knows of an endpoint: its circuit, disabled mark and
// delivery counters, and for an endpoint made through the API its URL and whether it is paused.
type EndpointStatus struct {
	Name string `json:"name"`
	// Source is SourceAPI for an endpoint made through the API, SourceConfigMap for any other
	// (the ConfigMap's, or one removed from it that Redis still remembers).
	Source   string           `json:"source"`
	URL      string           `json:"url,omitempty"`
	Paused   bool             `json:"paused,omitempty"`
	Circuit  BreakerState     `json:"circuit"`
	Disabled string           `json:"disabled,omitempty"`
	Counters map[string]int64 `json:"counters,omitempty"`
}

// Endpoints returns every endpoint Redis knows (made through the API, or with a circuit, a
// disabled mark or delivery counters), by name.
func (s *Store) Endpoints(ctx context.Context) ([]EndpointStatus, error) {
	disabled, err := s.Disabled(ctx)
	if err != nil {
		return nil, err
	}
	api, err := s.APIEndpoints(ctx)
	if err != nil {
		return nil, err
	}
	counters, err := s.Counters(ctx)
	if err != nil {
		return nil, err
	}
	names := map[string]bool{}
	for name := range disabled {
		names[name] = true
	}
	for name := range api {
		names[name] = true
	}
	for name := range counters {
		names[name] = true
	}
	circuits, err := breaker.Names(ctx, s.rdb, breakerLabels)
	if err != nil {
		return nil, err
	}
	for _, name := range circuits {
		names[name] = true
	}
	out := make([]EndpointStatus, 0, len(names))
	for _, name := range slices.Sorted(maps.Keys(names)) {
		c, err := ReadBreaker(ctx, s.rdb, name)
		if err != nil {
			return nil, err
		}
		st := EndpointStatus{Name: name, Source: SourceConfigMap, Circuit: c, Disabled: disabled[name], Counters: counters[name]}
		if a, ok := api[name]; ok {
			st.Source, st.URL, st.Paused = SourceAPI, a.URL, a.Paused
		}
		out = append(out, st)
	}
	return out, nil
}
