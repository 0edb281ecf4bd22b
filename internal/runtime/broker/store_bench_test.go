package broker

import (
	"bytes"
	"context"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// BenchmarkAppendPipeline compares a pipeline of plain XADDs with one of append scripts
// (EVALSHA with the deadline check) on redis-server, maxBatch commands per round trip, and
// the Store under concurrent Appends. Run with -bench AppendPipeline -run '^$'.
func BenchmarkAppendPipeline(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	event := bytes.Repeat([]byte("x"), 1024)
	if err := appendScript.Load(ctx, rdb).Err(); err != nil {
		b.Fatal(err)
	}
	batches := func(b *testing.B, queue func(p redis.Pipeliner)) {
		for done := 0; done < b.N; {
			p := rdb.Pipeline()
			for i := 0; i < maxBatch && done < b.N; i++ {
				queue(p)
				done++
			}
			if _, err := p.Exec(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("xadd", func(b *testing.B) {
		stream := StreamKey("bench", "xadd")
		batches(b, func(p redis.Pipeliner) {
			p.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: []any{eventField, event}})
		})
		rdb.Del(ctx, stream)
	})
	b.Run("script", func(b *testing.B) {
		stream := StreamKey("bench", "script")
		batches(b, func(p redis.Pipeliner) {
			deadline := time.Now().Add(time.Minute).UnixMicro()
			p.EvalSha(ctx, appendScript.Hash(), []string{stream}, deadline, eventField, event)
		})
		rdb.Del(ctx, stream)
	})
	b.Run("store", func(b *testing.B) {
		stream := StreamKey("bench", "store")
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		store := NewStore(rdb)
		go store.Run(sctx, 4)
		b.SetParallelism(64)
		b.RunParallel(func(pb *testing.PB) {
			for pb.Next() {
				if _, err := store.Append(ctx, stream, eventField, event); err != nil {
					b.Error(err)
					return
				}
			}
		})
		rdb.Del(ctx, stream)
	})
}
