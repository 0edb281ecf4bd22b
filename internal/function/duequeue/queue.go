// Package duequeue is a retry queue in Redis: items due at a time in a sorted set, claimed under
// a lease, put back or finished, with timer deadlines that wake a function scaled to zero, and
// the loop that claims and runs them.
package duequeue

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/process/deadline"
)

// Keys name a queue's Redis keys.
type Keys struct {
	// Due is the sorted set item → when its next attempt is due (unix ms).
	Due string
	// Tries is the hash item → attempts made; an item's field is removed when it finishes.
	Tries string
	// Record prefixes each item's record: the record of item "a b" is at Record+"a" (the
	// item's first word), that of item "a" at Record+"a".
	Record string
	// RecordFields are the fields Claim reads of a record hash; none: the record is a string.
	RecordFields []string
	// Failing is the hash target → since when its attempts fail (unix ms); Counters the hash
	// "<target> <outcome>" → count. Empty: not kept.
	Failing, Counters string
}

// Queue is one function's queue of due items.
type Queue struct {
	rdb       redis.UniversalClient
	keys      Keys
	owner     string
	retention time.Duration
	maxLog    int
}

// New returns a queue whose wake-up deadlines carry owner (their knfaasowner, which the
// function's Trigger on dev.knfaas.timer.fired filters on), whose attempts logs keep the last
// maxLog attempts and live for retention after the last one.
func New(rdb redis.UniversalClient, keys Keys, owner string, retention time.Duration, maxLog int) *Queue {
	return &Queue{rdb: rdb, keys: keys, owner: owner, retention: retention, maxLog: maxLog}
}

// Claimed is one item Claim leased.
type Claimed struct {
	Item string
	// LeaseEnd is when the item is due again unless finished.
	LeaseEnd time.Time
	// Tries is how many attempts were made before this one.
	Tries int
	// Record holds the record's fields (Keys.RecordFields, or the one string); "" where the
	// record or a field is missing (it expired).
	Record []string
}

var claimScript = redis.NewScript(`
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
if #items > 0 then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[7])
end
local fields = #ARGV - 7
local out = {}
for _, item in ipairs(items) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[2], item)
  local key = ARGV[4] .. (string.match(item, '^(%S+)') or '')
  out[#out + 1] = item
  out[#out + 1] = redis.call('HGET', KEYS[2], item) or '0'
  if fields == 0 then
    out[#out + 1] = redis.call('GET', key) or ''
  else
    local rec = redis.call('HMGET', key, unpack(ARGV, 8))
    for i = 1, fields do out[#out + 1] = rec[i] or '' end
  end
end
return out
`)

// Claim takes up to limit items that are due at now with their records and leases them for
// lease: an item not finished by then (its instance died) is due again, and a timer deadline
// wakes the function for it.
func (q *Queue) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Claimed, error) {
	w := WakeAt(q.owner, now.Add(lease))
	args := []any{now.UnixMilli(), lease.Milliseconds(), limit, q.keys.Record, w.ID, w.Due, w.Payload}
	for _, f := range q.keys.RecordFields {
		args = append(args, f)
	}
	res, err := claimScript.Run(ctx, q.rdb, []string{q.keys.Due, q.keys.Tries, deadline.KeyDeadlines, deadline.KeyPayloads}, args...).StringSlice()
	if err != nil {
		return nil, err
	}
	stride := 2 + max(1, len(q.keys.RecordFields))
	out := make([]Claimed, 0, len(res)/stride)
	for i := 0; i+stride <= len(res); i += stride {
		tries, _ := strconv.Atoi(res[i+1])
		out = append(out, Claimed{Item: res[i], LeaseEnd: now.Add(lease), Tries: tries, Record: res[i+2 : i+stride]})
	}
	return out, nil
}

// Outcomes that keep an item in the queue; any other outcome Finish is given finishes it.
const (
	OutcomeRetry = "retry" // an attempt failed; due again at Next
	OutcomeDefer = "defer" // no attempt was made (bulkhead full, circuit open); due again at Next
)

// Health of a target after an attempt, for Keys.Failing.
const (
	HealthOK     = "ok"     // the target answered
	HealthFailed = "failed" // it did not, or failed
)

// Finish is what Finish records of a claimed item.
type Finish struct {
	Item string
	// Outcome is OutcomeRetry or OutcomeDefer (due again at Next), or the state the item
	// finished in, written to the field StateField of the hash StateKey if that still exists.
	Outcome    string
	Next       time.Time
	StateKey   string
	StateField string
	// Attempt (JSON) is appended to the list AttemptsKey and counted in Tries; nil: no attempt
	// was made.
	Attempt     []byte
	AttemptsKey string
	// Target is what the attempt went to: Health (HealthOK, HealthFailed or "") updates since
	// when its attempts fail, and Counter (an outcome, or "") is counted for it.
	Target  string
	Health  string
	Counter string
	Now     time.Time
	// RetryUntil, when set, makes Finish try again while Redis fails, until then: set it to
	// the lease's end (Claimed.LeaseEnd) after an attempt was made, so that an attempt the
	// target answered while Redis was unreachable is recorded once Redis is back rather than
	// made again when the lease runs out.
	RetryUntil time.Time
}

var finishScript = redis.NewScript(`
if not redis.call('ZSCORE', KEYS[1], ARGV[1]) then return 0 end
if ARGV[4] ~= '' then
  redis.call('RPUSH', KEYS[4], ARGV[4])
  redis.call('LTRIM', KEYS[4], -tonumber(ARGV[6]), -1)
  redis.call('PEXPIRE', KEYS[4], ARGV[5])
  redis.call('HINCRBY', KEYS[3], ARGV[1], 1)
end
if ARGV[2] == 'retry' or ARGV[2] == 'defer' then
  redis.call('ZADD', KEYS[1], ARGV[3], ARGV[1])
  redis.call('ZADD', KEYS[5], ARGV[8], ARGV[7])
  redis.call('HSET', KEYS[6], ARGV[7], ARGV[9])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
  redis.call('HDEL', KEYS[3], ARGV[1])
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], ARGV[10], ARGV[2]) end
end
if ARGV[13] ~= '' then redis.call('HINCRBY', KEYS[8], ARGV[11] .. ' ' .. ARGV[13], 1) end
if ARGV[12] == 'ok' then
  redis.call('HDEL', KEYS[7], ARGV[11])
elseif ARGV[12] == 'failed' then
  redis.call('HSETNX', KEYS[7], ARGV[11], ARGV[14])
  return tonumber(redis.call('HGET', KEYS[7], ARGV[11]))
end
return 1
`)

// finishRetryWait is the first wait before Finish tries again (f.RetryUntil); it doubles up to
// finishRetryMaxWait.
const (
	finishRetryWait    = 100 * time.Millisecond
	finishRetryMaxWait = 2 * time.Second
)

// Finish records f in one atomic step. It does nothing when the item is no longer in the queue
// (another instance finished it after this one's lease ran out). After an attempt with
// HealthFailed it returns since when the target's attempts have failed without a success in
// between; otherwise the zero time. While Redis fails it tries again until f.RetryUntil (not
// at all when that is zero) or until ctx ends, and then returns the last error.
func (q *Queue) Finish(ctx context.Context, f Finish) (failing time.Time, err error) {
	wait := finishRetryWait
	for {
		failing, err = q.finish(ctx, f)
		if err == nil || time.Now().Add(wait).After(f.RetryUntil) {
			return failing, err
		}
		select {
		case <-ctx.Done():
			return failing, err
		case <-time.After(wait):
		}
		wait = min(2*wait, finishRetryMaxWait)
	}
}

func (q *Queue) finish(ctx context.Context, f Finish) (failing time.Time, err error) {
	health, counter := f.Health, f.Counter
	if q.keys.Failing == "" {
		health = ""
	}
	if q.keys.Counters == "" {
		counter = ""
	}
	w := WakeAt(q.owner, f.Next)
	n, err := finishScript.Run(ctx, q.rdb,
		[]string{q.keys.Due, f.StateKey, q.keys.Tries, f.AttemptsKey, deadline.KeyDeadlines, deadline.KeyPayloads, q.keys.Failing, q.keys.Counters},
		f.Item, f.Outcome, f.Next.UnixMilli(), f.Attempt, q.retention.Milliseconds(), q.maxLog, w.ID, w.Due, w.Payload,
		f.StateField, f.Target, health, counter, f.Now.UnixMilli()).Int64()
	if err != nil {
		return time.Time{}, err
	}
	if health == HealthFailed && n > 1 {
		return time.UnixMilli(n), nil
	}
	return time.Time{}, nil
}

// Due counts the items due at now (not leased by an instance).
func (q *Queue) Due(ctx context.Context, now time.Time) (int64, error) {
	return q.rdb.ZCount(ctx, q.keys.Due, "-inf", strconv.FormatInt(now.UnixMilli(), 10)).Result()
}

// Scheduled counts every item waiting for an attempt, due or not.
func (q *Queue) Scheduled(ctx context.Context) (int64, error) {
	return q.rdb.ZCard(ctx, q.keys.Due).Result()
}

// Counters returns the counters (Keys.Counters) of every target: target → outcome → count,
// summed over every instance since the counters began.
func (q *Queue) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	out := map[string]map[string]int64{}
	if q.keys.Counters == "" {
		return out, nil
	}
	raw, err := q.rdb.HGetAll(ctx, q.keys.Counters).Result()
	if err != nil {
		return nil, err
	}
	for field, v := range raw {
		target, outcome, ok := strings.Cut(field, " ")
		n, err := strconv.ParseInt(v, 10, 64)
		if !ok || err != nil {
			continue
		}
		if out[target] == nil {
			out[target] = map[string]int64{}
		}
		out[target][outcome] = n
	}
	return out, nil
}

// Attempts decodes the attempts log at key, oldest first.
func Attempts[T any](ctx context.Context, rdb redis.UniversalClient, key string) ([]T, error) {
	raw, err := rdb.LRange(ctx, key, 0, -1).Result()
	if err != nil {
		return nil, err
	}
	out := make([]T, 0, len(raw))
	for i, r := range raw {
		var a T
		if err := json.Unmarshal([]byte(r), &a); err != nil {
			return nil, fmt.Errorf("attempt %d: %w", i+1, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// Wake is a timer deadline (functions/timer) that wakes a function when an item is due after
// it may have scaled to zero or died. One deadline per owner and minute slot serves every item
// due in that minute; the timer fires it on the tick at or after the slot, so an item is late
// by at most the timer's one-minute resolution.
type Wake struct {
	ID      string
	Due     int64
	Payload string
}

// WakeAt is owner's wake-up deadline for an item due at t.
func WakeAt(owner string, t time.Time) Wake {
	slot := t.Truncate(time.Minute)
	if slot.Before(t) {
		slot = slot.Add(time.Minute)
	}
	b, _ := json.Marshal(deadline.Payload{Subject: owner, Owner: owner, Due: slot.UnixMilli()})
	return Wake{ID: owner + ":wake:" + strconv.FormatInt(slot.Unix(), 10), Due: slot.UnixMilli(), Payload: string(b)}
}
