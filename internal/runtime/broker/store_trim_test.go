package broker

import (
	"context"
	"fmt"
	"math/rand/v2"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// storeBackends are the Redis servers the store must work on: a real redis-server and the
// embedded miniredis of knfaas up. Each returns a fresh server.
var storeBackends = map[string]func(t *testing.T) (*redis.Options, func() *redis.Client){
	"redis-server": func(t *testing.T) (*redis.Options, func() *redis.Client) {
		srv := redistest.Start(t, redistest.Options{})
		return &redis.Options{Addr: srv.Addr()}, srv.Client
	},
	"miniredis": func(t *testing.T) (*redis.Options, func() *redis.Client) {
		m := miniredis.RunT(t)
		return &redis.Options{Addr: m.Addr()}, func() *redis.Client {
			c := redis.NewClient(&redis.Options{Addr: m.Addr()})
			t.Cleanup(func() { _ = c.Close() })
			return c
		}
	},
}

// ackAfterFirstCommand acknowledges everything pending in one group right after the first
// command on the stream Trim sends: between the reads of a trim that reads the groups and
// their pending entries in separate calls.
type ackAfterFirstCommand struct {
	other  *redis.Client
	stream string
	group  string
	fired  atomic.Bool
}

func (h *ackAfterFirstCommand) DialHook(next redis.DialHook) redis.DialHook { return next }

func (h *ackAfterFirstCommand) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return next
}

func (h *ackAfterFirstCommand) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error {
		err := next(ctx, cmd)
		if onStream(cmd, h.stream) && h.fired.CompareAndSwap(false, true) {
			p, perr := h.other.XPendingExt(ctx, &redis.XPendingExtArgs{Stream: h.stream, Group: h.group, Start: "-", End: "+", Count: 1000}).Result()
			if perr != nil {
				return perr
			}
			for _, e := range p {
				h.other.XAck(ctx, h.stream, h.group, e.ID)
			}
		}
		return err
	}
}

func onStream(cmd redis.Cmder, stream string) bool {
	for _, a := range cmd.Args() {
		if a == stream {
			return true
		}
	}
	return false
}

// TestTrimSafeWhenAGroupAcksBetweenReads is the regression test for a trim that read the
// groups and their pending entries in separate calls: a group acknowledging everything in
// between made it trim the entries another group had read but not acknowledged.
func TestTrimSafeWhenAGroupAcksBetweenReads(t *testing.T) {
	for name, start := range storeBackends {
		t.Run(name, func(t *testing.T) {
			opts, client := start(t)
			setup := client()
			ctx := context.Background()
			stream := StreamKey("ns", "ack-between")
			for _, g := range []string{"holder", "quick"} {
				if err := EnsureGroup(ctx, setup, stream, g); err != nil {
					t.Fatal(err)
				}
			}
			var ids []string
			for i := 0; i < 10; i++ {
				id, err := setup.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventField, fmt.Sprint(i)}}).Result()
				if err != nil {
					t.Fatal(err)
				}
				ids = append(ids, id)
			}
			for _, g := range []string{"holder", "quick"} {
				if err := setup.XReadGroup(ctx, &redis.XReadGroupArgs{Group: g, Consumer: "c", Streams: []string{stream, ">"}, Count: 100}).Err(); err != nil {
					t.Fatal(err)
				}
			}
			setup.XAck(ctx, stream, "holder", ids[:3]...)

			// Groups are listed by name: quick comes after holder, the order in which an empty
			// pending range of quick replaced holder's bound.
			trimmer := redis.NewClient(opts)
			defer trimmer.Close()
			hook := &ackAfterFirstCommand{other: setup, stream: stream, group: "quick"}
			trimmer.AddHook(hook)
			if _, err := Trim(ctx, trimmer, stream); err != nil {
				t.Fatal(err)
			}
			if !hook.fired.Load() {
				t.Fatal("the hook did not acknowledge during Trim")
			}
			msgs, err := setup.XRange(ctx, stream, "-", "+").Result()
			if err != nil {
				t.Fatal(err)
			}
			have := map[string]bool{}
			for _, m := range msgs {
				have[m.ID] = true
			}
			for _, id := range ids[3:] {
				if !have[id] {
					t.Fatalf("entry %s, pending in group holder, was trimmed; the stream holds %d entries", id, len(msgs))
				}
			}
			// The next trim sees quick's acknowledgements and keeps exactly holder's pending entries.
			if _, err := Trim(ctx, setup, stream); err != nil {
				t.Fatal(err)
			}
			if n := setup.XLen(ctx, stream).Val(); n != 7 {
				t.Fatalf("after a second trim the stream holds %d entries, want the 7 pending in holder", n)
			}
		})
	}
}

// TestTrimNeverRemovesUnacknowledged runs groups that read and acknowledge at random while
// events are appended and Trim runs in a loop. Every group must read every event (an entry
// trimmed before a group read it would never reach it), and every entry a group holds
// unacknowledged must still be in the stream whenever the group looks.
func TestTrimNeverRemovesUnacknowledged(t *testing.T) {
	const groups, events = 6, 1000
	for name, start := range storeBackends {
		t.Run(name, func(t *testing.T) {
			_, client := start(t)
			rdb := client()
			ctx, cancel := context.WithCancel(context.Background())
			defer cancel()
			stream := StreamKey("ns", "random-trim")
			for g := 0; g < groups; g++ {
				if err := EnsureGroup(ctx, rdb, stream, fmt.Sprint("g", g)); err != nil {
					t.Fatal(err)
				}
			}
			store := NewStore(rdb)
			go store.Run(ctx, 2)

			var (
				mu         sync.Mutex
				appended   = map[string]bool{}
				violations []string
			)
			violate := func(format string, args ...any) {
				mu.Lock()
				violations = append(violations, fmt.Sprintf(format, args...))
				mu.Unlock()
			}
			var producing sync.WaitGroup
			producing.Add(1)
			go func() {
				defer producing.Done()
				for i := 0; i < events; i++ {
					id, err := store.Append(ctx, stream, eventField, fmt.Sprint(i))
					if err != nil {
						violate("append %d: %v", i, err)
						return
					}
					mu.Lock()
					appended[id] = true
					mu.Unlock()
				}
			}()

			trimCtx, stopTrim := context.WithCancel(ctx)
			var trims atomic.Int64
			trimDone := make(chan struct{})
			go func() {
				defer close(trimDone)
				for trimCtx.Err() == nil {
					if _, err := Trim(trimCtx, rdb, stream); err != nil && trimCtx.Err() == nil {
						violate("trim: %v", err)
						return
					}
					trims.Add(1)
				}
			}()

			read := make([]map[string]bool, groups)
			var consuming sync.WaitGroup
			for g := 0; g < groups; g++ {
				read[g] = map[string]bool{}
				consuming.Add(1)
				go func(g int) {
					defer consuming.Done()
					rnd := rand.New(rand.NewPCG(uint64(g), 42))
					group := fmt.Sprint("g", g)
					var held []string
					for len(read[g]) < events {
						res, err := rdb.XReadGroup(ctx, &redis.XReadGroupArgs{Group: group, Consumer: "c", Streams: []string{stream, ">"}, Count: int64(1 + rnd.IntN(30)), Block: 20 * time.Millisecond}).Result()
						if err != nil && err != redis.Nil {
							violate("%s reading: %v", group, err)
							return
						}
						for _, s := range res {
							for _, m := range s.Messages {
								if m.Values == nil {
									violate("%s read %s after it was trimmed", group, m.ID)
								}
								read[g][m.ID] = true
								held = append(held, m.ID)
							}
						}
						// Everything this group holds unacknowledged must still be stored.
						pipe := rdb.Pipeline()
						checks := make([]*redis.XMessageSliceCmd, len(held))
						for i, id := range held {
							checks[i] = pipe.XRange(ctx, stream, id, id)
						}
						_, _ = pipe.Exec(ctx)
						for i, c := range checks {
							if msgs, err := c.Result(); err != nil || len(msgs) != 1 {
								violate("%s: pending entry %s was trimmed before %s acknowledged it (%v)", group, held[i], group, err)
							}
						}
						// Acknowledge a random part of what is held, in random order.
						rnd.Shuffle(len(held), func(i, j int) { held[i], held[j] = held[j], held[i] })
						n := rnd.IntN(len(held) + 1)
						if len(read[g]) == events {
							n = len(held)
						}
						if n > 0 {
							if err := rdb.XAck(ctx, stream, group, held[:n]...).Err(); err != nil {
								violate("%s acking: %v", group, err)
								return
							}
							held = held[n:]
						}
						mu.Lock()
						stop := len(violations) > 20
						mu.Unlock()
						if stop {
							return
						}
					}
				}(g)
			}
			producing.Wait()
			consuming.Wait()
			stopTrim()
			<-trimDone
			for _, v := range violations {
				t.Error(v)
			}
			if t.Failed() {
				return
			}
			for g := range read {
				for id := range appended {
					if !read[g][id] {
						t.Fatalf("group g%d never read %s: it was trimmed before the group read it", g, id)
					}
				}
			}
			if _, err := Trim(ctx, rdb, stream); err != nil {
				t.Fatal(err)
			}
			if n := rdb.XLen(ctx, stream).Val(); n > 0 {
				t.Fatalf("%d entries left after every group acknowledged everything; want 0", n)
			}
			t.Logf("%d events, %d groups, %d trims", events, groups, trims.Load())
		})
	}
}
