package notify

import (
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"
)

// DefaultSchedule is the wait before each retry, Standard Webhooks' (Svix's) schedule: after the
// first attempt, 5s, 5m, 30m, 2h, 5h, 10h and 10h: 8 attempts over about 27.6 hours.
const DefaultSchedule = "5s,5m,30m,2h,5h,10h,10h"

// Bounds of a schedule.
const (
	MaxRetries   = 30
	MaxStepDelay = 48 * time.Hour
	// MaxRetryAfter caps how long a Retry-After answer can delay the next attempt.
	MaxRetryAfter = 24 * time.Hour
)

// Schedule is the wait before each retry; len(Schedule)+1 attempts are made in all.
type Schedule []time.Duration

// ParseSchedule reads a comma-separated list of Go durations, each positive and at most
// MaxStepDelay, at most MaxRetries of them; an empty list means no retries.
func ParseSchedule(s string) (Schedule, error) {
	s = strings.TrimSpace(s)
	if s == "" {
		return Schedule{}, nil
	}
	parts := strings.Split(s, ",")
	if len(parts) > MaxRetries {
		return nil, fmt.Errorf("%d steps, at most %d", len(parts), MaxRetries)
	}
	out := make(Schedule, 0, len(parts))
	for i, p := range parts {
		d, err := time.ParseDuration(strings.TrimSpace(p))
		if err != nil || d <= 0 || d > MaxStepDelay {
			return nil, fmt.Errorf("step %d (%q) is not a positive Go duration up to %s", i+1, p, MaxStepDelay)
		}
		out = append(out, d)
	}
	return out, nil
}

// Horizon is the sum of the waits: how long after the first attempt the last one is due.
func (s Schedule) Horizon() time.Duration {
	var h time.Duration
	for _, d := range s {
		h += d
	}
	return h
}

// Attempts is how many attempts a message gets at an endpoint.
func (s Schedule) Attempts() int { return len(s) + 1 }

// Next is the wait after attempt n (1-based) failed, or false when n was the last.
func (s Schedule) Next(n int) (time.Duration, bool) {
	if n < 1 || n > len(s) {
		return 0, false
	}
	return s[n-1], true
}

// RetryAfter reads a Retry-After header (delay-seconds or an HTTP date) relative to now; zero
// when absent, unreadable or in the past; at most MaxRetryAfter.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	v := strings.TrimSpace(h.Get("Retry-After"))
	if v == "" {
		return 0
	}
	var d time.Duration
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		if secs > int64(MaxRetryAfter/time.Second) {
			return MaxRetryAfter
		}
		d = time.Duration(secs) * time.Second
	} else if t, err := http.ParseTime(v); err == nil {
		d = t.Sub(now)
	}
	return min(max(d, 0), MaxRetryAfter)
}
