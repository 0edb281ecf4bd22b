package broker

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"sync/atomic"
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

// BenchmarkDelivery delivers events of 128 bytes from a real redis-server to one Trigger with
// the dispatcher's connection pool sized as `knfaas up` sizes it (so that connections are
// reused, not dialled per delivery), and reports the deliveries per second and the process'
// CPU time per delivery (the subscriber's included). Run it with -cpuprofile to see where a
// delivery's time goes, e.g. how much is goroutine stack growth (runtime.newstack).
func BenchmarkDelivery(b *testing.B) {
	kncloudevents.ConfigureConnectionArgs(&kncloudevents.ConnectionArgs{MaxIdleConns: 2048, MaxIdleConnsPerHost: 512})
	b.Cleanup(func() { kncloudevents.ConfigureConnectionArgs(nil) })
	for _, parallelism := range []int{4, 32} {
		b.Run(fmt.Sprintf("parallelism=%d", parallelism), func(b *testing.B) {
			srv := redistest.Start(b, redistest.Options{})
			rdb := redis.NewClient(&redis.Options{Addr: srv.Addr(), PoolSize: 8})
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
			trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: duckv1.Addressable{URL: subURL},
				Retry: kncloudevents.NoRetries(), ReplyURL: "http://127.0.0.1:1/ns/b"}
			if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
				b.Fatal(err)
			}
			c := NewConsumer(trig, rdb, kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil), quietLog(), metrics.New(), ConsumerOptions{Parallelism: parallelism})
			stopped := make(chan struct{})
			go func() { _ = c.Run(ctx); close(stopped) }()
			b.Cleanup(func() { cancel(); <-stopped })
			entries := make([][]any, b.N)
			for i := range entries {
				entries[i] = paddedFields(b, fmt.Sprint("e", i), "t", 128)
			}
			b.ResetTimer()
			cpu0 := cpuTime()
			start := time.Now()
			for i := 0; i < b.N; i += 100 {
				pipe := rdb.Pipeline()
				for _, f := range entries[i:min(i+100, b.N)] {
					pipe.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: f})
				}
				if _, err := pipe.Exec(ctx); err != nil {
					b.Fatal(err)
				}
			}
			last, progress := int64(-1), time.Now()
			for got := delivered.Load(); got < int64(b.N); got = delivered.Load() {
				if got != last {
					last, progress = got, time.Now()
				} else if time.Since(progress) > time.Minute {
					b.Fatalf("%d of %d deliveries, none for a minute", got, b.N)
				}
				time.Sleep(time.Millisecond)
			}
			b.StopTimer()
			b.ReportMetric(float64(b.N)/time.Since(start).Seconds(), "deliveries/s")
			b.ReportMetric(float64((cpuTime()-cpu0).Microseconds())/float64(b.N), "cpu-µs/delivery")
		})
	}
}
