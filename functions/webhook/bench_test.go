package main

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// loadResult is what one load run measured.
type loadResult struct {
	requests int
	errors   int
	elapsed  time.Duration
	p50, p99 time.Duration
}

func (r loadResult) rps() float64 { return float64(r.requests) / r.elapsed.Seconds() }

// benchBody is a 1 KiB GitHub push payload; each request gets its own delivery id.
var benchBody = func() string {
	prefix := `{"ref":"refs/heads/main","repository":{"full_name":"octo/hello"},"padding":"`
	suffix := `"}`
	return prefix + strings.Repeat("x", 1024-len(prefix)-len(suffix)) + suffix
}()

// runLoad sends signed deliveries to url from workers goroutines for d. With rate 0 it is a
// closed loop (each worker sends as soon as its previous answer came back: the maximum rate);
// otherwise each worker is paced so the total is rate per second, and latency is counted from
// the scheduled send time so that queueing is not hidden (no coordinated omission).
func runLoad(client *http.Client, url string, workers int, d time.Duration, rate float64, wantStatus int) (loadResult, []time.Duration) {
	lat := make([][]time.Duration, workers)
	var errs atomic.Int64
	start := time.Now()
	deadline := start.Add(d)
	var wg sync.WaitGroup
	for w := range workers {
		wg.Add(1)
		go func() {
			defer wg.Done()
			var interval time.Duration
			if rate > 0 {
				interval = time.Duration(float64(workers) / rate * float64(time.Second))
			}
			next := start.Add(time.Duration(w) * interval / time.Duration(workers))
			mac := hmac.New(sha256.New, []byte(githubSecret))
			for {
				now := time.Now()
				if now.After(deadline) {
					return
				}
				sent := now
				if interval > 0 {
					if wait := time.Until(next); wait > 0 {
						time.Sleep(wait)
					}
					sent = next
					next = next.Add(interval)
				}
				id := "bench-" + strconv.FormatInt(benchSeq.Add(1), 10)
				mac.Reset()
				mac.Write([]byte(benchBody))
				req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(benchBody))
				req.Header.Set("Content-Type", "application/json")
				req.Header.Set("X-GitHub-Event", "push")
				req.Header.Set("X-GitHub-Delivery", id)
				req.Header.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
				res, err := client.Do(req)
				if err != nil {
					errs.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, res.Body)
				res.Body.Close()
				if res.StatusCode != wantStatus {
					errs.Add(1)
					continue
				}
				lat[w] = append(lat[w], time.Since(sent))
			}
		}()
	}
	wg.Wait()
	all := slices.Concat(lat...)
	return loadResult{requests: len(all), errors: int(errs.Load()), elapsed: time.Since(start)}, all
}

// benchSeq numbers delivery ids across all runs, so that no run replays an earlier one's ids.
var benchSeq atomic.Int64

// rounds is how many alternating runs compare makes per target.
const rounds = 10

// target is one server a comparison loads, and the status it answers when all went well.
type target struct {
	url    string
	status int
}

// compare alternates short runs against the targets, so that a change in the machine's load
// (other processes) hits all alike, and sums each target's runs. It also returns, per target,
// the median of the per-round throughput ratios to the first target, which a burst of foreign
// load during one round cannot move much.
func compare(client *http.Client, targets []target, workers int, total time.Duration, rate float64) ([]loadResult, []float64) {
	res := make([]loadResult, len(targets))
	lat := make([][]time.Duration, len(targets))
	ratios := make([][]float64, len(targets))
	for range rounds {
		rps := make([]float64, len(targets))
		for i, tg := range targets {
			r, l := runLoad(client, tg.url, workers, total/rounds, rate, tg.status)
			res[i].requests += r.requests
			res[i].errors += r.errors
			res[i].elapsed += r.elapsed
			lat[i] = append(lat[i], l...)
			rps[i] = r.rps()
		}
		for i := range targets {
			ratios[i] = append(ratios[i], rps[i]/rps[0])
		}
	}
	medians := make([]float64, len(targets))
	for i := range targets {
		slices.Sort(lat[i])
		if n := len(lat[i]); n > 0 {
			res[i].p50, res[i].p99 = lat[i][n/2], lat[i][n*99/100]
		}
		slices.Sort(ratios[i])
		medians[i] = (ratios[i][rounds/2-1] + ratios[i][rounds/2]) / 2
	}
	return res, medians
}

func envInt(name string, def int) int {
	if v, err := strconv.Atoi(os.Getenv(name)); err == nil && v > 0 {
		return v
	}
	return def
}

// startBenchIntake starts the intake as production does, against a real redis-server and a
// broker stand-in in this process that answers 202; both stop with b. Logs are formatted as in
// production (JSON at info) but not written, so the output stays readable.
func startBenchIntake(b *testing.B) (fn *Function, brokerURL string) {
	b.Helper()
	setSecrets(b)
	redisSrv := redistest.Start(b, redistest.Options{})
	broker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		w.WriteHeader(http.StatusAccepted)
	}))
	b.Cleanup(broker.Close)
	b.Setenv("REDIS_URL", redisSrv.URL())
	b.Setenv("K_SINK", broker.URL)
	b.Setenv("WEBHOOK_SOURCES_FILE", "testdata/sources.yaml")
	fn = New()
	fn.log = slog.New(slog.NewJSONHandler(io.Discard, nil))
	if err := fn.Start(context.Background(), nil); err != nil {
		b.Fatal(err)
	}
	b.Cleanup(func() { _ = fn.Stop(context.Background()) })
	return fn, broker.URL
}

// BenchmarkIntakeVsHello measures the whole intake — signed 1 KiB GitHub deliveries, verify,
// dedup claim on a real redis-server, publish to a broker stand-in (an httptest server
// answering 202), 202 — beside a bare net/http hello handler, with the same Go load generator
// in the same run. Run it once: go test -run '^$' -bench IntakeVsHello -benchtime 1x
// (hack/bench-webhook.sh). WEBHOOK_BENCH_SECONDS and WEBHOOK_BENCH_WORKERS tune the load.
//
// Two reference servers run in the same rounds at the maximum rate, to show where the intake's
// cost goes: one that only forwards the body to the broker stand-in (two HTTP exchanges per
// request and nothing else: the ceiling of any intake that publishes over HTTP), and the intake
// itself with a stub in memory in place of its Redis dedup store (every claim granted, nothing
// stored).
func BenchmarkIntakeVsHello(b *testing.B) {
	seconds := envInt("WEBHOOK_BENCH_SECONDS", 5)
	workers := envInt("WEBHOOK_BENCH_WORKERS", 32)
	d := time.Duration(seconds) * time.Second

	fn, brokerURL := startBenchIntake(b)
	intake := httptest.NewServer(http.HandlerFunc(fn.Handle))
	defer intake.Close()
	hello := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		_, _ = io.WriteString(w, "hello\n")
	}))
	defer hello.Close()
	forwardClient := &http.Client{Transport: sink.Transport()}
	forward := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		res, err := forwardClient.Post(brokerURL, "application/json", bytes.NewReader(body))
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadGateway)
			return
		}
		_, _ = io.Copy(io.Discard, res.Body)
		res.Body.Close()
		w.WriteHeader(http.StatusAccepted)
		_, _ = io.WriteString(w, "accepted\n")
	}))
	defer forward.Close()
	st := fn.state.Load()
	pub, err := sink.New(brokerURL, st.cfg.PublishTimeout)
	if err != nil {
		b.Fatal(err)
	}
	inMemory := New()
	inMemory.log = fn.log
	inMemory.install(st.cfg, st.sources, &stubClaims{}, pub, nil)
	noRedis := httptest.NewServer(http.HandlerFunc(inMemory.Handle))
	defer noRedis.Close()

	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConnsPerHost = workers * 2
	transport.MaxIdleConns = workers * 4
	client := &http.Client{Transport: transport}

	b.ResetTimer()
	pair := []target{{hello.URL, http.StatusOK}, {intake.URL + "/github", http.StatusAccepted}}
	all := append(slices.Clone(pair),
		target{forward.URL, http.StatusAccepted},
		target{noRedis.URL + "/github", http.StatusAccepted})
	// Warm all up (connections, script cache) before measuring.
	compare(client, all, workers, time.Second, 0)
	maxRate, medians := compare(client, all, workers, 2*d, 0)
	bareMax, intakeMax := maxRate[0], maxRate[1]
	half := intakeMax.rps() / 2
	halfRate, _ := compare(client, pair, workers, 2*d, half)
	bareHalf, intakeHalf := halfRate[0], halfRate[1]
	b.StopTimer()

	ratio := intakeMax.rps() / bareMax.rps()
	p99Ratio := float64(intakeHalf.p99) / float64(bareHalf.p99)
	fmt.Printf("\nwebhook intake vs bare net/http hello: %d workers, %d alternating rounds, %s per target and rate\n",
		workers, rounds, d*2)
	fmt.Printf("%-46s %10s %10s %10s %7s %9s\n", "run", "req/s", "p50", "p99", "errors", "÷ hello")
	for _, row := range []struct {
		name  string
		r     loadResult
		ratio float64
	}{
		{"bare hello, max rate", bareMax, 1},
		{"forward to the stand-in only, max rate", maxRate[2], medians[2]},
		{"intake, dedup stubbed in memory, max rate", maxRate[3], medians[3]},
		{"webhook intake, max rate", intakeMax, medians[1]},
		{fmt.Sprintf("bare hello, %.0f req/s", half), bareHalf, 0},
		{fmt.Sprintf("webhook intake, %.0f req/s", half), intakeHalf, 0},
	} {
		ratio := "-"
		if row.ratio > 0 {
			ratio = fmt.Sprintf("%.3f", row.ratio)
		}
		fmt.Printf("%-46s %10.0f %10s %10s %7d %9s\n", row.name, row.r.rps(), row.r.p50.Round(time.Microsecond), row.r.p99.Round(time.Microsecond), row.r.errors, ratio)
	}
	fmt.Printf("÷ hello is the median of the rounds' ratios. Forwarding only (two HTTP exchanges) is the ceiling of an\n")
	fmt.Printf("intake that publishes over HTTP: the intake reaches %.2f of that ceiling, and %.2f with its dedup\n",
		medians[1]/medians[2], medians[3]/medians[2])
	fmt.Printf("store stubbed in memory instead of Redis.\n")
	fmt.Printf("throughput ratio intake/bare: %.2f overall, %.2f median of rounds (goal >= 0.45)\n", ratio, medians[1])
	fmt.Printf("p99 ratio at half the intake's max rate: %.2f (goal <= 3)\n", p99Ratio)
	b.ReportMetric(ratio, "throughput-ratio")
	b.ReportMetric(medians[1], "median-round-ratio")
	b.ReportMetric(medians[2], "forward-only-ratio")
	b.ReportMetric(medians[3], "claims-in-memory-ratio")
	b.ReportMetric(p99Ratio, "p99-ratio-at-half-rate")
	b.ReportMetric(intakeMax.rps(), "intake-req/s")
	b.ReportMetric(bareMax.rps(), "bare-req/s")
	for _, r := range maxRate[2:] {
		if r.errors > 0 {
			b.Fatalf("a reference server answered %d requests with other than 202", r.errors)
		}
	}
	if intakeMax.errors > 0 || intakeHalf.errors > 0 {
		b.Fatalf("intake answered %d requests with other than 202", intakeMax.errors+intakeHalf.errors)
	}
}
