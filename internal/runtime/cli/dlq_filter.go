package cli

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/knfaas/knfaas/internal/function/deadletter"
)

// dlqFilterFlags are the selection flags shared by dlq list, redrive and purge.
type dlqFilterFlags struct {
	eventType, source, dest string
	code                    string
	since, until            string
	limit                   int
	parked                  bool
}

// filter validates the flags and turns them into a store filter; every error names its flag.
func (f dlqFilterFlags) filter(ids []string, now time.Time) (deadletter.Filter, error) {
	out := deadletter.Filter{IDs: ids, Type: f.eventType, Source: f.source, Dest: f.dest}
	if f.parked {
		out.Reason = deadletter.ReasonParked
	}
	if f.code != "" {
		code, err := strconv.Atoi(f.code)
		if err != nil || code < 100 || code > 599 {
			return out, fmt.Errorf("--code %q: want an HTTP status code between 100 and 599", f.code)
		}
		out.Code = code
	}
	var err error
	if out.Since, err = parseTimeFlag(f.since, now); err != nil {
		return out, fmt.Errorf("--since: %w", err)
	}
	if out.Until, err = parseTimeFlag(f.until, now); err != nil {
		return out, fmt.Errorf("--until: %w", err)
	}
	if !out.Since.IsZero() && !out.Until.IsZero() && out.Until.Before(out.Since) {
		return out, fmt.Errorf("--until %s is before --since %s", f.until, f.since)
	}
	if f.limit < 0 {
		return out, fmt.Errorf("--limit %d: want 0 (no limit) or more", f.limit)
	}
	out.Limit = f.limit
	return out, nil
}

// errTimeFlag explains the accepted forms of --since and --until.
var errTimeFlag = errors.New("want an RFC 3339 time (2026-01-02T15:04:05Z) or a positive age like 90s, 2h, 1h30m or 7d")

// parseTimeFlag reads --since/--until: an RFC 3339 time, or an age counted back from now in Go
// duration syntax extended with a leading whole number of days ("7d", "1d12h"), since dead
// letters are usually kept for days. Empty means no bound.
func parseTimeFlag(s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	age, err := parseAge(s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q: %w", s, errTimeFlag)
	}
	return now.Add(-age), nil
}

// maxDays keeps days*24h far from overflowing a time.Duration (about 292 years).
const maxDays = 100 * 365

func parseAge(s string) (time.Duration, error) {
	var age time.Duration
	if i := strings.IndexByte(s, 'd'); i >= 0 {
		days, err := strconv.Atoi(s[:i])
		if err != nil || days < 0 || days > maxDays || strings.ContainsAny(s[:i], "+-") {
			return 0, errTimeFlag
		}
		age = time.Duration(days) * 24 * time.Hour
		s = s[i+1:]
		if s == "" {
			return positive(age)
		}
	}
	if strings.HasPrefix(s, "-") || strings.HasPrefix(s, "+") {
		return 0, errTimeFlag
	}
	d, err := time.ParseDuration(s)
	if err != nil || d > time.Duration(maxDays)*24*time.Hour {
		return 0, errTimeFlag
	}
	return positive(age + d)
}

func positive(d time.Duration) (time.Duration, error) {
	if d <= 0 {
		return 0, errTimeFlag
	}
	return d, nil
}
