package notify

import (
	"context"
	"crypto/sha256"
	"encoding/base32"
	"encoding/json"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/duequeue"
)

// Prefix starts every Redis key of the notify function.
const Prefix = "knfaas:notify:"

// Key families (see functions/notify/README.md).
const (
	keyMessage  = Prefix + "msg:"      // string: the event (JSON structured, data byte for byte); TTL Retention
	keyState    = Prefix + "state:"    // hash endpoint → pending | delivered | dead; TTL Retention
	keyDue      = Prefix + "due"       // zset "<message> <endpoint>" → when its next attempt is due (unix ms)
	keyTries    = Prefix + "tries"     // hash "<message> <endpoint>" → attempts made; removed when finished
	keyAttempts = Prefix + "attempts:" // list per "<message>:<endpoint>": the last MaxAttemptLog attempts; TTL Retention
	keyDisabled = Prefix + "disabled"  // hash endpoint → why it was disabled (JSON)
	keyFailing  = Prefix + "failing"   // hash endpoint → since when its attempts fail (unix ms); removed on a success
	keyRate     = Prefix + "rate:"     // string per "<endpoint>:<unix second>": attempts let through in that second; TTL 2s
	keyCounters = Prefix + "counters"  // hash "<endpoint> <outcome>" → count, since the first (see Counters)
	keyLog      = Prefix + "log"       // zset message → when it was first enqueued (unix ms); trimmed to Retention
)

// MaxAttemptLog is how many attempts are kept per message and endpoint.
const MaxAttemptLog = 32

// States of a (message, endpoint) pair.
const (
	StatePending   = "pending"
	StateDelivered = "delivered"
	StateDead      = "dead"
)

// ExtEndpoint names, on a dead-lettered event, the one endpoint it failed at: a redrive of that
// letter sends the message to that endpoint only.
const ExtEndpoint = "knfaasnotifyendpoint"

// MessageID is the webhook-id of an event: derived from its (source, id), so the same event,
// however often the Broker delivers it, is one message with one id across all its attempts.
func MessageID(source, id string) string {
	sum := sha256.Sum256([]byte(source + "\x00" + id))
	return "msg_" + strings.ToLower(base32.StdEncoding.WithPadding(base32.NoPadding).EncodeToString(sum[:16]))
}

// Store keeps messages, their per-endpoint state and the retry schedule in Redis.
type Store struct {
	rdb       redis.UniversalClient
	retention time.Duration
	queue     *duequeue.Queue
}

// NewStore returns a Store whose message records live for retention after they were last
// enqueued: longer than the retry horizon and the dead letters' age, so that a redrive still
// knows which endpoints got the message.
func NewStore(rdb redis.UniversalClient, retention time.Duration) *Store {
	keys := duequeue.Keys{Due: keyDue, Tries: keyTries, Record: keyMessage, Failing: keyFailing, Counters: keyCounters}
	return &Store{rdb: rdb, retention: retention, queue: duequeue.New(rdb, keys, Owner, retention, MaxAttemptLog)}
}

var enqueueScript = redis.NewScript(`
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
redis.call('ZADD', KEYS[5], 'NX', ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[5], '-inf', ARGV[3] - ARGV[2])
local added = {}
for i = 6, #ARGV do
  local ep = ARGV[i]
  local st = redis.call('HGET', KEYS[2], ep)
  if (not st) or (st == 'dead' and ep == ARGV[5]) then
    local member = ARGV[4] .. ' ' .. ep
    redis.call('HSET', KEYS[2], ep, 'pending')
    redis.call('ZADD', KEYS[3], ARGV[3], member)
    redis.call('HDEL', KEYS[4], member)
    added[#added + 1] = ep
  end
end
redis.call('PEXPIRE', KEYS[2], ARGV[2])
return added
`)

// Enqueue stores e and schedules an immediate attempt for each endpoint that has not had the
// message yet, in one atomic step, and returns those endpoints. An endpoint that already
// got the message, or has it pending, is skipped; one where it is dead is scheduled again only
// when it is redriveTo (a redrive of that letter).
func (s *Store) Enqueue(ctx context.Context, e event.Event, endpoints []string, redriveTo string, now time.Time) (string, []string, error) {
	id := MessageID(e.Source(), e.ID())
	if len(endpoints) == 0 {
		return id, nil, nil
	}
	stored := event.Event{Context: e.Context.Clone(), DataEncoded: e.DataEncoded, DataBase64: e.DataBase64}
	stored.SetExtension(ExtEndpoint, nil)
	l, err := deadletter.FromEvent(stored)
	if err != nil {
		return id, nil, fmt.Errorf("encoding event %s: %w", e.ID(), err)
	}
	args := []any{[]byte(l.Event), s.retention.Milliseconds(), now.UnixMilli(), id, redriveTo}
	for _, ep := range endpoints {
		args = append(args, ep)
	}
	added, err := enqueueScript.Run(ctx, s.rdb, []string{keyMessage + id, keyState + id, keyDue, keyTries, keyLog}, args...).StringSlice()
	if err != nil {
		return id, nil, fmt.Errorf("enqueueing message %s: %w", id, err)
	}
	return id, added, nil
}

// Job is one claimed (message, endpoint) pair.
type Job struct {
	Message  string
	Endpoint string
	// Tries is how many attempts were made before this one.
	Tries int
	// Event is the stored event; zero when the message record expired.
	Event event.Event
	// Raw is the stored event as JSON.
	Raw []byte
	// leaseEnd is when the pair is due again unless finished.
	leaseEnd time.Time
}

func (j Job) member() string { return j.Message + " " + j.Endpoint }

// Claim takes up to limit pairs that are due at now and leases them for lease: a pair not
// finished by then (the instance died) is due again, and a timer deadline wakes the function
// for it.
func (s *Store) Claim(ctx context.Context, now time.Time, lease time.Duration, limit int) ([]Job, error) {
	claimed, err := s.queue.Claim(ctx, now, lease, limit)
	if err != nil {
		return nil, fmt.Errorf("claiming due deliveries: %w", err)
	}
	jobs := make([]Job, 0, len(claimed))
	for _, c := range claimed {
		mid, ep, _ := strings.Cut(c.Item, " ")
		j := Job{Message: mid, Endpoint: ep, Tries: c.Tries, leaseEnd: c.LeaseEnd}
		if c.Record[0] != "" {
			j.Raw = []byte(c.Record[0])
			j.Event, err = deadletter.Letter{Event: j.Raw}.OriginalEvent()
			if err != nil {
				return nil, fmt.Errorf("decoding message %s: %w", mid, err)
			}
		}
		jobs = append(jobs, j)
	}
	return jobs, nil
}

// Outcomes of a job as Finish records them.
const (
	outcomeRetry = duequeue.OutcomeRetry // an attempt failed; due again at next
	outcomeDefer = duequeue.OutcomeDefer // no attempt was made (bulkhead full, breaker open); due again at next
)

// finish records the attempt a (nil when none was made) and the pair's new state: outcomeRetry
// or outcomeDefer at next, or StateDelivered / StateDead. It does nothing when the pair is no
// longer scheduled (another instance finished it after this one's lease ran out). health is
// duequeue.HealthOK after an attempt the endpoint answered, HealthFailed after one it failed,
// "" otherwise; after a failed one, failing is since when the endpoint's attempts have failed
// without a success in between.
func (s *Store) finish(ctx context.Context, j Job, outcome string, next time.Time, a *Attempt, health string, now time.Time) (failing time.Time, err error) {
	var logged []byte
	if a != nil {
		if logged, err = json.Marshal(a); err != nil {
			return time.Time{}, err
		}
	}
	counter := ""
	switch {
	case a != nil && a.Outcome != "":
		counter = a.Outcome
	case outcome == outcomeDefer:
		counter = CounterDeferred
	case outcome == StateDead:
		counter = OutcomeDead
	}
	f := duequeue.Finish{Item: j.member(), Outcome: outcome, Next: next,
		StateKey: keyState + j.Message, StateField: j.Endpoint, Attempt: logged, AttemptsKey: keyAttempts + j.Message + ":" + j.Endpoint,
		Target: j.Endpoint, Health: health, Counter: counter, Now: now}
	if a != nil && a.made {
		// The endpoint may have got the message: record that while the lease holds, or it is
		// sent again when the lease runs out.
		f.RetryUntil = j.leaseEnd.Add(-leaseMargin)
	}
	failing, err = s.queue.Finish(ctx, f)
	if err != nil {
		return time.Time{}, fmt.Errorf("recording %s of message %s at %s: %w", outcome, j.Message, j.Endpoint, err)
	}
	return failing, nil
}

// CounterDeferred counts the times a message was put back without an attempt (circuit open,
// bulkhead full, over the rate limit, endpoint paused).
const CounterDeferred = "deferred"

// Counters returns the delivery counters of every endpoint: endpoint → outcome (delivered,
// retry, dead, gone, deferred) → count, summed over every instance since the counters began.
func (s *Store) Counters(ctx context.Context) (map[string]map[string]int64, error) {
	out, err := s.queue.Counters(ctx)
	if err != nil {
		return nil, fmt.Errorf("reading delivery counters: %w", err)
	}
	return out, nil
}

// Owner is the knfaasowner of the timer deadlines that wake the function: its Trigger on
// dev.knfaas.timer.fired filters on it.
const Owner = "notify"

// Attempt is one delivery attempt as the attempts log keeps it.
type Attempt struct {
	At       time.Time `json:"at"`
	Number   int       `json:"attempt"`
	Status   int       `json:"status,omitempty"`
	Latency  float64   `json:"latencyMs"`
	Error    string    `json:"error,omitempty"`
	Response string    `json:"response,omitempty"`
	// Outcome is delivered, retry, dead or gone.
	Outcome string `json:"outcome"`
	// Next is when the next attempt is due, for a retry.
	Next time.Time `json:"next,omitzero"`
	// Breaker is the endpoint's circuit when the attempt was let through.
	Breaker string `json:"breaker,omitempty"`
	// made is true when a request was sent (or its connection tried), false for an entry that
	// records why none was.
	made bool
}

// Attempts returns the attempts log of a message at an endpoint, oldest first.
func (s *Store) Attempts(ctx context.Context, message, endpoint string) ([]Attempt, error) {
	out, err := duequeue.Attempts[Attempt](ctx, s.rdb, keyAttempts+message+":"+endpoint)
	if err != nil {
		return nil, fmt.Errorf("reading attempts of %s at %s: %w", message, endpoint, err)
	}
	return out, nil
}

// States returns the state of a message at each endpoint it was enqueued for.
func (s *Store) States(ctx context.Context, message string) (map[string]string, error) {
	m, err := s.rdb.HGetAll(ctx, keyState+message).Result()
	if err != nil {
		return nil, fmt.Errorf("reading states of %s: %w", message, err)
	}
	return m, nil
}

// Due counts pairs due at now (not leased by an instance).
func (s *Store) Due(ctx context.Context, now time.Time) (int64, error) {
	return s.queue.Due(ctx, now)
}

// Scheduled counts every pair waiting for an attempt, due or not.
func (s *Store) Scheduled(ctx context.Context) (int64, error) {
	return s.queue.Scheduled(ctx)
}

// Disable marks an endpoint disabled (a 410 Gone, or an operator) with why.
func (s *Store) Disable(ctx context.Context, endpoint, reason string, at time.Time) error {
	b, _ := json.Marshal(map[string]any{"reason": reason, "at": at.UTC()})
	if err := s.rdb.HSet(ctx, keyDisabled, endpoint, b).Err(); err != nil {
		return fmt.Errorf("disabling endpoint %s: %w", endpoint, err)
	}
	return nil
}

// Enable clears an endpoint's disabled mark.
func (s *Store) Enable(ctx context.Context, endpoint string) error {
	if err := s.rdb.HDel(ctx, keyDisabled, endpoint).Err(); err != nil {
		return fmt.Errorf("enabling endpoint %s: %w", endpoint, err)
	}
	return nil
}

// Disabled returns the endpoints disabled at run time, each with why.
func (s *Store) Disabled(ctx context.Context) (map[string]string, error) {
	m, err := s.rdb.HGetAll(ctx, keyDisabled).Result()
	if err != nil && !errors.Is(err, redis.Nil) {
		return nil, fmt.Errorf("reading disabled endpoints: %w", err)
	}
	for ep, raw := range m {
		var mark struct {
			Reason string    `json:"reason"`
			At     time.Time `json:"at"`
		}
		if json.Unmarshal([]byte(raw), &mark) == nil && mark.Reason != "" {
			m[ep] = mark.Reason + " (since " + mark.At.Format(time.RFC3339) + ")"
		}
	}
	return m, nil
}

var rateScript = redis.NewScript(`
local n = redis.call('INCR', KEYS[1])
if n == 1 then redis.call('PEXPIRE', KEYS[1], 2000) end
return n
`)

// takeRate counts one attempt at endpoint in now's second and reports whether it is within
// limit; the count is shared by every instance.
func (s *Store) takeRate(ctx context.Context, endpoint string, now time.Time, limit int) (bool, error) {
	n, err := rateScript.Run(ctx, s.rdb, []string{keyRate + endpoint + ":" + strconv.FormatInt(now.Unix(), 10)}).Int()
	if err != nil {
		return false, fmt.Errorf("counting the rate of %s: %w", endpoint, err)
	}
	return n <= limit, nil
}
