package broker

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// BenchmarkAppendPipeline compares, on redis-server, a pipeline of maxBatch plain XADDs, one of
// maxBatch runs of the append script of earlier releases (script-no-key: one run per append,
// the deadline check and the XADD), one run of the store's append script storing maxBatch
// entries (script: the checks, the XADDs and the hash recording the entries' ids), and the
// Store under concurrent Appends. Run with -bench AppendPipeline -run '^$'.
func BenchmarkAppendPipeline(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	event := bytes.Repeat([]byte("x"), 1024)
	if err := appendScript.Load(ctx, rdb).Err(); err != nil {
		b.Fatal(err)
	}
	batches := func(b *testing.B, queue func(p redis.Pipeliner)) {
		defer reportRedisTime(b, rdb)()
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
	noKey := redis.NewScript(noKeyAppendSource)
	if err := noKey.Load(ctx, rdb).Err(); err != nil {
		b.Fatal(err)
	}
	b.Run("script-no-key", func(b *testing.B) {
		stream := StreamKey("bench", "script-no-key")
		batches(b, func(p redis.Pipeliner) {
			deadline := time.Now().Add(time.Minute).UnixMicro()
			p.EvalSha(ctx, noKey.Hash(), []string{stream}, deadline, eventField, event)
		})
		rdb.Del(ctx, stream)
	})
	b.Run("script", func(b *testing.B) { // one run per maxBatch appends, as the store's pipelines
		defer reportRedisTime(b, rdb)()
		stream := StreamKey("bench", "script")
		var n uint64
		for done := 0; done < b.N; {
			deadline := time.Now().Add(time.Second)
			args := []any{5500}
			for i := 0; i < maxBatch && done < b.N; i++ {
				n++
				args = append(args, deadline.UnixMicro(), "0123456789abcdef."+strconv.FormatUint(n, 36), 2, eventField, event)
				done++
			}
			if err := rdb.EvalSha(ctx, appendScript.Hash(), []string{stream, appendedKey(stream, deadline)}, args...).Err(); err != nil {
				b.Fatal(err)
			}
		}
		rdb.Del(ctx, stream)
	})
	b.Run("store", func(b *testing.B) {
		stream := StreamKey("bench", "store")
		sctx, cancel := context.WithCancel(ctx)
		defer cancel()
		store := NewStore(rdb)
		go store.Run(sctx, 4)
		defer reportRedisTime(b, rdb)()
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

// noKeyAppendSource is the append script before appends could be looked up: one run per
// append, the deadline check and the XADD, nothing recording the entry's id. It is the baseline of BenchmarkAppendPipeline.
const noKeyAppendSource = `
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
if now > tonumber(ARGV[1]) then
  return redis.error_reply('KNFAAS_LATE')
end
return redis.call('XADD', KEYS[1], '*', unpack(ARGV, 2))
`

// reportRedisTime returns a function that reports the CPU time redis-server used per op since
// (redis-cpu-µs/op, user plus system, from INFO cpu): the cost on the server, which other
// processes on the machine disturb far less than ns/op.
func reportRedisTime(b *testing.B, rdb *redis.Client) func() {
	before := redisCPU(b, rdb)
	return func() {
		b.ReportMetric((redisCPU(b, rdb)-before)*1e6/float64(b.N), "redis-cpu-µs/op")
	}
}

// redisCPU is the CPU time redis-server has used, in seconds.
func redisCPU(b *testing.B, rdb *redis.Client) float64 {
	info, err := rdb.Info(context.Background(), "cpu").Result()
	if err != nil {
		b.Fatal(err)
	}
	var total float64
	for _, line := range strings.Split(info, "\n") {
		k, v, _ := strings.Cut(strings.TrimSpace(line), ":")
		if k == "used_cpu_sys" || k == "used_cpu_user" {
			f, err := strconv.ParseFloat(v, 64)
			if err != nil {
				b.Fatal(err)
			}
			total += f
		}
	}
	return total
}
