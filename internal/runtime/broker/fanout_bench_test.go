package broker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// cpuTime is the CPU time this process used so far (user and system); it includes the
// subscriber's share.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkFanOut delivers events of 128 bytes from one stream to N Triggers on a real
// redis-server, each matching every event or 1 % of them, and reports the deliveries per
// second and the process' CPU time per delivery (the subscriber's included), with the
// dispatcher's connection pool sized as `knfaas up` sizes it (net/http's default keeps two idle
// connections per host, and the deliveries would dial most of theirs). Run it with -cpuprofile
// to see where a delivery's time goes, e.g. how much is goroutine stack growth
// (runtime.newstack).
func BenchmarkFanOut(b *testing.B) {
	kncloudevents.ConfigureConnectionArgs(&kncloudevents.ConnectionArgs{MaxIdleConns: 2048, MaxIdleConnsPerHost: 512})
	b.Cleanup(func() { kncloudevents.ConfigureConnectionArgs(nil) })
	for _, tc := range []struct {
		triggers int
		onePct   bool
		// parallelism is each Trigger's deliveries in flight: few, so that 100 Triggers stay
		// within the process' open files, and 32 for one Trigger, as bench-broker.sh loads it.
		parallelism int
	}{{1, false, 4}, {1, false, 32}, {10, false, 4}, {100, false, 4}, {100, true, 4}} {
		name := fmt.Sprintf("triggers=%d/match=all/parallelism=%d", tc.triggers, tc.parallelism)
		if tc.onePct {
			name = fmt.Sprintf("triggers=%d/match=1pct/parallelism=%d", tc.triggers, tc.parallelism)
		}
		b.Run(name, func(b *testing.B) {
			srv := redistest.Start(b, redistest.Options{})
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: max(8, 4*tc.triggers)})
			b.Cleanup(func() { _ = rdb.Close() })
			var delivered atomic.Int64
			sub := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				_, _ = io.Copy(io.Discard, r.Body)
				delivered.Add(1)
				w.WriteHeader(http.StatusAccepted)
			}))
			b.Cleanup(sub.Close)
			subURL, err := apis.ParseURL(sub.URL)
			if err != nil {
				b.Fatal(err)
			}
			ctx, cancel := context.WithCancel(context.Background())
			stream := StreamKey("ns", "b")
			dispatcher := kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil)
			var stopped []chan struct{}
			for i := range tc.triggers {
				trig := &Trigger{Namespace: "ns", Name: fmt.Sprint("t", i), Broker: "b", Subscriber: duckv1.Addressable{URL: subURL},
					Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
				if tc.onePct {
					trig.Filter = TriggerFilter(typeFilter(fmt.Sprint("k", i)), nil)
				}
				if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
					b.Fatal(err)
				}
				c := NewConsumer(trig, rdb, dispatcher, quietLog(), metrics.New(), ConsumerOptions{Parallelism: tc.parallelism})
				done := make(chan struct{})
				stopped = append(stopped, done)
				go func() { _ = c.Run(ctx); close(done) }()
			}
			b.Cleanup(func() {
				cancel()
				for _, d := range stopped {
					<-d
				}
			})
			fan := tc.triggers
			if tc.onePct {
				fan = 1
			}
			events := max(b.N/fan, 1)
			entries := make([][]any, events)
			for i := range entries {
				typ := "all"
				if tc.onePct {
					typ = fmt.Sprint("k", i%100)
				}
				entries[i] = paddedFields(b, fmt.Sprint("e", i), typ, 128)
			}
			b.ResetTimer()
			cpu0 := cpuTime()
			start := time.Now()
			base := delivered.Load()
			for i := 0; i < events; i += 100 {
				pipe := rdb.Pipeline()
				for _, f := range entries[i:min(i+100, events)] {
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: f})
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
			want := int64(events * fan)
			last, progress := int64(-1), time.Now()
			for got := delivered.Load() - base; got < want; got = delivered.Load() - base {
				if got != last {
					last, progress = got, time.Now()
				} else if time.Since(progress) > time.Minute {
					b.Fatalf("%d of %d deliveries, none for a minute", got, want)
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(want)/time.Since(start).Seconds(), "deliveries/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(want), "cpu-µs/delivery")
		})
	}
}
