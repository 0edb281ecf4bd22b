package broker

import (
	"bytes"
	"context"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// BenchmarkAppendPipeline compares a pipeline of plain XADDs, one of append scripts with the
// deadline check only (script-no-key, the script before appends could be looked up), and one
// of the append scripts the store sends (script: the check plus the hash field recording the
// entry's id), on redis-server, maxBatch commands per round trip, and the Store under
// concurrent Appends. Run with -bench AppendPipeline -run '^$'.
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
	b.Run("script", func(b *testing.B) {
		stream := StreamKey("bench", "script")
		var n atomic.Uint64
		batches(b, func(p redis.Pipeliner) {
			deadline := time.Now().Add(time.Second)
			token := "0123456789abcdef." + strconv.FormatUint(n.Add(1), 36)
			p.EvalSha(ctx, appendScript.Hash(), []string{stream, appendedKey(stream, deadline)}, deadline.UnixMicro(), token, 5500, eventField, event)
		})
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

// noKeyAppendSource is the append script before appends could be looked up: the deadline check
// and the XADD, no key recording the entry's id. It is the baseline of BenchmarkAppendPipeline.
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
