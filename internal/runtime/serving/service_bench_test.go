package serving

import (
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"
)

// processCPU is the CPU time this process used so far (user and system); the instances are
// other processes and not counted.
func processCPU() time.Duration {
	var ru syscall.Rusage
	_ = syscall.Getrusage(syscall.RUSAGE_SELF, &ru)
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkPoolDelivery proxies binary-mode CloudEvents of 128 bytes through a Pool to a warm
// echo instance, 16 at a time, as the runtime's deliveries reach a Service in process (a
// ResponseWriter without deadlines), and reports this process' CPU time per request besides
// the allocations. Run it with -bench PoolDelivery -run '^$' -benchmem.
func BenchmarkPoolDelivery(b *testing.B) {
	svc, _ := newPool(b, Spec{MinScale: 1, Timeout: time.Minute})
	runPool(b, svc, svc)
	body := strings.Repeat("x", 128)
	deliver := func() {
		req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(body))
		req.Header = http.Header{
			"Ce-Id": {"1"}, "Ce-Type": {"bench"}, "Ce-Source": {"/bench"}, "Ce-Specversion": {"1.0"},
			"Content-Type": {"application/json"},
		}
		rec := httptest.NewRecorder()
		svc.ServeHTTP(rec, req)
		if rec.Code != http.StatusOK {
			b.Errorf("status %d: %s", rec.Code, rec.Body)
		}
	}
	for range 100 { // the instance started, connections open
		deliver()
	}
	b.SetParallelism(8) // 16 deliveries in flight on 2 cores
	b.ReportAllocs()
	b.ResetTimer()
	cpu := processCPU()
	b.RunParallel(func(pb *testing.PB) {
		for pb.Next() {
			deliver()
		}
	})
	b.StopTimer()
	b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
}
