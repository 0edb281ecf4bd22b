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
// echo instance, 16 at a time, as the runtime's deliveries reach a Service in process, and
// reports this process' CPU time per request besides the allocations: "handler" through
// InProcess to ServeHTTP (as InProcess serves any handler), "round trip" through InProcess to
// RoundTripInProcess (the route InProcess takes for a Pool). Run it with
// -bench PoolDelivery -run '^$' -benchmem.
func BenchmarkPoolDelivery(b *testing.B) {
	svc, _ := newPool(b, Spec{MinScale: 1, Timeout: time.Minute})
	runPool(b, svc, svc)
	body := strings.Repeat("x", 128)
	request := func() *http.Request {
		req := httptest.NewRequest(http.MethodPost, "http://svc.test.invalid/", strings.NewReader(body))
		req.Header = http.Header{
			"Ce-Id": {"1"}, "Ce-Type": {"bench"}, "Ce-Source": {"/bench"}, "Ce-Specversion": {"1.0"},
			"Content-Type": {"application/json"},
		}
		req.RequestURI = ""
		return req
	}
	// The same InProcess, once with the Pool behind a plain handler (ServeHTTP in a goroutine
	// of InProcess, on a copy of the request, answering into a buffer) and once as itself.
	handler := NewInProcess(1<<20, nil)
	handler.Handle("svc.test.invalid:80", http.HandlerFunc(svc.ServeHTTP))
	roundTrip := NewInProcess(1<<20, nil)
	roundTrip.Handle("svc.test.invalid:80", svc)
	send := func(ip *InProcess) func() int {
		return func() int {
			resp, err := ip.RoundTrip(request())
			if err != nil {
				b.Error(err)
				return 0
			}
			return resp.StatusCode
		}
	}
	routes := []struct {
		name    string
		deliver func() int
	}{
		{name: "handler", deliver: send(handler)},
		{name: "round trip", deliver: send(roundTrip)},
	}
	for _, route := range routes {
		b.Run(route.name, func(b *testing.B) {
			for range 100 { // the instance started, connections open
				route.deliver()
			}
			b.SetParallelism(8) // 16 deliveries in flight on 2 cores
			b.ReportAllocs()
			b.ResetTimer()
			cpu := processCPU()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					if code := route.deliver(); code != http.StatusOK {
						b.Errorf("status %d", code)
					}
				}
			})
			b.StopTimer()
			b.ReportMetric(float64((processCPU()-cpu).Nanoseconds())/1e3/float64(b.N), "cpu-µs/op")
		})
	}
}
