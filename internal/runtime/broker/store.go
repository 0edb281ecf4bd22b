// Package broker is a durable Knative Broker data plane on Redis Streams: an ingress that
// answers 202 only after an event is stored, 503 only when it is not and never will be, and 504
// when Redis answered neither the append nor its lookup (see Store), and one consumer group per
// Trigger that delivers with Knative's own filters, dispatcher, retry and dead-letter semantics.
package broker

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/groupcommit"
)

// StreamKey is the Redis Stream holding the events of a broker.
func StreamKey(namespace, name string) string {
	return "knfaas:broker:stream:" + namespace + "/" + name
}

// DefaultAppendTimeout bounds how long Append waits for Redis by default.
const DefaultAppendTimeout = 2 * time.Second

// DefaultClockMargin is the default allowance for the difference between the runtime's and
// Redis' clocks.
const DefaultClockMargin = 500 * time.Millisecond

// DefaultLookupTimeout bounds by default how long Append, once it gave up waiting for Redis'
// reply, looks up whether the append was stored.
const DefaultLookupTimeout = time.Second

// ErrAppendTimeout reports an append that did not complete within its time. The event was
// not stored and never will be: the caller may answer 503 and the sender may retry.
var ErrAppendTimeout = errors.New("redis did not store the event in time")

// ErrAppendOutcomeUnknown reports an append whose reply did not come and whose lookup Redis did
// not answer either: the event may have been stored, once, or not at all, and it will not be
// stored later. A sender that retries may store it a second time, with the same event id.
var ErrAppendOutcomeUnknown = errors.New("redis did not answer whether it stored the event")

// ErrStoreStopped reports an append made once the store's Run has returned: nothing writes to
// Redis any more, so the event was not stored.
var ErrStoreStopped = errors.New("the broker store has stopped")

// Store appends events to broker streams, coalescing concurrent appends into pipelines so that
// many requests share one Redis round trip (group commit) without giving up per-event acks.
//
// Appends run in a script (one run per pipeline's appends to a stream) that compares Redis'
// clock with each request's deadline and adds nothing once it has passed, so an append can never land after Append answered (a hung Redis
// resuming, a request still in a socket buffer). Append stops waiting for the reply at its
// timeout; the script's deadline is that instant minus the clock margin. The script also
// records the new entry's id under the append's token (unique per append) in a short-lived
// hash shared by the appends to the stream whose deadlines fall in the same second
// (appendedKey), so an append whose reply did not come in time (Redis busy, a reply still in a
// socket buffer, the runtime starved of CPU) is looked up instead of being reported as failed:
// Append asks Redis, with a script that first checks that Redis' clock is past the deadline,
// so no run of the append can follow, whether the token is there. Found, the append succeeded;
// not found, it failed for good (ErrAppendTimeout); no answer within the lookup timeout leaves
// the outcome unknown (ErrAppendOutcomeUnknown). Only appends without a reply pay for a lookup;
// every append pays for one hash field, dropped with its hash a few seconds later (the append
// timeout plus the lookup timeout, the margin and two seconds).
// The guarantees hold while the two clocks differ by less than the margin.
type Store struct {
	rdb           redis.UniversalClient
	appends       *groupcommit.Batcher[*appendReq]
	timeout       time.Duration
	margin        time.Duration
	lookupTimeout time.Duration
	log           *slog.Logger

	// tokenPrefix and tokens name each append uniquely among runtimes sharing a Redis.
	tokenPrefix string
	tokens      atomic.Uint64
	// lookups counts lookups by result (stored, not_stored, unknown); nil counts nothing.
	lookups atomic.Pointer[prometheus.CounterVec]
}

// StoreOption configures a Store.
type StoreOption func(*Store)

// WithAppendTimeout bounds how long Append may take (DefaultAppendTimeout when d <= 0).
func WithAppendTimeout(d time.Duration) StoreOption {
	return func(s *Store) {
		if d > 0 {
			s.timeout = d
		}
	}
}

// WithClockMargin sets how much earlier than Append's timeout Redis must have stored an
// event (DefaultClockMargin when d <= 0). It must exceed the difference between the clocks
// of the runtime and Redis plus a reply's latency. A margin not below the append timeout is
// cut to a quarter of it.
func WithClockMargin(d time.Duration) StoreOption {
	return func(s *Store) {
		if d > 0 {
			s.margin = d
		}
	}
}

// WithLookupTimeout bounds how long Append looks up an append whose reply did not come by its
// timeout (DefaultLookupTimeout when d <= 0). Such an Append returns within its timeout plus d.
func WithLookupTimeout(d time.Duration) StoreOption {
	return func(s *Store) {
		if d > 0 {
			s.lookupTimeout = d
		}
	}
}

// WithLogger sets where the Store reports an append acknowledged after its lookup had found it
// not stored, which only a clock difference beyond the margin can cause.
func WithLogger(l *slog.Logger) StoreOption {
	return func(s *Store) { s.log = l }
}

// Request states: the writer and the waiting Append race to move a request on. A writer takes
// a pending request to sending before it writes it to Redis and a pending or sending one to
// done with its outcome; Append takes one it stops waiting for to abandoned. An abandoned
// request that was pending was never sent (and never will be); one that was sending is looked up.
const (
	reqPending int32 = iota
	reqSending
	reqDone
	reqAbandoned
)

// Lookup results, the values of the result label of the lookups counter.
const (
	lookupStored    = "stored"
	lookupNotStored = "not_stored"
	lookupUnknown   = "unknown"
)

type appendReq struct {
	stream   string
	fields   []any
	token    string    // names the append in its appendedKey
	deadline time.Time // Redis refuses the write once its clock is past this
	id       string
	err      error
	state    atomic.Int32
	// lookedUp is the result of the lookup of an abandoned request, once known.
	lookedUp atomic.Pointer[string]
}

// maxBatch bounds how many appends share one pipeline.
const maxBatch = 256

// maxQueued bounds the appends waiting for a pipeline.
const maxQueued = 4096

// NewStore returns a Store; Run must be running for Append to complete.
func NewStore(rdb redis.UniversalClient, opts ...StoreOption) *Store {
	s := &Store{rdb: rdb, timeout: DefaultAppendTimeout, margin: DefaultClockMargin, lookupTimeout: DefaultLookupTimeout, log: slog.Default()}
	for _, o := range opts {
		o(s)
	}
	var prefix [8]byte
	_, _ = rand.Read(prefix[:]) // never fails (crypto/rand)
	s.tokenPrefix = hex.EncodeToString(prefix[:]) + "."
	if s.margin >= s.timeout {
		s.margin = s.timeout / 4
	}
	s.appends = groupcommit.New(func(_ context.Context, batch []*appendReq) error {
		s.send(batch)
		return nil // each request carries its own outcome
	}, groupcommit.Options{MaxBatch: maxBatch, QueueLimit: maxQueued})
	return s
}

// CountLookups makes the store count its lookups in c, by result (stored, not_stored,
// unknown). NewIngress calls it with the runtime's metric.
func (s *Store) CountLookups(c *prometheus.CounterVec) { s.lookups.Store(c) }

// appendScript adds the entry only while Redis' clock has not passed the deadline.
var appendScript = redis.NewScript(appendSource)

// errLatePrefix starts the error appendScript answers when it refused a write.
const errLatePrefix = "KNFAAS_LATE"

// errAppendPrefix starts appendScript's answer for an entry Redis refused to add.
const errAppendPrefix = "KNFAAS_XADD"

// errEarlyPrefix starts the error lookupScript answers while Redis' clock has not yet passed
// the deadline.
const errEarlyPrefix = "KNFAAS_EARLY"

// appendedKey is the hash in which appendScript records, under each append's token, the id of
// the entry it appended to stream, for the appends whose deadline falls in the same second.
// Its hash tag is the stream's key, so both are in the same slot of a Redis Cluster.
func appendedKey(stream string, deadline time.Time) string {
	return "knfaas:broker:appended:{" + stream + "}:" + strconv.FormatInt(deadline.Unix(), 10)
}

// Run sends appends with writers concurrent pipelines until ctx ends. Then it sends the appends
// already queued (each still bounded by its deadline) and returns; from then on Append fails
// at once with ErrStoreStopped.
func (s *Store) Run(ctx context.Context, writers int) {
	s.appends.Run(ctx, writers)
}

// send runs a batch of appends in one pipeline. Requests already past their deadline are
// failed without being sent: Redis would refuse them anyway.
func (s *Store) send(batch []*appendReq) {
	now := time.Now()
	live := make([]*appendReq, 0, len(batch))
	var last time.Time
	for _, r := range batch {
		if !now.Before(r.deadline) {
			s.finish(r, "", ErrAppendTimeout)
			continue
		}
		if !r.state.CompareAndSwap(reqPending, reqSending) {
			continue // Append gave up on it before it was sent: it never will be
		}
		live = append(live, r)
		if r.deadline.After(last) {
			last = r.deadline
		}
	}
	if len(live) == 0 {
		return
	}
	// The context bounds only waiting for a connection; a request already written is
	// answered by Redis (its script refuses once late) or fails with the connection.
	ctx, cancel := context.WithDeadline(context.Background(), last.Add(s.margin))
	defer cancel()
	groups := groupAppends(live)
	cmds := s.exec(ctx, groups, "evalsha", appendScript.Hash())
	var again []appendGroup
	var unknown error
	for i, g := range groups {
		if redis.HasErrorPrefix(cmds[i].Err(), "NOSCRIPT") {
			again = append(again, g) // not run: Redis lost its script cache
			continue
		}
		if err := s.result(g, cmds[i]); err != nil {
			unknown = err
		}
	}
	if len(again) > 0 {
		cmds = s.exec(ctx, again, "eval", appendSource)
		for i, g := range again {
			if err := s.result(g, cmds[i]); err != nil {
				unknown = err
			}
		}
	}
	if unknown != nil {
		s.log.Warn("no answer from redis to appends; each is looked up once its append timeout has passed", "error", unknown)
	}
}

// appendGroup is the appends of a batch that one run of appendScript stores: those to the
// same stream whose deadlines fall in the same second (the same appendedKey).
type appendGroup struct {
	stream, appended string
	reqs             []*appendReq
}

// groupAppends groups a batch's appends by appendedKey, keeping their order.
func groupAppends(reqs []*appendReq) []appendGroup {
	var groups []appendGroup
	index := map[string]int{}
	for _, r := range reqs {
		key := appendedKey(r.stream, r.deadline)
		i, ok := index[key]
		if !ok {
			i = len(groups)
			index[key] = i
			groups = append(groups, appendGroup{stream: r.stream, appended: key})
		}
		groups[i].reqs = append(groups[i].reqs, r)
	}
	return groups
}

// result hands a script's answers to the Appends of its group: an entry id, or a refusal.
// A transport error after the request may have been written (a timeout, a broken connection)
// leaves the outcome unknown: Redis may still run the script until its deadline, so the
// requests are left to Append, which looks each up once its timeout has passed; result
// returns that error, as it does for an answer it cannot read.
func (s *Store) result(g appendGroup, cmd *redis.Cmd) error {
	answers, err := cmd.StringSlice()
	var rerr redis.Error
	switch {
	case err == nil && len(answers) == len(g.reqs):
	case err == nil:
		return fmt.Errorf("redis answered %d outcomes for %d appends", len(answers), len(g.reqs))
	case errors.As(err, &rerr), notSent(err):
		for _, r := range g.reqs {
			s.finish(r, "", err)
		}
		return nil
	default:
		return err
	}
	for i, r := range g.reqs {
		switch a := answers[i]; {
		case strings.HasPrefix(a, errLatePrefix):
			s.finish(r, "", fmt.Errorf("%w: %s", ErrAppendTimeout, a))
		case strings.HasPrefix(a, errAppendPrefix):
			s.finish(r, "", fmt.Errorf("redis refused the entry: %s", strings.TrimPrefix(a, errAppendPrefix+" ")))
		default:
			s.finish(r, a, nil)
		}
	}
	return nil
}

// notSent reports errors go-redis returns before a command reached Redis.
func notSent(err error) bool {
	var op *net.OpError
	return errors.Is(err, redis.ErrPoolTimeout) || errors.Is(err, redis.ErrClosed) || (errors.As(err, &op) && op.Op == "dial")
}

// appendSource is appendScript's text, sent when Redis does not have it cached. It appends a
// group of entries to the stream KEYS[1] and records each entry's id under its append's token
// in the hash KEYS[2] (the group's appendedKey), which lives ARGV[1] milliseconds from its
// first field. ARGV[2..] holds the appends, each as its deadline in microseconds since the Unix
// epoch, its token, its number of field/value arguments and those. It answers one string per
// append: the entry's id; a KNFAAS_LATE refusal, storing nothing, once Redis' clock is past the
// deadline; or KNFAAS_XADD with Redis' error. One run per group, rather than per append,
// spreads a script's cost over the group. TIME is non-deterministic, which Redis allows
// before a write since scripts replicate their effects (the default since Redis 5, the only
// mode since 7).
const appendSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local answers, record = {}, {}
local i = 2
while i <= #ARGV do
  local deadline, token, n = tonumber(ARGV[i]), ARGV[i + 1], tonumber(ARGV[i + 2])
  local first = i + 3
  i = first + n
  if now > deadline then
    answers[#answers + 1] = 'KNFAAS_LATE deadline passed ' .. tostring(now - deadline) .. 'us ago by the Redis clock; nothing stored'
  else
    local id = redis.pcall('XADD', KEYS[1], '*', unpack(ARGV, first, i - 1))
    if type(id) == 'table' then
      answers[#answers + 1] = 'KNFAAS_XADD ' .. tostring(id.err)
    else
      answers[#answers + 1] = id
      record[#record + 1] = token
      record[#record + 1] = id
    end
  end
end
if #record > 0 then
  local added = redis.call('HSET', KEYS[2], unpack(record))
  if redis.call('HLEN', KEYS[2]) == added then
    redis.call('PEXPIRE', KEYS[2], ARGV[1])
  end
end
return answers
`

// lookupScript answers the id of the entry appended with the token ARGV[2] (recorded in the
// appendedKey KEYS[1]), or nil when none was, once Redis' clock is past the append's deadline
// ARGV[1] (microseconds since the Unix epoch): from then on the append script refuses, so the
// answer is final. Before, it answers a KNFAAS_EARLY error with the microseconds left.
var lookupScript = redis.NewScript(`
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local deadline = tonumber(ARGV[1])
if now <= deadline then
  return redis.error_reply('KNFAAS_EARLY ' .. tostring(deadline - now + 1))
end
return redis.call('HGET', KEYS[1], ARGV[2])
`)

// appendedTTL is how long an appendedKey lives from its first field: from the creation of the
// earliest append whose deadline falls in its second (the append timeout before that second)
// to the end of the lookup of the latest (the second, the margin and the lookup timeout after
// it), plus a second.
func (s *Store) appendedTTL() time.Duration {
	return s.timeout + time.Second + s.margin + s.lookupTimeout + time.Second
}

// onceCmd is a command go-redis must not send again after a timeout or a broken connection:
// the first attempt may have run, and a second one would store the event twice. A pipeline
// holding one is never retried.
type onceCmd struct{ *redis.Cmd }

// NoRetry tells go-redis not to retry the pipeline.
func (onceCmd) NoRetry() bool { return true }

func (s *Store) exec(ctx context.Context, groups []appendGroup, verb, script string) []*redis.Cmd {
	pipe := s.rdb.Pipeline()
	cmds := make([]*redis.Cmd, len(groups))
	ttl := s.appendedTTL().Milliseconds()
	for i, g := range groups {
		n := 6
		for _, r := range g.reqs {
			n += 3 + len(r.fields)
		}
		args := make([]any, 0, n)
		args = append(args, verb, script, 2, g.stream, g.appended, ttl)
		for _, r := range g.reqs {
			args = append(args, r.deadline.UnixMicro(), r.token, len(r.fields))
			args = append(args, r.fields...)
		}
		cmds[i] = redis.NewCmd(ctx, args...)
		_ = pipe.Process(ctx, onceCmd{cmds[i]})
	}
	_, _ = pipe.Exec(ctx)
	return cmds
}

// finish hands a request's outcome to its Append, unless Append already gave up on it.
func (s *Store) finish(r *appendReq, id string, err error) {
	r.id, r.err = id, err
	if r.state.CompareAndSwap(reqSending, reqDone) || r.state.CompareAndSwap(reqPending, reqDone) || err != nil {
		return
	}
	// A late reply: Append has looked the append up (or is doing so), and the lookup finds
	// what the script stored. Only a clock difference beyond the margin lets the lookup run
	// before the script and answer that nothing was stored: a sender's retry duplicates it.
	if res := r.lookedUp.Load(); res != nil && *res == lookupNotStored {
		s.log.Error("redis stored an event after its lookup had found it not stored; clocks of the runtime and redis differ by more than the margin?",
			"stream", r.stream, "id", id, "deadline", r.deadline, "margin", s.margin)
	}
}

// Append adds an entry with the given field/value pairs to the end of stream and returns its
// id once Redis acknowledged it. It returns within the store's timeout (or ctx's deadline, if
// earlier), plus the lookup timeout when Redis' reply did not come by then. An error means the
// entry was not stored and will not be: an append that did not complete in time fails with
// ErrAppendTimeout, one made once Run has returned with ErrStoreStopped; the one exception is
// ErrAppendOutcomeUnknown, when neither the reply nor the lookup came (see Store). Cancelling
// ctx does not abandon a queued append: its outcome decides the answer.
func (s *Store) Append(ctx context.Context, stream string, fields ...any) (string, error) {
	if len(fields) == 0 || len(fields)%2 != 0 {
		return "", fmt.Errorf("storing event in %s: %d fields, want field/value pairs", stream, len(fields))
	}
	giveUp := time.Now().Add(s.timeout)
	if d, ok := ctx.Deadline(); ok && d.Before(giveUp) {
		giveUp = d
	}
	r := &appendReq{stream: stream, fields: fields, deadline: giveUp.Add(-s.margin),
		token: s.tokenPrefix + strconv.FormatUint(s.tokens.Add(1), 36)}
	if !time.Now().Before(r.deadline) {
		return "", fmt.Errorf("storing event in %s: %w (less than the clock margin %s left)", stream, ErrAppendTimeout, s.margin)
	}
	queueCtx, cancelQueue := context.WithDeadline(ctx, giveUp)
	defer cancelQueue()
	ticket, err := s.appends.Submit(queueCtx, r)
	switch {
	case errors.Is(err, groupcommit.ErrClosed):
		return "", fmt.Errorf("storing event in %s: %w", stream, ErrStoreStopped)
	case err != nil && ctx.Err() != nil:
		return "", fmt.Errorf("storing event in %s: %w", stream, ctx.Err())
	case err != nil:
		return "", fmt.Errorf("storing event in %s: %w (the store's queue stayed full)", stream, ErrAppendTimeout)
	}
	// Once queued, only the deadline ends the wait: the outcome decides the answer.
	waitCtx, cancelWait := context.WithDeadline(context.WithoutCancel(ctx), giveUp)
	defer cancelWait()
	err = ticket.Wait(waitCtx)
	if errors.Is(err, groupcommit.ErrClosed) {
		return "", fmt.Errorf("storing event in %s: %w", stream, ErrStoreStopped)
	}
	if err == nil && r.state.Load() != reqDone {
		// The pipeline ended without an answer for r (see result): Redis may still run the
		// script until its deadline, so Append waits for its timeout before looking it up.
		<-waitCtx.Done()
	}
	if r.state.CompareAndSwap(reqPending, reqAbandoned) {
		return "", fmt.Errorf("storing event in %s: %w (not sent to redis in time)", stream, ErrAppendTimeout)
	}
	if r.state.CompareAndSwap(reqSending, reqAbandoned) {
		return s.lookUp(r)
	}
	// The writer handed over the outcome (finish sets it before the state change).
	if r.err != nil {
		return "", fmt.Errorf("storing event in %s: %w", stream, r.err)
	}
	return r.id, nil
}

// lookUp finds out whether an append sent to Redis, whose reply did not come by Append's
// timeout, was stored: it answers the entry's id, ErrAppendTimeout, or, without an answer
// within the lookup timeout, ErrAppendOutcomeUnknown. It waits for the lookup in a goroutine
// of its own because go-redis bounds a command by its read timeout, not by a context.
func (s *Store) lookUp(r *appendReq) (string, error) {
	type outcome struct {
		id  string
		err error
	}
	ctx, cancel := context.WithTimeout(context.Background(), s.lookupTimeout)
	defer cancel()
	done := make(chan outcome, 1)
	go func() {
		id, err := s.lookUpOnce(ctx, r)
		done <- outcome{id, err}
	}()
	var o outcome
	select {
	case o = <-done:
	case <-ctx.Done():
		o.err = ctx.Err()
	}
	result := lookupStored
	switch {
	case errors.Is(o.err, redis.Nil):
		result = lookupNotStored
	case o.err != nil:
		result = lookupUnknown
	}
	r.lookedUp.Store(&result)
	if c := s.lookups.Load(); c != nil {
		c.WithLabelValues(result).Inc()
	}
	switch result {
	case lookupNotStored:
		return "", fmt.Errorf("storing event in %s: %w (no reply from redis in time; looked up: not stored)", r.stream, ErrAppendTimeout)
	case lookupUnknown:
		return "", fmt.Errorf("storing event in %s: %w: no reply in time, and its lookup failed within %s: %w", r.stream, ErrAppendOutcomeUnknown, s.lookupTimeout, o.err)
	}
	return o.id, nil
}

// lookUpOnce runs lookupScript until Redis' clock has passed r's deadline or ctx ends. It
// answers redis.Nil when nothing was stored.
func (s *Store) lookUpOnce(ctx context.Context, r *appendReq) (string, error) {
	key := appendedKey(r.stream, r.deadline)
	for {
		id, err := lookupScript.Run(ctx, s.rdb, []string{key}, r.deadline.UnixMicro(), r.token).Text()
		if !redis.HasErrorPrefix(err, errEarlyPrefix) {
			return id, err
		}
		// Redis' clock is behind the runtime's: wait until it has passed the deadline.
		wait := time.Millisecond
		if us, perr := strconv.ParseInt(strings.TrimSpace(strings.TrimPrefix(err.Error(), errEarlyPrefix)), 10, 64); perr == nil && us > 0 {
			wait = time.Duration(us) * time.Microsecond
		}
		t := time.NewTimer(wait)
		select {
		case <-ctx.Done():
			t.Stop()
			return "", fmt.Errorf("redis' clock had not passed the deadline: %w", ctx.Err())
		case <-t.C:
		}
	}
}

// EnsureGroup creates the consumer group of a trigger at the end of the stream, so that it
// sees events accepted from now on, and leaves an existing group where it is.
func EnsureGroup(ctx context.Context, rdb redis.UniversalClient, stream, group string) error {
	err := rdb.XGroupCreateMkStream(ctx, stream, group, "$").Err()
	if err != nil && !redis.HasErrorPrefix(err, "BUSYGROUP") {
		return fmt.Errorf("creating consumer group %s on %s: %w", group, stream, err)
	}
	return nil
}

// isNoGroup reports a consumer group that vanished (a Redis without persistence restarted).
func isNoGroup(err error) bool {
	return redis.HasErrorPrefix(err, "NOGROUP")
}

// entryTime is the acceptance time encoded in a stream entry id (milliseconds since epoch).
func entryTime(id string) time.Time {
	ms, err := strconv.ParseInt(strings.SplitN(id, "-", 2)[0], 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// trimScript removes the entries every consumer group of KEYS[1] has acknowledged, reading the
// groups and their pending entries and trimming in one atomic step: a group acknowledging in
// between cannot make the bound pass entries another group still has to read. A group keeps
// its oldest pending entry or, with none pending, everything after its last delivered one.
// Stream ids compare as (milliseconds, sequence); milliseconds are compared as decimal
// strings so that no precision is lost. Without groups all but the last entry go.
var trimScript = redis.NewScript(`
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then return redis.call('XTRIM', KEYS[1], 'MAXLEN', 1) end
local function split(id)
  local ms, seq = string.match(id, '^(%d+)%-(%d+)$')
  return ms, tonumber(seq)
end
local function less(ams, aseq, bms, bseq)
  if #ams ~= #bms then return #ams < #bms end
  if ams ~= bms then return ams < bms end
  return aseq < bseq
end
local minms, minseq
for _, g in ipairs(groups) do
  local f = {}
  for i = 1, #g, 2 do f[g[i]] = g[i + 1] end
  local ms, seq
  if tonumber(f['pending']) > 0 then
    local p = redis.call('XPENDING', KEYS[1], f['name'])
    if p[2] then ms, seq = split(p[2]) end
  end
  if not ms then
    ms, seq = split(f['last-delivered-id'])
    seq = seq + 1
  end
  if not minms or less(ms, seq, minms, minseq) then minms, minseq = ms, seq end
end
return redis.call('XTRIM', KEYS[1], 'MINID', minms .. '-' .. string.format('%d', minseq))
`)

// Trim removes entries that every consumer group has acknowledged: everything before the
// oldest entry still pending or not yet delivered in any group, decided and done atomically
// in Redis. Without groups, nothing can ever read the entries, so all but the last are removed.
func Trim(ctx context.Context, rdb redis.UniversalClient, stream string) (int64, error) {
	n, err := trimScript.Run(ctx, rdb, []string{stream}).Int64()
	if err != nil {
		return 0, fmt.Errorf("trimming %s: %w", stream, err)
	}
	return n, nil
}
