// Command broker measures knfaas' broker → trigger → warm function path, cold start and idle
// memory, beside a bare net/http hello server loaded by the same closed-loop generator in the
// same run. hack/bench-broker.sh runs it; it prints figures, it asserts nothing.
package main

import (
	"bufio"
	"bytes"
	"context"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/knfaas/knfaas/hack/bench/load"
	"github.com/knfaas/knfaas/hack/bench/proc"
	"github.com/knfaas/knfaas/internal/runtime/localhost"
)

func main() {
	if len(os.Args) > 1 && os.Args[1] == "hello" {
		_ = load.ServeHello(os.Args[2])
		return
	}
	var (
		conc     = flag.Int("c", 32, "concurrent connections (hello and publish alike)")
		events   = flag.Int("n", 30000, "events in the saturating publish run")
		helloDur = flag.Duration("hello-d", 10*time.Second, "hello run duration")
		size     = flag.Int("size", 128, "event payload bytes")
		colds    = flag.Int("cold", 30, "cold starts to measure")
		knfaas   = flag.String("knfaas", "", "knfaas binary")
		redisURL = flag.String("redis", "", "REDIS_URL for knfaas up (empty: embedded)")
		profile  = flag.String("cpuprofile", "", "write a CPU profile of the runtime, taken during the saturating run, to this file")
		profSecs = flag.Int("cpuprofile-seconds", 4, "length of the -cpuprofile profile")
		halfD    = flag.Duration("half-d", 3*time.Second, "length of each paced run at half the delivered rate")
		halfN    = flag.Int("half-rounds", 5, "alternating rounds (hello, then knfaas) paced at half the delivered rate (0: none)")
		redisPID = flag.Int("redis-pid", 0, "pid of the redis-server, for its run-queue wait in the paced rounds (0: not reported)")
		trace    = flag.String("half-trace", "", "write an execution trace of the runtime, taken during the first paced knfaas round, to this file (tracing costs CPU: that round's figures run high)")
	)
	flag.Parse()
	cpuProfile, cpuProfileSeconds, halfDur, halfRounds, redisServerPID, halfTrace = *profile, *profSecs, *halfD, *halfN, *redisPID, *trace
	if err := run(*conc, *events, *helloDur, *size, *colds, *knfaas, *redisURL); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

// cpuProfile, when set, is where the runtime's CPU profile of the saturating run goes; halfDur
// and halfRounds say how long and how many the paced runs at half the delivered rate are;
// redisServerPID, when set, is the redis-server whose run-queue wait those runs report.
var (
	cpuProfile        string
	cpuProfileSeconds int
	halfDur           time.Duration
	halfRounds        int
	redisServerPID    int
	halfTrace         string
)

// waits reads the run-queue wait of processes, to report it per request between two readings.
type waits struct {
	names []string
	pids  []int
}

func (w *waits) add(name string, pid int) {
	if pid > 0 {
		w.names, w.pids = append(w.names, name), append(w.pids, pid)
	}
}

func (w *waits) read() []time.Duration {
	out := make([]time.Duration, len(w.pids))
	for i, pid := range w.pids {
		out[i], _ = proc.RunQueueWait(pid)
	}
	return out
}

// perRequest renders what each process waited for a CPU between two readings, per request.
func (w *waits) perRequest(before, after []time.Duration, requests int64) string {
	parts := make([]string, len(w.pids))
	for i := range w.pids {
		parts[i] = fmt.Sprintf("%s %s", w.names[i], (time.Duration(float64(after[i]-before[i]) / float64(max(requests, 1)))).Round(time.Microsecond))
	}
	return strings.Join(parts, ", ")
}

// deliveryHist is the runtime's histogram of delivery latency, ingress accept → subscriber answer.
const deliveryHist = "knfaas_trigger_delivery_seconds_bucket"

// startProfile fetches a CPU profile of the runtime from its pprof address in the background;
// the returned function waits for it.
func startProfile(pprofAddr string) func() {
	return fetchInBackground(cpuProfile, fmt.Sprintf("http://%s/debug/pprof/profile?seconds=%d", pprofAddr, cpuProfileSeconds))
}

// startTrace fetches an execution trace of the runtime, as long as a paced round, in the
// background; the returned function waits for it.
func startTrace(pprofAddr string) func() {
	return fetchInBackground(halfTrace, fmt.Sprintf("http://%s/debug/pprof/trace?seconds=%.0f", pprofAddr, max(1, halfDur.Seconds())))
}

// fetchInBackground writes what url answers to path, unless path is empty; the returned
// function waits for it.
func fetchInBackground(path, url string) func() {
	if path == "" {
		return func() {}
	}
	done := make(chan struct{})
	go func() {
		defer close(done)
		resp, err := http.Get(url)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", path+":", err)
			return
		}
		defer resp.Body.Close()
		f, err := os.Create(path)
		if err != nil {
			fmt.Fprintln(os.Stderr, "bench:", err)
			return
		}
		defer f.Close()
		_, _ = io.Copy(f, resp.Body)
	}()
	return func() { <-done }
}

// runLoad loads with c workers until n requests (n > 0) or dur, over a transport that resolves
// *.localhost to loopback.
func runLoad(c int, n int64, dur time.Duration, mk func(i int64) *http.Request) load.Result {
	return load.Run(load.Options{Concurrency: c, Requests: n, Duration: dur, Transport: localhost.Transport()}, mk)
}

func metric(addr, prefix string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			f := strings.Fields(sc.Text())
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			return v
		}
	}
	return 0
}

// cpuTime is the user and system CPU time a process has used (0 when unknown).
func cpuTime(pid int) time.Duration {
	return time.Duration(proc.CPUSeconds(pid) * float64(time.Second))
}

func run(c, events int, helloDur time.Duration, size, colds int, knfaas, redisURL string) error {
	self, _ := os.Executable()
	helloAddr := load.FreeAddr()
	hello := exec.Command(self, "hello", helloAddr)
	if err := hello.Start(); err != nil {
		return err
	}
	defer func() { _ = hello.Process.Kill(); _ = hello.Wait() }()

	addr := load.FreeAddr()
	pprofAddr := load.FreeAddr()
	up := exec.Command(knfaas, "up", "--defaults=false", "-f", "hack/bench/manifests", "--addr", addr, "--idle", "300ms", "--log-level", "warn", "--pprof-addr", pprofAddr)
	up.Env = append(os.Environ(), "REDIS_URL="+redisURL)
	var upOut bytes.Buffer
	up.Stdout, up.Stderr = &upOut, &upOut
	if err := up.Start(); err != nil {
		return err
	}
	defer func() {
		_ = up.Process.Signal(syscall.SIGINT)
		_ = up.Wait()
	}()
	for i := 0; ; i++ {
		if resp, err := http.Get("http://" + addr + "/healthz"); err == nil {
			resp.Body.Close()
			break
		}
		if i > 1200 {
			return fmt.Errorf("knfaas up did not start:\n%s", upOut.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	redisMode := "embedded (miniredis)"
	if redisURL != "" {
		redisMode = "redis-server"
	}
	fmt.Printf("== knfaas broker bench: %d cores, c=%d, n=%d, payload %d B, redis: %s\n", runtimeCPUs(), c, events, size, redisMode)

	helloURL := "http://" + helloAddr + "/"
	runLoad(c, 0, 2*time.Second, func(int64) *http.Request { r, _ := http.NewRequest("GET", helloURL, nil); return r })
	helloCPU0 := cpuTime(hello.Process.Pid)
	h := runLoad(c, 0, helloDur, func(int64) *http.Request { r, _ := http.NewRequest("GET", helloURL, nil); return r })
	helloRate := h.Rate()
	helloCPU := time.Duration(float64(cpuTime(hello.Process.Pid)-helloCPU0) / float64(max(h.N, 1)))
	fmt.Printf("-- bare net/http hello: %.0f req/s, p50 %s, p99 %s (failed %d); hello server CPU per request %s\n",
		helloRate, h.P50.Round(time.Microsecond), h.P99.Round(time.Microsecond), h.Failed, helloCPU.Round(100*time.Nanosecond))

	payload := bytes.Repeat([]byte("x"), size)
	body := append(append([]byte(`{"pad":"`), payload[:max(0, size-10)]...), []byte(`"}`)...)
	ingress := "http://" + addr + "/bench/default"
	postTo := func(url, prefix string) func(int64) *http.Request {
		return func(i int64) *http.Request {
			r, _ := http.NewRequest("POST", url, bytes.NewReader(body))
			r.Header.Set("Ce-Id", prefix+strconv.FormatInt(i, 10))
			r.Header.Set("Ce-Type", "bench.event")
			r.Header.Set("Ce-Source", "/bench")
			r.Header.Set("Ce-Specversion", "1.0")
			r.Header.Set("Content-Type", "application/json")
			return r
		}
	}
	publish := func(prefix string) func(int64) *http.Request { return postTo(ingress, prefix) }
	// The hello server's CPU per request when it gets the very request a delivery is (a POST
	// with the event's headers and body): the baseline of the function instance's CPU per event.
	helloPostCPU0 := cpuTime(hello.Process.Pid)
	helloPost := runLoad(c, 0, 2*time.Second, postTo(helloURL, "hello-"))
	helloPostCPU := time.Duration(float64(cpuTime(hello.Process.Pid)-helloPostCPU0) / float64(max(helloPost.N, 1)))
	delivered := func() float64 {
		return metric(addr, `knfaas_trigger_events_delivered_total{broker="bench/default",trigger="bench/noop"}`)
	}
	// pidOf asks a Service instance for its pid, through the runtime.
	client := localhost.Client(10 * time.Second)
	pidOf := func(svc string) (int, time.Duration) {
		t0 := time.Now()
		resp, err := client.Get("http://" + svc + ".bench.localhost:" + portOf(addr) + "/pid")
		if err != nil {
			return -1, 0
		}
		defer resp.Body.Close()
		b, _ := io.ReadAll(resp.Body)
		d := time.Since(t0)
		pid, _ := strconv.Atoi(string(b))
		return pid, d
	}
	// Warm-up, then wait until it is delivered.
	if w := runLoad(c, 3000, 0, publish("warm-")); w.Failed > 0 {
		return fmt.Errorf("%d of 3000 warm-up events refused, the first: %s\n%s", w.Failed, w.FirstFailure, upOut.String())
	}
	for delivered() < 3000 {
		time.Sleep(50 * time.Millisecond)
	}
	warmPID, _ := pidOf("noop")
	base := delivered()
	cpu0 := [3]time.Duration{cpuTime(up.Process.Pid), cpuTime(warmPID), cpuTime(os.Getpid())}
	start := time.Now()
	waitProfile := startProfile(pprofAddr)
	p := runLoad(c, int64(events), 0, publish("sat-"))
	for delivered()-base < float64(p.N) {
		if time.Since(start) > 5*time.Minute {
			break
		}
		time.Sleep(5 * time.Millisecond)
	}
	drain := time.Since(start)
	got := delivered() - base
	cpu1 := [3]time.Duration{cpuTime(up.Process.Pid), cpuTime(warmPID), cpuTime(os.Getpid())}
	waitProfile()
	rate := got / drain.Seconds()
	fmt.Printf("-- knfaas publish (closed loop) then drain: accepted %d (refused %d) in %s = %.0f ev/s accepted; publish p50 %s p99 %s\n",
		p.N, p.Failed, p.Elapsed.Round(time.Millisecond), float64(p.N)/p.Elapsed.Seconds(), p.P50.Round(time.Microsecond), p.P99.Round(time.Microsecond))
	fmt.Printf("   delivered %.0f of %d accepted in %s = %.0f ev/s delivered, lost %.0f\n", got, p.N, drain.Round(time.Millisecond), rate, float64(p.N)-got)
	fmt.Printf("   delivery latency (ingress accept → subscriber answer), from the runtime's histogram: p50 %s, p99 %s\n",
		histQuantile(addr, deliveryHist, 0.5), histQuantile(addr, deliveryHist, 0.99))
	perEvent := func(i int) string {
		return (time.Duration(float64(cpu1[i]-cpu0[i]) / got)).Round(100 * time.Nanosecond).String()
	}
	fmt.Printf("   CPU per delivered event: runtime %s, function instance %s, load generator %s (publish and drain, user+system)\n",
		perEvent(0), perEvent(1), perEvent(2))
	// The function instance is a no-op handler under func-go behind the runtime's proxy: its CPU
	// per event beside the hello server's for the same POST is what func-go and the proxied
	// request add to a bare net/http handler.
	fmt.Printf("   function instance CPU per event ÷ hello server CPU per request of the same POST (%s) = %.2f\n",
		helloPostCPU.Round(100*time.Nanosecond), float64(cpu1[1]-cpu0[1])/got/float64(max(helloPostCPU, 1)))
	fmt.Printf("== RATIO delivered ev/s ÷ hello req/s = %.3f  (goal ≥ 0.30; peers measured here: Knative MT broker 0.062, Dapr Redis Streams 0.11)\n", rate/helloRate)

	// Latency at half the delivered rate: hello and the broker paced alike, each request charged
	// from when it was due, in alternating rounds so that a burst of other work on the machine
	// hits both alike. The broker's figure is the delivery latency (ingress accept → subscriber
	// answer) of the events published in that round alone; the ratio is the median of the
	// rounds' ratios.
	if halfRounds > 0 {
		halfRate := rate / 2
		var ratios []float64
		var lost float64
		fmt.Printf("-- at half that rate (%.0f/s, paced), %d alternating rounds of %s each:\n", halfRate, halfRounds, halfDur)
		// How long each process's threads waited for a CPU while ready to run, per request:
		// the share of the latency that is queueing for the two cores rather than work.
		var helloWaits, knfaasWaits waits
		helloWaits.add("load generator", os.Getpid())
		helloWaits.add("hello", hello.Process.Pid)
		knfaasWaits.add("load generator", os.Getpid())
		knfaasWaits.add("runtime", up.Process.Pid)
		knfaasWaits.add("function instance", warmPID)
		knfaasWaits.add("redis-server", redisServerPID)
		for round := range halfRounds {
			w0 := helloWaits.read()
			hh := load.Run(load.Options{Concurrency: c, Rate: halfRate, Duration: halfDur, Transport: localhost.Transport()},
				func(int64) *http.Request { r, _ := http.NewRequest("GET", helloURL, nil); return r })
			helloWaited := helloWaits.perRequest(w0, helloWaits.read(), hh.N)
			before, base := histBuckets(addr, deliveryHist), delivered()
			w0 = knfaasWaits.read()
			waitTrace := func() {}
			if round == 0 {
				waitTrace = startTrace(pprofAddr)
			}
			hp := load.Run(load.Options{Concurrency: c, Rate: halfRate, Duration: halfDur, Transport: localhost.Transport()}, publish(fmt.Sprintf("half%d-", round)))
			for t0 := time.Now(); delivered()-base < float64(hp.N) && time.Since(t0) < time.Minute; {
				time.Sleep(5 * time.Millisecond)
			}
			knfaasWaited := knfaasWaits.perRequest(w0, knfaasWaits.read(), hp.N)
			waitTrace()
			d := since(histBuckets(addr, deliveryHist), before)
			lost += float64(hp.N) - (delivered() - base)
			ratio := float64(quantile(d, 0.99)) / float64(hh.P99)
			ratios = append(ratios, ratio)
			fmt.Printf("   round %d: hello p50 %s p99 %s (failed %d); knfaas publish p99 %s (refused %d), delivery p50 %s p99 %s; ratio %.2f\n",
				round+1, hh.P50.Round(time.Microsecond), hh.P99.Round(time.Microsecond), hh.Failed,
				hp.P99.Round(time.Microsecond), hp.Failed, quantile(d, 0.5), quantile(d, 0.99), ratio)
			fmt.Printf("     waiting for a CPU, per request: hello round: %s; knfaas round: %s\n", helloWaited, knfaasWaited)
		}
		sort.Float64s(ratios)
		fmt.Printf("== P99 RATIO at half rate: delivery p99 ÷ hello p99 = %.2f, median of %d rounds (range %.2f–%.2f; goal ≤ 3); lost %.0f\n",
			ratios[len(ratios)/2], len(ratios), ratios[0], ratios[len(ratios)-1], lost)
	}

	time.Sleep(2 * time.Second)
	fmt.Printf("-- idle RSS: warm instance after the load %d KiB", proc.RSSKiB(warmPID))

	// Cold starts: wait for scale to zero, then time the first request (exec → first response).
	instances := `knfaas_service_instances{namespace="bench",service="cold"}`
	var coldLat []time.Duration
	var coldRSS []int
	for i := 0; i < colds; i++ {
		for metric(addr, instances) != 0 {
			time.Sleep(20 * time.Millisecond)
		}
		pid, d := pidOf("cold")
		if pid <= 0 {
			return fmt.Errorf("cold request failed")
		}
		coldLat = append(coldLat, d)
		time.Sleep(100 * time.Millisecond)
		coldRSS = append(coldRSS, proc.RSSKiB(pid))
	}
	sort.Slice(coldLat, func(i, j int) bool { return coldLat[i] < coldLat[j] })
	sort.Ints(coldRSS)
	fmt.Printf("; freshly started instance, idle: median %d KiB, max %d KiB (goal ≤ 15 MiB)\n", coldRSS[len(coldRSS)/2], coldRSS[len(coldRSS)-1])
	fmt.Printf("-- cold start (request to a scaled-to-zero service → first response, exec and readiness included), %d runs: p50 %s, p99 %s (goal p99 ≤ 50 ms)\n",
		len(coldLat), coldLat[len(coldLat)/2].Round(time.Microsecond), coldLat[len(coldLat)*99/100].Round(time.Microsecond))
	time.Sleep(time.Second)
	fmt.Printf("-- instances of the scale-to-zero service after the idle window: %.0f\n", metric(addr, instances))
	for _, name := range []string{"echo"} {
		matches, _ := filepath.Glob(filepath.Join(os.Getenv("KNFAAS_CACHE"), name+"-*"))
		for _, m := range matches {
			if st, err := os.Stat(m); err == nil {
				fmt.Printf("-- function binary %s: %.1f MB\n", filepath.Base(m), float64(st.Size())/1e6)
			}
		}
	}
	_ = context.Background
	return nil
}

func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

func runtimeCPUs() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

// bucket is one cumulative bucket of a Prometheus histogram: count observations ≤ le seconds.
type bucket struct{ le, count float64 }

// histBuckets reads the finite buckets of a histogram from the runtime's /metrics.
func histBuckets(addr, name string) []bucket {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return nil
	}
	defer resp.Body.Close()
	var buckets []bucket
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		line := sc.Text()
		if !strings.HasPrefix(line, name) {
			continue
		}
		i := strings.Index(line, `le="`)
		j := strings.Index(line[i+4:], `"`)
		le, err := strconv.ParseFloat(line[i+4:i+4+j], 64)
		if err != nil {
			continue // +Inf
		}
		f := strings.Fields(line)
		v, _ := strconv.ParseFloat(f[len(f)-1], 64)
		buckets = append(buckets, bucket{le, v})
	}
	return buckets
}

// since is the histogram of the observations made after earlier was read.
func since(later, earlier []bucket) []bucket {
	if len(earlier) != len(later) {
		return later
	}
	d := make([]bucket, len(later))
	for i := range later {
		d[i] = bucket{later[i].le, later[i].count - earlier[i].count}
	}
	return d
}

// quantile estimates a quantile from cumulative buckets by linear interpolation inside the
// bucket that holds it, as PromQL's histogram_quantile does; 0 when there is no observation.
func quantile(buckets []bucket, q float64) time.Duration {
	if len(buckets) == 0 || buckets[len(buckets)-1].count == 0 {
		return 0
	}
	rank := q * buckets[len(buckets)-1].count
	lower, below := 0.0, 0.0
	for _, b := range buckets {
		if b.count >= rank {
			v := lower + (b.le-lower)*(rank-below)/(b.count-below)
			return time.Duration(v * float64(time.Second)).Round(100 * time.Microsecond)
		}
		lower, below = b.le, b.count
	}
	return 0
}

// histQuantile estimates a quantile of a histogram from the runtime's /metrics.
func histQuantile(addr, name string, q float64) string {
	if v := quantile(histBuckets(addr, name), q); v > 0 {
		return v.String()
	}
	return "?"
}
