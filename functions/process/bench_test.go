package main

import (
	"context"
	"fmt"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/roundtrips"
)

// BenchmarkSteps drives whole instances (start, paid, cooked, shipped = 4 transitions each)
// through Handle, in parallel, and in the same run the raw Redis work of one transition as a
// single pipeline of the same commands without the state machine's logic. It reports
// transitions/s for both, their ratio, and Redis round trips per transition (EVALSHA + the
// batched outbox acknowledgements).
func BenchmarkSteps(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 64})
	defer rdb.Close()
	var rt roundtrips.Counter
	f := New()
	cfg := Config{DefinitionsDir: "testdata", Owner: "process", Retention: time.Hour, TimelineMax: 100, AckInterval: 20 * time.Millisecond, SigningKey: testSigningKey}
	if err := f.start(context.Background(), cfg, rdb, func(context.Context, event.Event) error { return nil }); err != nil {
		b.Fatal(err)
	}
	defer f.Stop(context.Background())
	// load the script before counting
	if _, err := f.Handle(context.Background(), ce("warm", "test.order.placed", "warm", `{}`)); err != nil {
		b.Fatal(err)
	}
	rdb.AddHook(&rt)
	var seq atomic.Int64
	var transitions atomic.Int64
	var engineTime, rawTime time.Duration

	for b.Loop() {
		start := time.Now()
		run(b, 64, 2000, func(i int64) error {
			inst := fmt.Sprintf("i%d", seq.Add(1))
			for _, e := range []event.Event{
				ce(inst+"s", "test.order.placed", inst, `{"amount":5}`),
				ce(inst+"p", "test.paid", inst, ""),
				ce(inst+"c", "test.cooked", inst, ""),
				ce(inst+"h", "test.shipped", inst, ""),
			} {
				if _, err := f.Handle(context.Background(), e); err != nil {
					return err
				}
				transitions.Add(1)
			}
			return nil
		})
		engineTime += time.Since(start)

		start = time.Now()
		run(b, 64, 8000, func(i int64) error { return rawTransition(rdb, fmt.Sprintf("raw%d", seq.Add(1))) })
		rawTime += time.Since(start)
	}
	f.acks.close()
	n := float64(transitions.Load())
	engineRate := n / engineTime.Seconds()
	rawRate := float64(8000*b.N) / rawTime.Seconds()
	b.ReportMetric(engineRate, "transitions/s")
	b.ReportMetric(rawRate, "raw-pipeline/s")
	b.ReportMetric(engineRate/rawRate, "ratio-vs-raw")
	// the raw pipelines count one round trip each; subtract them
	b.ReportMetric((float64(rt.Count())-float64(8000*b.N))/n, "roundtrips/transition")
}

// run calls fn n times from workers goroutines.
func run(b *testing.B, workers int, n int64, fn func(int64) error) {
	var next atomic.Int64
	errs := make(chan error, workers)
	for range workers {
		go func() {
			for {
				i := next.Add(1)
				if i > n {
					errs <- nil
					return
				}
				if err := fn(i); err != nil {
					errs <- err
					return
				}
			}
		}()
	}
	for range workers {
		if err := <-errs; err != nil {
			b.Fatal(err)
		}
	}
}

// rawTransition is the Redis work of one typical transition (a reply that completes a step and
// issues the next command) as one MULTI pipeline, without reading state or deciding anything.
func rawTransition(rdb *redis.Client, inst string) error {
	ctx := context.Background()
	now := time.Now().UnixMilli()
	_, err := rdb.TxPipelined(ctx, func(p redis.Pipeliner) error {
		h := "knfaas:process:instance:" + inst
		p.Exists(ctx, h)
		p.SIsMember(ctx, "knfaas:process:seen:"+inst, "/t "+inst)
		p.HMGet(ctx, h, "def", "status", "idx", "attempt", "done", "cidx", "seq", "data", "deadline", "gaveup")
		p.SAdd(ctx, "knfaas:process:seen:"+inst, "/t "+inst)
		p.RPush(ctx, "knfaas:process:timeline:"+inst, `{"kind":"in","id":"x","type":"test.paid","at":1,"seq":2}`)
		p.ZRem(ctx, "knfaas:timer:deadlines", inst+":pay:1:deadline")
		p.HDel(ctx, "knfaas:timer:payloads", inst+":pay:1:deadline")
		p.RPush(ctx, "knfaas:process:outbox:"+inst, `{"id":"`+inst+`:cook:1","type":"test.cook","source":"/knfaas/process/order","subject":"`+inst+`","data":"{}","ext":{}}`)
		p.RPush(ctx, "knfaas:process:timeline:"+inst, `{"kind":"out","id":"x","type":"test.cook","at":1,"seq":2}`)
		p.ZAdd(ctx, "knfaas:timer:deadlines", redis.Z{Score: float64(now + 60000), Member: inst + ":cook:1:deadline"})
		p.HSet(ctx, "knfaas:timer:payloads", inst+":cook:1:deadline", `{"subject":"`+inst+`","command":"`+inst+`:cook:1","owner":"process","due":1}`)
		p.RPush(ctx, "knfaas:process:timeline:"+inst, `{"kind":"timer","note":"scheduled","at":1,"seq":2}`)
		p.HSet(ctx, h, "status", "running", "idx", 3, "attempt", 1, "done", "[1]", "cidx", 0, "seq", 2, "deadline", inst+":cook:1:deadline", "gaveup", "[]", "updated", now)
		p.LTrim(ctx, "knfaas:process:timeline:"+inst, -500, -1)
		p.ZAdd(ctx, "knfaas:process:instances", redis.Z{Score: float64(now), Member: inst})
		p.ZRemRangeByScore(ctx, "knfaas:process:instances", "-inf", fmt.Sprint(now-3600000))
		p.LRange(ctx, "knfaas:process:outbox:"+inst, 0, -1)
		return nil
	})
	return err
}
