package main

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/function/webhook/source"
)

type roundTripFunc func(*http.Request) (*http.Response, error)

func (f roundTripFunc) RoundTrip(r *http.Request) (*http.Response, error) { return f(r) }

// processCPU is the CPU time (user and system) this process has used so far.
func processCPU(b *testing.B) time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		b.Fatal(err)
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// BenchmarkHandleVsBare calls the intake's handler directly (no HTTP server in front of it)
// with signed 1 KiB GitHub deliveries, each under a new delivery id, beside a bare net/http
// hello handler called the same way, in one run. The intake claims in a real redis-server
// and publishes over loopback to a broker stand-in in this process, so its cpu-ns/op counts
// the stand-in's side of each publish too; the redis-server process is not counted.
// "cpu-ns/op" is the process's CPU time per request, which varies less than ns/op on a busy
// machine; "cpu-x-bare" is the intake's cpu-ns/op over the bare handler's of the same run.
// "intake-without-io" is the same handler with the claims and the broker answered in memory.
func BenchmarkHandleVsBare(b *testing.B) {
	fn, brokerURL := startBenchIntake(b)

	// The same intake without I/O: claims granted in memory, and the sink's requests answered
	// 202 by its transport itself, so that its cpu-ns/op is the handler's own work (verify,
	// describe, log, trace, encode the event, the sink's HTTP client) without the syscalls and
	// the Redis and broker round trips, which vary most from run to run.
	srcs, err := source.Load("testdata/sources.yaml", fuzzSecrets)
	if err != nil {
		b.Fatal(err)
	}
	noIOConfig := Config{PublishTimeout: 5 * time.Second, RetryAfter: 10 * time.Second}
	// Start builds its sender with the publish timeout too.
	pub, err := sink.NewWithTransport(brokerURL, noIOConfig.PublishTimeout, roundTripFunc(func(r *http.Request) (*http.Response, error) {
		_, _ = io.Copy(io.Discard, r.Body)
		_ = r.Body.Close()
		return &http.Response{StatusCode: http.StatusAccepted, Header: http.Header{}, Body: http.NoBody, Request: r}, nil
	}))
	if err != nil {
		b.Fatal(err)
	}
	noIO := New()
	noIO.log = fn.log
	noIO.install(noIOConfig, srcs, &stubClaims{}, pub, nil)

	mac := hmac.New(sha256.New, []byte(githubSecret))
	mac.Write([]byte(benchBody))
	signature := "sha256=" + hex.EncodeToString(mac.Sum(nil))
	bare := func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "hello\n")
	}

	var bareCPU float64
	for _, target := range []struct {
		name   string
		handle http.HandlerFunc
		status int
	}{
		{"bare", bare, http.StatusOK},
		{"intake", fn.Handle, http.StatusAccepted},
		{"intake-without-io", noIO.Handle, http.StatusAccepted},
	} {
		b.Run(target.name, func(b *testing.B) {
			b.ReportAllocs()
			// Enough requests in flight for the dedup batcher to share pipelines, as under load.
			b.SetParallelism(16)
			start := processCPU(b)
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r := httptest.NewRequest(http.MethodPost, "/github", strings.NewReader(benchBody))
					r.Header.Set("Content-Type", "application/json")
					r.Header.Set("X-GitHub-Event", "push")
					r.Header.Set("X-GitHub-Delivery", "handle-"+strconv.FormatInt(benchSeq.Add(1), 10))
					r.Header.Set("X-Hub-Signature-256", signature)
					w := httptest.NewRecorder()
					target.handle(w, r)
					if w.Code != target.status {
						b.Errorf("answered %d %s, want %d", w.Code, w.Body, target.status)
						return
					}
				}
			})
			cpu := float64(processCPU(b)-start) / float64(b.N)
			b.ReportMetric(cpu, "cpu-ns/op")
			if target.name == "bare" {
				bareCPU = cpu
			} else if bareCPU > 0 {
				b.ReportMetric(cpu/bareCPU, "cpu-x-bare")
			}
		})
	}
}
