package sink

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"strings"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
)

// cpuTime is the CPU time (user and system) this process has used so far.
func cpuTime(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// reportCPU adds "cpu-ns/op": the process's CPU time per operation, sender and receiver
// together. On a busy machine it varies far less than ns/op, which counts waiting for a core.
func reportCPU(b *testing.B, run func()) {
	start := cpuTime(b)
	run()
	b.ReportMetric(float64(cpuTime(b)-start)/float64(b.N), "cpu-ns/op")
}

// BenchmarkSendVsBareHTTP compares Sender.Send with a bare net/http POST of the same
// binary-mode request to the same local receiver, measured in one run: the difference is what
// the sender itself costs per event (encoding, tracing, error mapping).
func BenchmarkSendVsBareHTTP(b *testing.B) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	defer srv.Close()
	body := `{"order":"A-1001","amount":4200,"currency":"EUR"}`

	b.Run("bare-net-http", func(b *testing.B) {
		client := &http.Client{Transport: Transport()}
		b.ReportAllocs()
		reportCPU(b, func() {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					req, _ := http.NewRequest(http.MethodPost, srv.URL, strings.NewReader(body))
					req.Header.Set("Ce-Specversion", "1.0")
					req.Header.Set("Ce-Id", "abc")
					req.Header.Set("Ce-Type", "com.example.order.created")
					req.Header.Set("Ce-Source", "/bench")
					req.Header.Set("Content-Type", "application/json")
					resp, err := client.Do(req)
					if err != nil {
						b.Error(err)
						return
					}
					_, _ = io.Copy(io.Discard, resp.Body)
					resp.Body.Close()
				}
			})
		})
	})
	b.Run("sender", func(b *testing.B) {
		s, err := New(srv.URL, 0)
		if err != nil {
			b.Fatal(err)
		}
		b.ReportAllocs()
		reportCPU(b, func() {
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					e := cloudevents.NewEvent()
					e.SetID("abc")
					e.SetType("com.example.order.created")
					e.SetSource("/bench")
					_ = e.SetData("application/json", []byte(body))
					if err := s.Send(context.Background(), e); err != nil {
						b.Error(err)
						return
					}
				}
			})
		})
	})
}
