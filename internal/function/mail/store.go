package mail

import (
	"context"
	"encoding/json"
	"fmt"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/duequeue"
)

// Prefix starts every Redis key of the mail function.
const Prefix = "knfaas:mail:"

// Key families (see functions/mail/README.md).
const (
	keyMessage  = Prefix + "msg:"      // hash per mail id: state, mail (JSON), event (JSON); TTL Retention
	keyDue      = Prefix + "due"       // zset mail id → when its next attempt is due (unix ms)
	keyTries    = Prefix + "tries"     // hash mail id → attempts made; removed when finished
	keyAttempts = Prefix + "attempts:" // list per mail id: the last MaxAttemptLog attempts; TTL Retention
	keyCounters = Prefix + "counters"  // hash "<server> <outcome>" → count, since the first (see Counters)
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
	queue     *duequeue.Queue
}

// NewStore returns a Store whose records live for retention after they were enqueued: longer
// than the retry horizon, so that a redelivery or redrive of a delivered mail is still known.
func NewStore(rdb redis.UniversalClient, retention time.Duration) *Store {
	keys := duequeue.Keys{Due: keyDue, Tries: keyTries, Record: keyMessage, RecordFields: []string{"mail", "event"}, Counters: keyCounters}
	return &Store{rdb: rdb, retention: retention, queue: duequeue.New(rdb, keys, Owner, retention, MaxAttemptLog)}
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
	// leaseEnd is when the mail is due again unless finished.
	leaseEnd time.Time
}

// Claim takes up to limit mails due at now and leases them for lease: a mail not finished by
// then (the instance died) is due again, and a timer deadline wakes the function for it.
func (s *Store) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Job, error) {
	claimed, err := s.queue.Claim(ctx, now, lease, limit)
	if err != nil {
		return nil, fmt.Errorf("claiming due mails: %w", err)
	}
	jobs := make([]Job, 0, len(claimed))
	for _, c := range claimed {
		j := Job{ID: c.Item, Tries: c.Tries, Event: []byte(c.Record[1]), leaseEnd: c.LeaseEnd}
		if c.Record[0] != "" {
			j.Mail = &Mail{}
			if err := json.Unmarshal([]byte(c.Record[0]), j.Mail); err != nil {
				return nil, fmt.Errorf("decoding mail %s: %w", j.ID, err)
			}
		}
		jobs = append(jobs, j)
	}
	return jobs, nil
}

// Outcomes of a job as finish records them, besides StateDelivered and StateDead.
const (
	outcomeRetry = duequeue.OutcomeRetry // an attempt failed; due again at next
	outcomeDefer = duequeue.OutcomeDefer // no attempt was made (bulkhead full, circuit open); due again at next
)

// finish records the attempt a (nil when none was made) and the mail's new state: outcomeRetry
// or outcomeDefer at next, or StateDelivered / StateDead. It does nothing when the mail is no
// longer scheduled (another instance finished it after this one's lease ran out).
func (s *Store) finish(ctx context.Context, j Job, server, outcome string, next time.Time, a *Attempt) error {
	var logged []byte
	if a != nil {
		var err error
		if logged, err = json.Marshal(a); err != nil {
			return err
		}
	}
	f := duequeue.Finish{Item: j.ID, Outcome: outcome, Next: next, StateKey: keyMessage + j.ID, StateField: "state",
		Attempt: logged, AttemptsKey: keyAttempts + j.ID, Target: server, Counter: counterOf(outcome, a)}
	if a != nil && a.Number > 0 {
		// The server may have taken the mail: record that while the lease holds, or it is sent
		// again when the lease runs out.
		f.RetryUntil = j.leaseEnd.Add(-leaseMargin)
	}
	_, err := s.queue.Finish(ctx, f)
	if err != nil {
		return fmt.Errorf("recording %s of mail %s: %w", outcome, j.ID, err)
	}
	return nil
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
	out, err := duequeue.Attempts[Attempt](ctx, s.rdb, keyAttempts+id)
	if err != nil {
		return nil, fmt.Errorf("reading attempts of %s: %w", id, err)
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
	return s.queue.Due(ctx, now)
}

// Scheduled counts every mail waiting for an attempt, due or not.
func (s *Store) Scheduled(ctx context.Context) (int64, error) {
	return s.queue.Scheduled(ctx)
}

// errorText cuts an error message for the attempts log and dead letters.
func errorText(err error) string {
	s := err.Error()
	if len(s) > 512 {
		s = strings.ToValidUTF8(s[:512], "")
	}
	return s
}

// Counted outcomes (Counters): a mail delivered, an attempt failed with another scheduled
// (retry), a mail dead-lettered (dead), or put back without an attempt (deferred: circuit open,
// bulkhead full, dead letter store unreachable).
const (
	CounterDelivered = StateDelivered
	CounterRetry     = "retry"
	CounterDead      = StateDead
	CounterDeferred  = "deferred"
)

func counterOf(outcome string, a *Attempt) string {
	switch {
	case outcome == outcomeDefer:
		return CounterDeferred
	case outcome == outcomeRetry:
		return CounterRetry
	case outcome == StateDelivered && a != nil:
		return CounterDelivered
	case outcome == StateDead:
		return CounterDead
	}
	return ""
}

// Counters returns the send counters of every SMTP server: server (host:port) → outcome →
// count, summed over every instance since the counters began.
func (s *Store) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	out, err := s.queue.Counters(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading send counters: %w", err)
	}
	return out, nil
}
