package groupcommit_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/groupcommit"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// BenchmarkDoVersusRoundTrip measures, on a real redis-server and in the same run, how many
// INCRs per second concurrent callers complete through one Batcher (submit and wait; the flush
// is one pipeline) and with one Redis round trip each (the baseline). ratio is the first over
// the second; items/flush is the mean batch size.
func BenchmarkDoVersusRoundTrip(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := srv.Client()
	const items = 20000
	for _, workers := range []int{1, 16, 64, 256} {
		b.Run(fmt.Sprintf("workers=%d", workers), func(b *testing.B) {
			ctx := context.Background()
			var flushes atomic.Int64
			flush := pipeline(rdb)
			batcher := groupcommit.New(func(ctx context.Context, batch []redis.Cmder) error {
				flushes.Add(1)
				return flush(ctx, batch)
			}, groupcommit.Options{MaxBatch: 128})
			go batcher.Run(ctx, 2)
			defer batcher.Close()
			var batchedTime, roundTripTime time.Duration
			for range b.N {
				start := time.Now()
				spread(b, workers, items, func(i int) error {
					cmd := redis.NewIntCmd(ctx, "incr", fmt.Sprintf("bench:batched:%d", i%1024))
					if err := batcher.Do(ctx, cmd); err != nil {
						return err
					}
					return cmd.Err()
				})
				batchedTime += time.Since(start)
				start = time.Now()
				spread(b, workers, items, func(i int) error {
					return rdb.Incr(ctx, fmt.Sprintf("bench:roundtrip:%d", i%1024)).Err()
				})
				roundTripTime += time.Since(start)
			}
			batched := float64(items*b.N) / batchedTime.Seconds()
			roundTrip := float64(items*b.N) / roundTripTime.Seconds()
			b.ReportMetric(batched, "batched-items/s")
			b.ReportMetric(roundTrip, "roundtrip-items/s")
			b.ReportMetric(batched/roundTrip, "ratio")
			b.ReportMetric(float64(items*b.N)/float64(flushes.Load()), "items/flush")
		})
	}
}

// spread calls fn for 0..n-1 from workers goroutines.
func spread(b *testing.B, workers, n int, fn func(int) error) {
	var next atomic.Int64
	var wg sync.WaitGroup
	var failed atomic.Value
	for range workers {
		wg.Go(func() {
			for {
				i := int(next.Add(1)) - 1
				if i >= n {
					return
				}
				if err := fn(i); err != nil {
					failed.CompareAndSwap(nil, err)
					return
				}
			}
		})
	}
	wg.Wait()
	if err, _ := failed.Load().(error); err != nil {
		b.Fatal(err)
	}
}
