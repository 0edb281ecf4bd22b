package projection

import (
	"context"
	"strconv"
	"sync/atomic"
	"testing"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/roundtrips"
)

// BenchmarkApply compares the kit with a hand-written loop that sends the same script with
// the same keys and arguments straight through go-redis (EVALSHA, pipelined by go-redis'
// connection pool under RunParallel), in the same run on the same server. It reports
// events/s for both, their ratio, and Redis round trips per event counted by a client hook.
//
//	go test -run '^$' -bench Apply ./internal/projection
func BenchmarkApply(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	ctx := context.Background()
	var seq atomic.Int64
	change := func(i int64) (EventRef, Change) {
		return EventRef{Source: "bench", ID: strconv.FormatInt(i, 10)},
			Change{Key: "SKU-" + strconv.FormatInt(i%64, 10), Ops: []Op{Incr("store-1", -1)}, Watches: []Watch{{Field: "store-1", Threshold: 5}}}
	}
	// start connects a client with a round-trip counter and a loaded projector, then starts the
	// clock for 8 goroutines per CPU.
	start := func(b *testing.B) (*redis.Client, *Projector, *roundtrips.Counter) {
		rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 64})
		b.Cleanup(func() { rdb.Close() })
		k, _ := New(rdb, "bench", "bench-model", Options{})
		if err := k.Load(ctx); err != nil {
			b.Fatal(err)
		}
		hook := &roundtrips.Counter{}
		rdb.AddHook(hook)
		b.SetParallelism(8)
		b.ResetTimer()
		return rdb, k, hook
	}
	measure := func(b *testing.B, apply func(rdb *redis.Client, k *Projector, i int64) error) (float64, float64) {
		rdb, k, hook := start(b)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if err := apply(rdb, k, seq.Add(1)); err != nil {
					b.Error(err)
					return
				}
			}
		})
		b.StopTimer()
		perEvent := float64(hook.Count()) / float64(b.N)
		rate := float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(perEvent, "roundtrips/event")
		b.ReportMetric(rate, "events/s")
		return rate, perEvent
	}
	var kitRate, rawRate float64
	b.Run("kit", func(b *testing.B) {
		kitRate, _ = measure(b, func(_ *redis.Client, k *Projector, i int64) error {
			ref, ch := change(i)
			_, err := k.Apply(ctx, ref, ch)
			return err
		})
	})
	b.Run("raw-evalsha", func(b *testing.B) {
		rawRate, _ = measure(b, func(rdb *redis.Client, k *Projector, i int64) error {
			ref, ch := change(i)
			keys := []string{k.InboxKey(ref), k.EntryKey(ch.Key), k.IndexKey(), k.VersionKey()}
			return rdb.EvalSha(ctx, applyScript.Hash(), keys, int64(604800000), ch.Key, 1, "incr", "store-1", int64(-1), 1, "store-1", int64(5)).Err()
		})
		if kitRate > 0 {
			b.ReportMetric(kitRate/rawRate, "kit/raw")
		}
	})
	// The same script sent in pipelines of 64 events per round trip: the ceiling for a consumer
	// that could batch. A projector answering one HTTP delivery at a time cannot, so this is
	// reported for scale, not as the kit's target.
	b.Run("raw-pipelined-evalsha-64", func(b *testing.B) {
		rdb, k, hook := start(b)
		b.RunParallel(func(pb *testing.PB) {
			p := rdb.Pipeline()
			flush := func() {
				if p.Len() == 0 {
					return
				}
				if _, err := p.Exec(ctx); err != nil {
					b.Error(err)
				}
			}
			for pb.Next() {
				ref, ch := change(seq.Add(1))
				keys := []string{k.InboxKey(ref), k.EntryKey(ch.Key), k.IndexKey(), k.VersionKey()}
				p.EvalSha(ctx, applyScript.Hash(), keys, int64(604800000), ch.Key, 1, "incr", "store-1", int64(-1), 1, "store-1", int64(5))
				if p.Len() == 64 {
					flush()
				}
			}
			flush()
		})
		b.StopTimer()
		rate := float64(b.N) / b.Elapsed().Seconds()
		b.ReportMetric(rate, "events/s")
		b.ReportMetric(float64(hook.Count())/float64(b.N), "roundtrips/event")
		if kitRate > 0 {
			b.ReportMetric(kitRate/rate, "kit/pipelined")
		}
	})
}
