package mail

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

// Prefix starts every Redis key of the mail function.
const Prefix = "knfaas:mail:"

// Key families (see functions/mail/README.md).
const (
	keyMessage  = Prefix + "msg:"      // hash per mail id: state, mail (JSON), event (JSON); TTL Retention
	keyDue      = Prefix + "due"       // zset mail id → when its next attempt is due (unix ms)
	keyTries    = Prefix + "tries"     // hash mail id → attempts made; removed when finished
	keyAttempts = Prefix + "attempts:" // list per mail id: the last MaxAttemptLog attempts; TTL Retention
)

// MaxAttemptLog is how many attempts are kept per mail.
const MaxAttemptLog = 32

// States of a mail.
const (
	StatePending   = "pending"
	StateDelivered = "delivered"
	StateDead      = "dead"
	// StateQueued is what Enqueue answers when it claimed the key and scheduled the mail.
	StateQueued = "queued"
)

// Owner is the knfaasowner of the timer deadlines that wake the function: its Trigger on
// dev.knfaas.timer.fired filters on it.
const Owner = "mail"

// Store keeps the idempotency claims, the mails, their retry schedule and attempts in Redis.
type Store struct {
	rdb       redis.UniversalClient
	retention time.Duration
}

// NewStore returns a Store whose records live for retention after they were enqueued: longer
// than the retry horizon, so that a redelivery or redrive of a delivered mail is still known.
func NewStore(rdb redis.UniversalClient, retention time.Duration) *Store {
	return &Store{rdb: rdb, retention: retention}
}

var enqueueScript = redis.NewScript(`
local st = redis.call('HGET', KEYS[1], 'state')
if st and not (st == 'dead' and ARGV[5] == '1') then return st end
redis.call('HSET', KEYS[1], 'state', 'pending', 'mail', ARGV[1], 'event', ARGV[2])
redis.call('PEXPIRE', KEYS[1], ARGV[3])
redis.call('ZADD', KEYS[2], ARGV[4], ARGV[6])
redis.call('HDEL', KEYS[3], ARGV[6])
return 'queued'
`)

// Enqueue claims the mail's idempotency key and schedules an immediate attempt, in one atomic
// step, and returns StateQueued. When the key is already claimed it changes nothing and returns
// the mail's state (pending, delivered or dead): one key, one mail. A dead mail is scheduled
// again, with a fresh schedule, only when redrive is true (a redrive of its dead letter).
func (s *Store) Enqueue(ctx context.Context, m *Mail, event []byte, redrive bool, now time.Time) (string, error) {
	b, err := json.Marshal(m)
	if err != nil {
		return "", fmt.Errorf("encoding mail %s: %w", m.ID, err)
	}
	flag := "0"
	if redrive {
		flag = "1"
	}
	st, err := enqueueScript.Run(ctx, s.rdb, []string{keyMessage + m.ID, keyDue, keyTries},
		b, event, s.retention.Milliseconds(), now.UnixMilli(), flag, m.ID).Text()
	if err != nil {
		return "", fmt.Errorf("enqueueing mail %s: %w", m.ID, err)
	}
	return st, nil
}

// Job is one claimed mail.
type Job struct {
	ID string
	// Tries is how many attempts were made before this one.
	Tries int
	// Mail is nil when the record expired.
	Mail *Mail
	// Event is the request event as JSON (for its dead letter).
	Event []byte
}

var claimScript = redis.NewScript(`
local items = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[3])
if #items > 0 then
  redis.call('ZADD', KEYS[3], ARGV[6], ARGV[5])
  redis.call('HSET', KEYS[4], ARGV[5], ARGV[7])
end
local out = {}
for _, id in ipairs(items) do
  redis.call('ZADD', KEYS[1], ARGV[1] + ARGV[2], id)
  local rec = redis.call('HMGET', ARGV[4] .. id, 'mail', 'event')
  out[#out + 1] = id
  out[#out + 1] = rec[1] or ''
  out[#out + 1] = rec[2] or ''
  out[#out + 1] = redis.call('HGET', KEYS[2], id) or '0'
end
return out
`)

// Claim takes up to limit mails due at now and leases them for lease: a mail not finished by
// then (the instance died) is due again, and a timer deadline wakes the function for it.
func (s *Store) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Job, error) {
	w := wakeAt(now.Add(lease))
	res, err := claimScript.Run(ctx, s.rdb, []string{keyDue, keyTries, deadline.KeyDeadlines, deadline.KeyPayloads},
		now.UnixMilli(), lease.Milliseconds(), limit, keyMessage, w.id, w.due, w.payload).StringSlice()
	if err != nil {
		return nil, fmt.Errorf("claiming due mails: %w", err)
	}
	jobs := make([]Job, 0, len(res)/4)
	for i := 0; i+3 < len(res); i += 4 {
		tries, _ := strconv.Atoi(res[i+3])
		j := Job{ID: res[i], Tries: tries, Event: []byte(res[i+2])}
		if res[i+1] != "" {
			j.Mail = &Mail{}
			if err := json.Unmarshal([]byte(res[i+1]), j.Mail); err != nil {
				return nil, fmt.Errorf("decoding mail %s: %w", j.ID, err)
			}
		}
		jobs = append(jobs, j)
	}
	return jobs, nil
}

// Outcomes of a job as finish records them, besides StateDelivered and StateDead.
const (
	outcomeRetry = "retry" // an attempt failed; due again at next
	outcomeDefer = "defer" // no attempt was made (bulkhead full, circuit open); due again at next
)

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
  if redis.call('EXISTS', KEYS[2]) == 1 then redis.call('HSET', KEYS[2], 'state', ARGV[2]) end
end
return 1
`)

// finish records the attempt a (nil when none was made) and the mail's new state: outcomeRetry
// or outcomeDefer at next, or StateDelivered / StateDead. It does nothing when the mail is no
// longer scheduled (another instance finished it after this one's lease ran out).
func (s *Store) finish(ctx context.Context, j Job, outcome string, next time.Time, a *Attempt) error {
	logged := ""
	if a != nil {
		b, err := json.Marshal(a)
		if err != nil {
			return err
		}
		logged = string(b)
	}
	w := wakeAt(next)
	err := finishScript.Run(ctx, s.rdb,
		[]string{keyDue, keyMessage + j.ID, keyTries, keyAttempts + j.ID, deadline.KeyDeadlines, deadline.KeyPayloads},
		j.ID, outcome, next.UnixMilli(), logged, s.retention.Milliseconds(), MaxAttemptLog, w.id, w.due, w.payload).Err()
	if err != nil {
		return fmt.Errorf("recording %s of mail %s: %w", outcome, j.ID, err)
	}
	return nil
}

// wake is a timer deadline (functions/timer) that wakes the function when a retry is due after
// it may have scaled to zero or died. One deadline per minute slot serves every retry due in
// that minute; the timer fires it on the tick at or after the slot, so a retry is late by at
// most the timer's one-minute resolution.
type wake struct {
	id      string
	due     int64
	payload string
}

func wakeAt(t time.Time) wake {
	slot := t.Truncate(time.Minute)
	if slot.Before(t) {
		slot = slot.Add(time.Minute)
	}
	b, _ := json.Marshal(deadline.Payload{Subject: Owner, Owner: Owner, Due: slot.UnixMilli()})
	return wake{id: "mail:wake:" + strconv.FormatInt(slot.Unix(), 10), due: slot.UnixMilli(), payload: string(b)}
}

// Attempt is one send attempt as the attempts log keeps it.
type Attempt struct {
	At     time.Time `json:"at"`
	Number int       `json:"attempt"`
	// Code is the SMTP reply code of a failure, when the server gave one.
	Code    int     `json:"code,omitempty"`
	Latency float64 `json:"latencyMs"`
	Error   string  `json:"error,omitempty"`
	// Outcome is delivered, retry or dead.
	Outcome string `json:"outcome"`
	// Next is when the next attempt is due, for a retry.
	Next time.Time `json:"next,omitzero"`
	// Breaker is the server's circuit when the attempt was let through.
	Breaker string `json:"breaker,omitempty"`
}

// Attempts returns the attempts log of a mail, oldest first.
func (s *Store) Attempts(ctx context.Context, id string) ([]Attempt, error) {
	raw, err := s.rdb.LRange(ctx, keyAttempts+id, 0, -1).Result()
	if err != nil {
		return nil, fmt.Errorf("reading attempts of %s: %w", id, err)
	}
	out := make([]Attempt, 0, len(raw))
	for _, r := range raw {
		var a Attempt
		if err := json.Unmarshal([]byte(r), &a); err != nil {
			return nil, fmt.Errorf("attempt of %s: %w", id, err)
		}
		out = append(out, a)
	}
	return out, nil
}

// State returns a mail's state, "" when the store does not know it.
func (s *Store) State(ctx context.Context, id string) (string, error) {
	st, err := s.rdb.HGet(ctx, keyMessage+id, "state").Result()
	if err == redis.Nil {
		return "", nil
	}
	if err != nil {
		return "", fmt.Errorf("reading the state of %s: %w", id, err)
	}
	return st, nil
}

// Due counts mails due at now (not leased by an instance).
func (s *Store) Due(ctx context.Context, now time.Time) (int64, error) {
	return s.rdb.ZCount(ctx, keyDue, "-inf", strconv.FormatInt(now.UnixMilli(), 10)).Result()
}

// Scheduled counts every mail waiting for an attempt, due or not.
func (s *Store) Scheduled(ctx context.Context) (int64, error) {
	return s.rdb.ZCard(ctx, keyDue).Result()
}

// errorText cuts an error message for the attempts log and dead letters.
func errorText(err error) string {
	s := err.Error()
	if len(s) > 512 {
		s = strings.ToValidUTF8(s[:512], "")
	}
	return s
}
