// Package broker is a durable Knative Broker data plane on Redis Streams: an ingress that
// answers 202 only after an event is stored, and one consumer group per Trigger that delivers
// with Knative's own filters, dispatcher, retry and dead-letter semantics.
package broker

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"

	"github.com/redis/go-redis/v9"
)

// StreamKey is the Redis Stream holding the events of a broker.
func StreamKey(namespace, name string) string {
	return "knfaas:broker:stream:" + namespace + "/" + name
}

// Store appends events to broker streams, coalescing concurrent appends into pipelines so that
// many requests share one Redis round trip (group commit) without giving up per-event acks.
type Store struct {
	rdb  redis.UniversalClient
	reqs chan *appendReq
}

type appendReq struct {
	stream string
	fields []any
	id     string
	err    error
	done   chan struct{}
}

// maxBatch bounds how many appends share one pipeline.
const maxBatch = 256

// NewStore returns a Store; Run must be running for Append to complete.
func NewStore(rdb redis.UniversalClient) *Store {
	return &Store{rdb: rdb, reqs: make(chan *appendReq, 4096)}
}

// Run drains appends with writers concurrent pipelines until ctx ends.
func (s *Store) Run(ctx context.Context, writers int) {
	done := make(chan struct{})
	for i := 0; i < writers; i++ {
		go func() {
			defer func() { done <- struct{}{} }()
			s.write(ctx)
		}()
	}
	for i := 0; i < writers; i++ {
		<-done
	}
}

func (s *Store) write(ctx context.Context) {
	batch := make([]*appendReq, 0, maxBatch)
	for {
		batch = batch[:0]
		select {
		case <-ctx.Done():
			return
		case r := <-s.reqs:
			batch = append(batch, r)
		}
	fill:
		for len(batch) < maxBatch {
			select {
			case r := <-s.reqs:
				batch = append(batch, r)
			default:
				break fill
			}
		}
		pipe := s.rdb.Pipeline()
		cmds := make([]*redis.StringCmd, len(batch))
		for i, r := range batch {
			cmds[i] = pipe.XAdd(context.Background(), &redis.XAddArgs{Stream: r.stream, Values: r.fields})
		}
		_, _ = pipe.Exec(context.Background())
		for i, r := range batch {
			r.id, r.err = cmds[i].Result()
			close(r.done)
		}
	}
}

// Append stores an entry of fields (a flat field/value list, see Entry) at the end of stream
// and returns its entry id once Redis acknowledged it.
func (s *Store) Append(ctx context.Context, stream string, fields ...any) (string, error) {
	r := &appendReq{stream: stream, fields: fields, done: make(chan struct{})}
	select {
	case s.reqs <- r:
	case <-ctx.Done():
		return "", ctx.Err()
	}
	// Once queued the write is not abandoned: its outcome decides the answer.
	<-r.done
	if r.err != nil {
		return "", fmt.Errorf("storing event in %s: %w", stream, r.err)
	}
	return r.id, nil
}

// EnsureGroup creates the consumer group of a trigger at the end of the stream, so that it
// sees events accepted from now on, and leaves an existing group where it is.
func EnsureGroup(ctx context.Context, rdb redis.UniversalClient, stream, group string) error {
	err := rdb.XGroupCreateMkStream(ctx, stream, group, "$").Err()
	if err != nil && !strings.HasPrefix(err.Error(), "BUSYGROUP") {
		return fmt.Errorf("creating consumer group %s on %s: %w", group, stream, err)
	}
	return nil
}

// isNoGroup reports a consumer group that vanished (a Redis without persistence restarted).
func isNoGroup(err error) bool {
	return err != nil && strings.HasPrefix(err.Error(), "NOGROUP")
}

// entryTime is the acceptance time encoded in a stream entry id (milliseconds since epoch).
func entryTime(id string) time.Time {
	ms, err := strconv.ParseInt(strings.SplitN(id, "-", 2)[0], 10, 64)
	if err != nil {
		return time.Time{}
	}
	return time.UnixMilli(ms)
}

// Trim removes entries that every consumer group has acknowledged: everything before the
// oldest entry still pending or not yet delivered in any group. Without groups, nothing can
// ever read the entries, so all but the last are removed.
func Trim(ctx context.Context, rdb redis.UniversalClient, stream string) (int64, error) {
	groups, err := rdb.XInfoGroups(ctx, stream).Result()
	if err != nil {
		if errors.Is(err, redis.Nil) || strings.Contains(err.Error(), "no such key") {
			return 0, nil
		}
		return 0, fmt.Errorf("reading groups of %s: %w", stream, err)
	}
	minID := ""
	for _, g := range groups {
		keep := nextID(g.LastDeliveredID)
		if g.Pending > 0 {
			p, err := rdb.XPending(ctx, stream, g.Name).Result()
			if err != nil {
				return 0, fmt.Errorf("reading pending entries of %s on %s: %w", g.Name, stream, err)
			}
			keep = p.Lower
		}
		if minID == "" || lessID(keep, minID) {
			minID = keep
		}
	}
	if minID == "" {
		return rdb.XTrimMaxLen(ctx, stream, 1).Result()
	}
	return rdb.XTrimMinID(ctx, stream, minID).Result()
}

func parseID(id string) (ms, seq uint64) {
	parts := strings.SplitN(id, "-", 2)
	ms, _ = strconv.ParseUint(parts[0], 10, 64)
	if len(parts) == 2 {
		seq, _ = strconv.ParseUint(parts[1], 10, 64)
	}
	return ms, seq
}

func lessID(a, b string) bool {
	am, as := parseID(a)
	bm, bs := parseID(b)
	return am < bm || (am == bm && as < bs)
}

func nextID(id string) string {
	ms, seq := parseID(id)
	return fmt.Sprintf("%d-%d", ms, seq+1)
}
