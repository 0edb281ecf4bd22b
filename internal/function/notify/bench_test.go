package notify

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// benchConcurrency is each endpoint's bulkhead in the benchmarks, and the number of clients
// of the bare net/http baseline.
const benchConcurrency = 8

// deliverAll enqueues n messages for eps and runs a Dispatcher until counted reports n
// deliveries; it returns the elapsed time.
func deliverAll(b *testing.B, rdb *redis.Client, eps []*Endpoint, names []string, n int, counted func() int64) time.Duration {
	b.Helper()
	_ = rdb.FlushAll(context.Background()).Err()
	store := NewStore(rdb, time.Hour)
	d := NewDispatcher(store, deadletter.NewStore(rdb, deadletter.Options{}), eps, Options{
		Schedule: Schedule{time.Hour}, Poll: 5 * time.Millisecond,
		Client: &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchConcurrency}},
	})
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	start := time.Now()
	go func() { defer close(done); d.Run(ctx) }()
	for i := range n {
		if _, _, err := store.Enqueue(ctx, newEvent("m"+strconv.Itoa(i)), names, "", time.Now()); err != nil {
			b.Fatal(err)
		}
		if i%64 == 0 {
			d.Wake()
		}
	}
	d.Wake()
	for counted() < int64(n) {
		time.Sleep(time.Millisecond)
	}
	elapsed := time.Since(start)
	cancel()
	<-done
	return elapsed
}

// BenchmarkDeliveriesVsBareHTTP delivers b.N messages to a healthy no-op endpoint through the
// whole path (enqueue, claim, signed POST, circuit update, attempt record; real redis-server)
// and, in the same run, makes b.N bare net/http requests to a hello handler with as many
// clients as the endpoint's bulkhead. It reports both rates and their ratio.
func BenchmarkDeliveriesVsBareHTTP(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := srv.Client()
	var got atomic.Int64
	noop := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got.Add(1)
		w.WriteHeader(http.StatusNoContent)
	}))
	defer noop.Close()
	hello := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) { _, _ = w.Write([]byte("hello")) }))
	defer hello.Close()

	b.ResetTimer()
	elapsed := deliverAll(b, rdb, []*Endpoint{endpoint("noop", noop.URL, benchConcurrency)}, []string{"noop"}, b.N, got.Load)

	client := &http.Client{Transport: &http.Transport{MaxIdleConnsPerHost: benchConcurrency}}
	var next atomic.Int64
	var wg sync.WaitGroup
	start := time.Now()
	for range benchConcurrency {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for next.Add(1) <= int64(b.N) {
				resp, err := client.Get(hello.URL)
				if err != nil {
					b.Error(err)
					return
				}
				resp.Body.Close()
			}
		}()
	}
	wg.Wait()
	bare := time.Since(start)
	b.StopTimer()
	deliveries, baseline := float64(b.N)/elapsed.Seconds(), float64(b.N)/bare.Seconds()
	b.ReportMetric(deliveries, "deliveries/s")
	b.ReportMetric(baseline, "hello/s")
	b.ReportMetric(deliveries/baseline, "ratio")
}

// BenchmarkBulkheadDeadEndpoint delivers b.N messages to 10 healthy endpoints, once alone and
// once with an 11th endpoint that never answers (each attempt times out), and reports the
// healthy endpoints' throughput with the dead one as a ratio of the all-healthy run.
func BenchmarkBulkheadDeadEndpoint(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := srv.Client()
	var got atomic.Int64
	var healthy []*Endpoint
	var names []string
	for i := range 10 {
		s := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			got.Add(1)
			w.WriteHeader(http.StatusNoContent)
		}))
		defer s.Close()
		healthy = append(healthy, endpoint(fmt.Sprintf("h%d", i), s.URL, benchConcurrency))
		names = append(names, fmt.Sprintf("h%d", i))
	}
	release := make(chan struct{})
	hang := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hang.Close()
	defer close(release)
	dead := endpoint("dead", hang.URL, benchConcurrency)
	dead.Timeout = 500 * time.Millisecond

	n := max(b.N/10, 50)
	b.ResetTimer()
	alone := deliverAll(b, rdb, healthy, names, n, func() int64 { return got.Load() / 10 })
	got.Store(0)
	withDead := deliverAll(b, rdb, append(healthy, dead), append(names, "dead"), n, func() int64 { return got.Load() / 10 })
	b.StopTimer()
	b.ReportMetric(float64(10*n)/alone.Seconds(), "healthy-alone/s")
	b.ReportMetric(float64(10*n)/withDead.Seconds(), "healthy-with-dead/s")
	b.ReportMetric(alone.Seconds()/withDead.Seconds(), "ratio")
}

// BenchmarkMemoryPerWaitingMessage enqueues b.N messages (100-byte data, one endpoint) that
// wait for a retry and reports the Redis memory each holds; the function holds none of them.
func BenchmarkMemoryPerWaitingMessage(b *testing.B) {
	srv := redistest.Start(b, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	store := NewStore(rdb, time.Hour)
	used := func() int64 {
		info := rdb.Info(ctx, "memory").Val()
		for _, line := range strings.Split(info, "\r\n") {
			if v, ok := strings.CutPrefix(line, "used_memory:"); ok {
				n, _ := strconv.ParseInt(v, 10, 64)
				return n
			}
		}
		b.Fatal("no used_memory")
		return 0
	}
	n := max(b.N, 10000)
	before := used()
	b.ResetTimer()
	for i := range n {
		e := newEvent("w" + strconv.Itoa(i))
		_ = e.SetData("application/json", []byte(`{"id":"`+fmt.Sprintf("%090d", i)+`"}`))
		if _, _, err := store.Enqueue(ctx, e, []string{"a"}, "", time.Now().Add(time.Hour)); err != nil {
			b.Fatal(err)
		}
	}
	b.StopTimer()
	b.ReportMetric(float64(used()-before)/float64(n), "redis-bytes/message")
}
