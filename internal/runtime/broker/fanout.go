package broker

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/knfaas/knfaas/internal/function/groupcommit"
)

// A streamReader reads one Broker stream for all the Triggers of one process on it (the
// consumers sharing a Redis client and a consumer name). Each Trigger keeps its own consumer
// group, with its own pending entries, redelivery and acknowledgements; what is shared is the
// work around them:
//
//   - one round trip reads the groups: a script runs a non-blocking XREADGROUP per group and
//     answers each entry once with the ids each group read (readScript), after the filtered-out
//     entries of the previous round are acknowledged in the same pipeline (one XACK per group);
//   - while every group has read all there is, one blocking XREAD waits for the stream to grow,
//     instead of one blocked connection per Trigger; a stream with a single Trigger waits with a
//     blocking XREADGROUP instead, which reads what arrives in the same round trip;
//   - each entry is decoded once per round and the Triggers' filters are evaluated on that one
//     event: an entry a Trigger does not want is acknowledged without a delivery goroutine;
//   - the acknowledgements of delivered entries of every group share pipelines.
//
// A Trigger whose subscriber is slow holds back no other: its group is read only while its
// queue of entries waiting for a delivery slot has room.
type streamReader struct {
	rdb    redis.UniversalClient
	stream string
	name   string
	log    *slog.Logger

	// acks acknowledges delivered entries of every group.
	acks *groupcommit.Batcher[deliveredAck]

	mu      sync.Mutex
	refs    int
	members []*member
	// filtered holds, per group, the entries its Trigger's filter rejected, acknowledged with
	// the next round.
	filtered map[string]*filteredAcks
	block    time.Duration

	// serial lets one member at a time send its own occasional commands (creating its group,
	// claiming stale pending entries): together they would hold a connection each.
	serial sync.Mutex

	wake    chan struct{} // a member may be read again: it joined, or its queue drained
	stop    context.CancelFunc
	stopped chan struct{}
}

// member is one consumer's place in a streamReader.
type member struct {
	c *Consumer
	// queue holds the entries read for the consumer that wait for a delivery slot; only the
	// reader adds to it, and it reads no more than there is room for.
	queue chan readEntry
	// cursor is "0" and then the last id read while the consumer re-reads the entries it had
	// read before a restart, ">" once it reads new entries.
	cursor string
	// behind: the group may have entries left to read.
	behind bool
	// retryAt: after a failed read of its group, it is read again from then on.
	retryAt time.Time
	backoff time.Duration
	left    bool
	// reading: a blocking read of its group is out (soleReader); rounds leave it alone, so the
	// room that read was sized by is not given to a round as well.
	reading bool
	// overlapped: a round read other groups while it was reading, so the round's position does
	// not hold for it.
	overlapped bool
}

// readEntry is a stream entry handed to a consumer. event, when set, is the decoded event,
// shared by the Triggers of the round and read-only, and it passed the consumer's filter; nil
// leaves decoding and filtering to the delivery.
type readEntry struct {
	msg         redis.XMessage
	event       *cloudevents.Event
	redelivered bool
}

type filteredAcks struct {
	roundsKey string
	ids       []string
	forget    []string
}

// deliveredAck is an entry a consumer delivered (or dead-lettered, dropped or parked), to
// acknowledge in its group.
type deliveredAck struct {
	c            *Consumer
	id           string
	forgetRounds bool
}

type readerKey struct {
	rdb          redis.UniversalClient
	stream, name string
}

// readers holds the running streamReaders: consumers of one stream join the same one.
var readers = struct {
	sync.Mutex
	m map[readerKey]*streamReader
}{m: map[readerKey]*streamReader{}}

// maxAckPipeline bounds the entries one pipeline of delivered acknowledgements takes.
const maxAckPipeline = 1024

// acquireReader returns the running streamReader of c's stream, starting one if needed. The
// caller releases it with release.
func acquireReader(c *Consumer) *streamReader {
	key := readerKey{rdb: c.rdb, stream: c.stream, name: c.opts.Name}
	readers.Lock()
	defer readers.Unlock()
	r := readers.m[key]
	if r == nil {
		ctx, stop := context.WithCancel(context.Background())
		r = &streamReader{
			rdb: c.rdb, stream: c.stream, name: c.opts.Name, log: c.log.With("reader", c.stream),
			filtered: map[string]*filteredAcks{}, block: c.opts.Block,
			wake: make(chan struct{}, 1), stop: stop, stopped: make(chan struct{}),
		}
		r.acks = groupcommit.New(r.flushAcks, groupcommit.Options{MaxBatch: maxAckPipeline, QueueLimit: 16 * maxAckPipeline})
		go r.acks.Run(context.Background(), 1)
		go r.run(ctx)
		readers.m[key] = r
	}
	r.refs++
	return r
}

// release gives back a reference taken by acquireReader; the last one stops the reader, after
// the acknowledgements it holds are sent.
func (r *streamReader) release() {
	readers.Lock()
	r.refs--
	last := r.refs == 0
	if last {
		delete(readers.m, readerKey{rdb: r.rdb, stream: r.stream, name: r.name})
	}
	readers.Unlock()
	if last {
		r.stop()
		<-r.stopped
		r.acks.Close()
	}
}

// join starts reading for c.
func (r *streamReader) join(c *Consumer) *member {
	m := &member{c: c, queue: make(chan readEntry, c.opts.Parallelism), cursor: "0", behind: true}
	r.mu.Lock()
	r.members = append(r.members, m)
	r.block = min(r.block, c.opts.Block)
	r.mu.Unlock()
	r.signal()
	return m
}

// leave stops reading for m. Entries in its queue stay pending in its group: a restart re-reads
// them, another replica claims them after RedeliverAfter.
func (r *streamReader) leave(m *member) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m.left = true
	for i, o := range r.members {
		if o == m {
			r.members = append(r.members[:i:i], r.members[i+1:]...)
			break
		}
	}
}

func (r *streamReader) signal() {
	select {
	case r.wake <- struct{}{}:
	default:
	}
}

// readMin is the room a member's queue needs before its group is read again: reads come in
// batches, not an entry per finished delivery.
func readMin(m *member) int { return max(1, cap(m.queue)/2) }

// pump hands m's entries to deliveries until ctx ends.
func (r *streamReader) pump(ctx context.Context, m *member) {
	threshold := cap(m.queue) - readMin(m)
	for {
		select {
		case <-ctx.Done():
			return
		case e := <-m.queue:
			m.c.dispatch(ctx, e)
			if len(m.queue) == threshold {
				r.signal()
			}
		}
	}
}

// readRequest is one group read in a round, and what it read.
type readRequest struct {
	m      *member
	cursor string
	count  int64
	msgs   []redis.XMessage
	err    error
}

// readScript reads the groups of a round in one step and answers each entry once, however
// many groups read it. KEYS[1] is the stream, ARGV[1] the consumer name, then a (group, cursor,
// count) triple per group. It answers {last, entries, reads}: last is the id of the stream's
// last entry ("0-0" without one), read before the groups in the same atomic step, so that
// every group that read fewer than its count has read everything up to it; entries alternates
// entry ids and their fields (false for a pending entry since deleted); reads holds, per group,
// {"ok", ids...} or {"err", message}.
var readScript = redis.NewScript(`
local last = '0-0'
local tail = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if tail[1] then last = tail[1][1] end
local entries, seen, reads = {}, {}, {}
for i = 2, #ARGV, 3 do
  local r = redis.pcall('XREADGROUP', 'GROUP', ARGV[i], ARGV[1], 'COUNT', ARGV[i + 2], 'STREAMS', KEYS[1], ARGV[i + 1])
  if type(r) == 'table' and r.err then
    reads[#reads + 1] = {'err', r.err}
  else
    local ids = {'ok'}
    if r and r[1] then
      for _, e in ipairs(r[1][2]) do
        local id = e[1]
        ids[#ids + 1] = id
        if not seen[id] then
          seen[id] = true
          entries[#entries + 1] = id
          entries[#entries + 1] = e[2] or false
        end
      end
    end
    reads[#reads + 1] = ids
  end
end
return {last, entries, reads}
`)

// run reads rounds until ctx ends, and waits for the stream to grow in between.
func (r *streamReader) run(ctx context.Context) {
	defer close(r.stopped)
	watchReq := make(chan watchRequest, 1)
	watchDone := make(chan watchResult, 1)
	defer close(watchReq)
	go r.watch(ctx, watchReq, watchDone)
	watching := false
	// last is the position of the latest round: every group it read had read all entries up to
	// it; "" before the first.
	last := ""
	backoff := 50 * time.Millisecond
	for ctx.Err() == nil {
		reqs, acks, next := r.plan()
		if len(reqs) > 0 || len(acks) > 0 {
			pos, err := r.round(ctx, reqs, acks)
			if err != nil {
				if ctx.Err() != nil {
					break
				}
				r.log.Warn("reading events failed; retrying", "error", err, "in", backoff)
				r.markBehind()
				sleep(ctx, backoff)
				backoff = min(backoff*2, 5*time.Second)
				continue
			}
			backoff = 50 * time.Millisecond
			if pos != "" {
				last = pos
			}
			continue
		}
		if !watching {
			r.mu.Lock()
			block := r.block
			m, count := r.soleReader()
			if m != nil {
				m.reading = true
			}
			r.mu.Unlock()
			switch {
			case m != nil:
				// One Trigger, caught up: its blocking group read is the wait and the read in
				// one round trip.
				watchReq <- watchRequest{block: block, group: m, count: count}
				watching = true
			case last != "":
				watchReq <- watchRequest{after: last, block: block}
				watching = true
			}
		}
		var timer *time.Timer
		var fire <-chan time.Time
		if !next.IsZero() {
			timer = time.NewTimer(time.Until(next))
			fire = timer.C
		}
		select {
		case <-ctx.Done():
		case w := <-watchDone:
			watching = false
			if w.read != nil {
				if ctx.Err() != nil {
					break // what it read stays pending, redelivered after a restart
				}
				r.takeSoleRead(ctx, w.read)
				continue
			}
			if w.grew {
				r.markBehind()
			}
		case <-r.wake:
		case <-fire:
		}
		if timer != nil {
			timer.Stop()
		}
	}
	r.flushFiltered()
}

// markBehind notes that every group may have new entries to read.
func (r *streamReader) markBehind() {
	r.mu.Lock()
	for _, m := range r.members {
		m.behind = true
	}
	r.mu.Unlock()
}

// watchRequest is one wait for the stream: for entries after after (XREAD), or, when group is
// set, a blocking read of up to count new entries in that member's group (XREADGROUP).
type watchRequest struct {
	after string
	block time.Duration
	group *member
	count int64
}

// watchResult is a wait's outcome: whether the stream grew, or the group read it did.
type watchResult struct {
	grew bool
	read *readRequest
}

// soleReader returns the member to read with a blocking group read instead of a wait and a
// round, and how many entries it may take: the only member, when it reads new entries, is not
// waiting after a failure, has room, and nothing is left to acknowledge. r.mu is held.
func (r *streamReader) soleReader() (*member, int64) {
	if len(r.members) != 1 || len(r.filtered) > 0 {
		return nil, 0
	}
	m := r.members[0]
	room := cap(m.queue) - len(m.queue)
	if m.left || m.cursor != ">" || time.Now().Before(m.retryAt) || room < readMin(m) {
		return nil, 0
	}
	return m, int64(room)
}

// takeSoleRead hands what a blocking group read read to its member. The member's position is
// its own read's unless a round ran meanwhile; other members that joined meanwhile learn that
// the stream grew.
func (r *streamReader) takeSoleRead(ctx context.Context, q *readRequest) {
	r.mu.Lock()
	defer r.mu.Unlock()
	m := q.m
	m.reading = false
	r.take(ctx, q, map[string]*decodedEntry{})
	if m.overlapped {
		m.behind = true
		m.overlapped = false
	}
	if len(q.msgs) > 0 && len(r.members) > 1 {
		for _, o := range r.members {
			o.behind = true
		}
	}
}

// watch waits, for each request, until the stream holds an entry after req.after or req.block
// passed, and reports whether it grew (a failure reports true after a pause, so that the
// reader's next round finds out what happened). A request for a group reads it instead and
// reports what it read (a timeout reads nothing).
func (r *streamReader) watch(ctx context.Context, reqs <-chan watchRequest, done chan<- watchResult) {
	backoff := 50 * time.Millisecond
	for req := range reqs {
		if m := req.group; m != nil {
			msgs, err := r.readGroup(ctx, m, req.count, req.block)
			done <- watchResult{read: &readRequest{m: m, cursor: ">", count: req.count, msgs: msgs, err: err}}
			continue
		}
		res, err := r.rdb.XRead(ctx, &redis.XReadArgs{Streams: []string{r.stream, req.after}, Count: 1, Block: req.block}).Result()
		switch {
		case errors.Is(err, redis.Nil):
			done <- watchResult{}
		case err != nil:
			if ctx.Err() == nil {
				r.log.Debug("waiting for new events failed", "error", err, "in", backoff)
				sleep(ctx, backoff)
				backoff = min(backoff*2, 5*time.Second)
			}
			done <- watchResult{grew: true}
		default:
			backoff = 50 * time.Millisecond
			done <- watchResult{grew: len(res) > 0 && len(res[0].Messages) > 0}
		}
	}
}

// readGroup reads up to count new entries of m's group, waiting up to block for the first.
func (r *streamReader) readGroup(ctx context.Context, m *member, count int64, block time.Duration) ([]redis.XMessage, error) {
	res, err := r.rdb.XReadGroup(ctx, &redis.XReadGroupArgs{
		Group: m.c.t.Group(), Consumer: r.name, Streams: []string{r.stream, ">"}, Count: count, Block: block,
	}).Result()
	switch {
	case errors.Is(err, redis.Nil):
		return nil, nil
	case err != nil:
		if ctx.Err() == nil {
			sleep(ctx, 50*time.Millisecond) // then the round reports and backs off
		}
		return nil, err
	case len(res) == 0:
		return nil, nil
	}
	return res[0].Messages, nil
}

// plan takes the filtered-out entries to acknowledge and, when some group may have entries
// left to read and can take them, chooses the groups to read: every group whose queue has room
// and that is neither waiting after a failure nor out on a blocking read of its own (so that
// the round's position holds for all of them). A group without room stays behind: its pump
// signals once it has drained. next is the earliest time a waiting group may be read again.
func (r *streamReader) plan() (reqs []readRequest, acks map[string]*filteredAcks, next time.Time) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if len(r.filtered) > 0 {
		acks, r.filtered = r.filtered, map[string]*filteredAcks{}
	}
	now := time.Now()
	needed := false
	for _, m := range r.members {
		room := cap(m.queue) - len(m.queue)
		switch {
		case m.reading:
		case now.Before(m.retryAt):
			if next.IsZero() || m.retryAt.Before(next) {
				next = m.retryAt
			}
		case room < readMin(m):
		default:
			needed = needed || m.behind
			reqs = append(reqs, readRequest{m: m, cursor: m.cursor, count: int64(room)})
		}
	}
	if !needed {
		return nil, acks, next
	}
	for _, m := range r.members {
		switch {
		case m.reading:
			m.overlapped = true // the round's position does not hold for it
		case cap(m.queue)-len(m.queue) < readMin(m):
			m.behind = true // nor for it
		}
	}
	return reqs, acks, next
}

// round acknowledges acks and reads reqs in one pipeline, then hands the entries to their
// consumers. It returns the position up to which every group it read has read all entries,
// "" when unknown; an error only when the whole pipeline failed.
func (r *streamReader) round(ctx context.Context, reqs []readRequest, acks map[string]*filteredAcks) (string, error) {
	pipe := r.rdb.Pipeline()
	var ackCmds []*redis.IntCmd
	for group, a := range acks {
		ackCmds = append(ackCmds, pipe.XAck(ctx, r.stream, group, a.ids...))
		if len(a.forget) > 0 {
			pipe.HDel(ctx, a.roundsKey, a.forget...)
		}
	}
	var read *redis.Cmd
	if len(reqs) > 0 {
		args := make([]any, 0, 1+3*len(reqs))
		args = append(args, r.name)
		for _, q := range reqs {
			args = append(args, q.m.c.t.Group(), q.cursor, q.count)
		}
		read = readScript.Eval(ctx, pipe, []string{r.stream}, args...)
	}
	cmds, err := pipe.Exec(ctx)
	if err != nil && !errors.Is(err, redis.Nil) && allFailed(cmds) {
		r.requeueFiltered(acks)
		return "", err
	}
	for _, c := range ackCmds {
		if c.Err() != nil {
			// The entries stay pending: after RedeliverAfter they are claimed, filtered and
			// acknowledged again.
			r.log.Warn("acknowledging filtered-out events failed; they are filtered again after the redelivery delay", "error", c.Err())
			break
		}
	}
	position := ""
	if read != nil {
		position = parseRead(read, reqs)
	}
	decoded := map[string]*decodedEntry{}
	r.mu.Lock()
	defer r.mu.Unlock()
	for i := range reqs {
		r.take(ctx, &reqs[i], decoded)
	}
	return position, nil
}

// parseRead hands each request what readScript read for it and returns the position, "" when
// the script failed (each request then carries the error).
func parseRead(read *redis.Cmd, reqs []readRequest) string {
	fail := func(err error) string {
		for i := range reqs {
			reqs[i].err = err
		}
		return ""
	}
	res, err := read.Slice()
	if err != nil {
		return fail(err)
	}
	if len(res) != 3 {
		return fail(fmt.Errorf("reading %d groups: unexpected answer of %d parts", len(reqs), len(res)))
	}
	position, _ := res[0].(string)
	flat, _ := res[1].([]any)
	entries := make(map[string]map[string]any, len(flat)/2)
	for i := 0; i+1 < len(flat); i += 2 {
		id, _ := flat[i].(string)
		fields, _ := flat[i+1].([]any)
		values := make(map[string]any, len(fields)/2)
		for j := 0; j+1 < len(fields); j += 2 {
			if k, ok := fields[j].(string); ok {
				values[k] = fields[j+1]
			}
		}
		entries[id] = values
	}
	reads, _ := res[2].([]any)
	if len(reads) != len(reqs) {
		return fail(fmt.Errorf("reading %d groups: answer for %d", len(reqs), len(reads)))
	}
	for i, rd := range reads {
		parts, _ := rd.([]any)
		if len(parts) == 0 {
			reqs[i].err = errors.New("reading a group: empty answer")
			continue
		}
		if parts[0] == "err" {
			reqs[i].err = groupReadError(fmt.Sprint(parts[1:]...))
			continue
		}
		msgs := make([]redis.XMessage, 0, len(parts)-1)
		for _, p := range parts[1:] {
			id, _ := p.(string)
			msgs = append(msgs, redis.XMessage{ID: id, Values: entries[id]})
		}
		reqs[i].msgs = msgs
	}
	return position
}

// groupReadError is the error Redis answered to one group's read inside readScript.
type groupReadError string

func (e groupReadError) Error() string { return string(e) }

// RedisError marks it as Redis' answer, which redis.HasErrorPrefix looks at.
func (e groupReadError) RedisError() {}

// allFailed reports a pipeline none of whose commands got an answer from Redis.
func allFailed(cmds []redis.Cmder) bool {
	for _, c := range cmds {
		err := c.Err()
		var rerr redis.Error
		if err == nil || errors.Is(err, redis.Nil) || errors.As(err, &rerr) {
			return false
		}
	}
	return true
}

func (r *streamReader) requeueFiltered(acks map[string]*filteredAcks) {
	if len(acks) == 0 {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	for group, a := range acks {
		if cur := r.filtered[group]; cur != nil {
			cur.ids = append(cur.ids, a.ids...)
			cur.forget = append(cur.forget, a.forget...)
		} else {
			r.filtered[group] = a
		}
	}
}

// flushFiltered acknowledges the filtered-out entries still held, when the reader stops.
func (r *streamReader) flushFiltered() {
	_, acks, _ := r.plan()
	if len(acks) == 0 {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	_, _ = r.round(ctx, nil, acks)
}

type decodedEntry struct {
	event *cloudevents.Event
	err   error
}

// take hands the entries of one group read to its consumer and notes whether the group may
// have more; r.mu is held.
func (r *streamReader) take(ctx context.Context, q *readRequest, decoded map[string]*decodedEntry) {
	m := q.m
	if err := q.err; err != nil {
		if isNoGroup(err) && !m.c.opts.ExternalGroups {
			_ = EnsureGroup(ctx, r.rdb, r.stream, m.c.t.Group())
		}
		if m.backoff == 0 {
			m.backoff = 50 * time.Millisecond
		}
		m.retryAt = time.Now().Add(m.backoff)
		if !m.left {
			m.c.log.Warn("reading events failed; retrying", "error", err, "in", m.backoff)
		}
		m.backoff = min(m.backoff*2, 5*time.Second)
		m.behind = true
		return
	}
	m.backoff = 0
	msgs := q.msgs
	redelivered := q.cursor != ">"
	switch {
	case q.cursor == ">":
		m.behind = int64(len(msgs)) >= q.count
	case len(msgs) == 0:
		m.behind = true
		m.cursor = ">" // the history of this consumer is done; read new entries
	default:
		m.cursor = msgs[len(msgs)-1].ID
		m.behind = true
	}
	if m.left {
		return // the entries stay pending in the group
	}
	c := m.c
	filtered := 0
	for _, msg := range msgs {
		d := decoded[msg.ID]
		if d == nil {
			d = &decodedEntry{}
			d.event, d.err = DecodeEntry(msg.Values)
			decoded[msg.ID] = d
		}
		if d.err != nil {
			m.queue <- readEntry{msg: msg, redelivered: redelivered} // the delivery parks it
			continue
		}
		if c.t.Filter != nil && c.t.Filter.Filter(ctx, *d.event) == eventfilter.FailFilter {
			filtered++
			a := r.filtered[c.t.Group()]
			if a == nil {
				a = &filteredAcks{roundsKey: c.roundsKey}
				r.filtered[c.t.Group()] = a
			}
			a.ids = append(a.ids, msg.ID)
			if redelivered {
				a.forget = append(a.forget, msg.ID)
			}
			continue
		}
		m.queue <- readEntry{msg: msg, event: d.event, redelivered: redelivered}
	}
	if filtered > 0 {
		c.filtered().Add(float64(filtered))
	}
}

// flushAcks acknowledges delivered entries of every group in one pipeline, one XACK per group,
// then drops the failed rounds of the acknowledged ones that had been redelivered. The entries
// are then no longer in flight.
func (r *streamReader) flushAcks(ctx context.Context, batch []deliveredAck) error {
	type groupAcks struct {
		ids, forget []string
		cmd         *redis.IntCmd
	}
	byConsumer := map[*Consumer]*groupAcks{}
	var order []*Consumer
	for _, a := range batch {
		g := byConsumer[a.c]
		if g == nil {
			g = &groupAcks{}
			byConsumer[a.c] = g
			order = append(order, a.c)
		}
		g.ids = append(g.ids, a.id)
		if a.forgetRounds {
			g.forget = append(g.forget, a.id)
		}
	}
	pipe := r.rdb.Pipeline()
	for _, c := range order {
		g := byConsumer[c]
		g.cmd = pipe.XAck(ctx, c.stream, c.t.Group(), g.ids...)
	}
	_, _ = pipe.Exec(ctx)
	forget := r.rdb.Pipeline()
	for _, c := range order {
		g := byConsumer[c]
		if err := g.cmd.Err(); err != nil {
			// Unacknowledged entries are redelivered later: at-least-once, never lost.
			c.log.Warn("acknowledging events failed; they will be redelivered", "count", len(g.ids), "error", err)
			continue
		}
		if len(g.forget) > 0 {
			forget.HDel(ctx, c.roundsKey, g.forget...)
		}
	}
	if forget.Len() > 0 {
		// The keys' expiry collects what a failure here leaves behind.
		if _, err := forget.Exec(ctx); err != nil {
			r.log.Debug("forgetting failed rounds failed", "error", err)
		}
	}
	for _, a := range batch {
		a.c.done(a.id)
		a.c.acking.Done()
	}
	return nil
}
