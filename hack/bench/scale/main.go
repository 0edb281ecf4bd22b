// Command scale measures how the cost of knfaas' broker path grows with fan-out, payload size,
// concurrency, warm instances and backlog, each as a table beside a bare net/http hello server
// loaded by the same closed-loop generator in the same run. hack/bench-scale.sh runs it; it
// prints figures, it asserts nothing.
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
	"sync"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/hack/bench/load"
	"github.com/knfaas/knfaas/hack/bench/proc"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/localhost"
)

// dimensions in the order a full run measures them.
var dimensions = []string{"fanout", "payload", "concurrency", "instances", "backlog"}

func main() {
	if len(os.Args) > 2 && os.Args[1] == "hello" {
		_ = load.ServeHello(os.Args[2])
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "sink" {
		_ = load.ServeSink(os.Args[2])
		return
	}
	var b bench
	var only string
	flag.StringVar(&b.knfaas, "knfaas", "", "knfaas binary")
	flag.StringVar(&b.redisURL, "redis", "", "REDIS_URL of a real redis-server (it is flushed between runs)")
	flag.StringVar(&only, "only", "", "comma-separated dimensions to measure (default all): "+strings.Join(dimensions, ","))
	flag.BoolVar(&b.quick, "quick", false, "smaller counts and shorter runs")
	flag.IntVar(&b.backlogEvents, "backlog", 1_000_000, "events queued while the subscriber is down (QUICK: 50,000 unless set)")
	flag.Parse()
	if b.quick && !flagSet("backlog") {
		b.backlogEvents = 50_000
	}
	chosen := dimensions
	if only != "" {
		chosen = strings.Split(only, ",")
	}
	if err := b.run(chosen); err != nil {
		fmt.Fprintln(os.Stderr, "bench-scale:", err)
		os.Exit(1)
	}
}

func flagSet(name string) bool {
	set := false
	flag.Visit(func(f *flag.Flag) { set = set || f.Name == name })
	return set
}

type bench struct {
	knfaas, redisURL string
	quick            bool
	backlogEvents    int
	rdb              *redis.Client
	self             string
	helloAddr        string
	hello            load.Result // at c=32
	runs             int
}

func (b *bench) scaled(full, quick int) int {
	if b.quick {
		return quick
	}
	return full
}

func (b *bench) run(chosen []string) error {
	began := time.Now()
	opts, err := redis.ParseURL(b.redisURL)
	if err != nil {
		return fmt.Errorf("-redis: %w", err)
	}
	b.rdb = redis.NewClient(opts)
	defer b.rdb.Close()
	if b.self, err = os.Executable(); err != nil {
		return err
	}
	b.helloAddr = load.FreeAddr()
	hello := b.child("hello", b.helloAddr)
	if err := hello.Start(); err != nil {
		return err
	}
	defer func() { _ = hello.Process.Kill(); _ = hello.Wait() }()
	if err := waitHTTP("http://"+b.helloAddr+"/", 10*time.Second); err != nil {
		return err
	}
	fmt.Printf("== knfaas scale bench: %d cores, redis-server, quick=%v, load average %s (shared machine: other jobs run beside it)\n", cores(), b.quick, loadAvg())
	b.helloLoad(32, 2*time.Second)
	b.hello = b.helloLoad(32, time.Duration(b.scaled(10, 3))*time.Second)
	fmt.Printf("-- bare net/http hello, c=32: %.0f req/s, p50 %s, p99 %s\n\n", b.hello.Rate(), b.hello.P50.Round(time.Microsecond), b.hello.P99.Round(time.Microsecond))
	for _, d := range chosen {
		t0, avg := time.Now(), loadAvg()
		var err error
		switch d {
		case "fanout":
			err = b.fanout()
		case "payload":
			err = b.payload()
		case "concurrency":
			err = b.concurrency()
		case "instances":
			err = b.instances()
		case "backlog":
			err = b.backlog()
		default:
			err = fmt.Errorf("unknown dimension %q (known: %s)", d, strings.Join(dimensions, ","))
		}
		if err != nil {
			return fmt.Errorf("%s: %w", d, err)
		}
		fmt.Printf("   (%s took %s; load average before %s, after %s)\n\n", d, time.Since(t0).Round(time.Second), avg, loadAvg())
	}
	fmt.Printf("== bench-scale took %s\n", time.Since(began).Round(time.Second))
	return nil
}

// child is this program run as the hello server or the sink; it ends when the bench does.
func (b *bench) child(args ...string) *exec.Cmd {
	cmd := exec.Command(b.self, args...)
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	return cmd
}

func (b *bench) helloLoad(c int, d time.Duration) load.Result {
	url := "http://" + b.helloAddr + "/"
	return load.Run(load.Options{Concurrency: c, Duration: d}, func(int64) *http.Request {
		r, _ := http.NewRequest(http.MethodGet, url, nil)
		return r
	})
}

// up is a running `knfaas up` on manifests of its own.
type up struct {
	cmd  *exec.Cmd
	addr string
	dir  string
	out  bytes.Buffer
}

// startUp flushes redis and runs knfaas up on manifests, with extra flags, until it is healthy
// and instances function instances run.
func (b *bench) startUp(manifests string, instances int, flags ...string) (*up, error) {
	if err := b.rdb.FlushAll(context.Background()).Err(); err != nil {
		return nil, fmt.Errorf("flushing redis: %w", err)
	}
	dir, err := os.MkdirTemp("", "bench-scale")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "bench.yaml"), []byte(manifests), 0o644); err != nil {
		return nil, err
	}
	u := &up{addr: load.FreeAddr(), dir: dir}
	args := append([]string{"up", "--defaults=false", "-f", dir, "--addr", u.addr, "--idle", "10m", "--log-level", "warn", "--run-dir", filepath.Join(dir, "run")}, flags...)
	u.cmd = exec.Command(b.knfaas, args...)
	u.cmd.Env = append(os.Environ(), "REDIS_URL="+b.redisURL, "OTEL_SDK_DISABLED=true")
	u.cmd.Stdout, u.cmd.Stderr = &u.out, &u.out
	// An interrupted bench stops its knfaas up, which stops its instances.
	u.cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGINT}
	if err := u.cmd.Start(); err != nil {
		return nil, err
	}
	b.runs++
	if err := waitHTTP("http://"+u.addr+"/healthz", 3*time.Minute); err != nil {
		u.stop()
		return nil, fmt.Errorf("knfaas up did not start: %w\n%s", err, u.out.String())
	}
	for i := 0; metricSum(u.addr, "knfaas_service_instances{") < float64(instances); i++ {
		if i > 1800 {
			u.stop()
			return nil, fmt.Errorf("%d instances did not start:\n%s", instances, u.out.String())
		}
		time.Sleep(100 * time.Millisecond)
	}
	return u, nil
}

func (u *up) stop() {
	_ = u.cmd.Process.Signal(syscall.SIGINT)
	done := make(chan struct{})
	go func() { _ = u.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(30 * time.Second):
		_ = u.cmd.Process.Kill()
		<-done
	}
	_ = os.RemoveAll(u.dir)
}

func (u *up) pid() int { return u.cmd.Process.Pid }

func (u *up) delivered() float64 {
	return metricSum(u.addr, `knfaas_trigger_events_delivered_total{broker="bench/default"`)
}

// waitDelivered waits until want events were delivered since base, or until nothing was
// delivered for a minute; it returns what was delivered and when the last of it was seen.
func (u *up) waitDelivered(base, want float64, since time.Time) (float64, time.Duration) {
	last, lastChange := -1.0, time.Now()
	for {
		got := u.delivered() - base
		if got != last {
			last, lastChange = got, time.Now()
		}
		if got >= want || time.Since(lastChange) > time.Minute {
			return got, lastChange.Sub(since)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// publisher builds binary-mode CloudEvents to the bench broker of u, of type typ(i) and body.
func (u *up) publisher(run string, typ func(i int64) string, body []byte) func(i int64) *http.Request {
	url := "http://" + u.addr + "/bench/default"
	return func(i int64) *http.Request {
		r, _ := http.NewRequest(http.MethodPost, url, bytes.NewReader(body))
		r.Header.Set("Ce-Id", run+"-"+strconv.FormatInt(i, 10))
		r.Header.Set("Ce-Type", typ(i))
		r.Header.Set("Ce-Source", "/bench")
		r.Header.Set("Ce-Specversion", "1.0")
		r.Header.Set("Content-Type", "application/json")
		return r
	}
}

// storedThoughRefused is the number of events the broker's stream holds beyond those its ingress
// accepted since knfaas up started on a flushed redis: events answered with an error (a 503
// after the append timeout) that were stored all the same. It should be 0.
func (b *bench) storedThoughRefused(u *up) int64 {
	info, err := b.rdb.XInfoStream(context.Background(), broker.StreamKey("bench", "default")).Result()
	if err != nil {
		return -1
	}
	return info.EntriesAdded - int64(metricSum(u.addr, `knfaas_broker_events_accepted_total{broker="bench/default"`))
}

func sameType(int64) string { return "bench.event" }

// jsonBody is a JSON object of exactly size bytes (at least 10).
func jsonBody(size int) []byte {
	return []byte(`{"pad":"` + strings.Repeat("x", max(0, size-10)) + `"}`)
}

// sampler records the peak of the runtime's RSS and of redis' connected clients and used
// memory while it runs.
type sampler struct {
	stopped             chan struct{}
	done                sync.WaitGroup
	peakRSS             int
	peakClients         int64
	peakRedisMemory     int64
	runtimePID          int
	rdb                 *redis.Client
	ownRedisConnections int64
}

func (b *bench) sample(pid int) *sampler {
	s := &sampler{stopped: make(chan struct{}), runtimePID: pid, rdb: b.rdb, ownRedisConnections: 1}
	s.done.Add(1)
	go func() {
		defer s.done.Done()
		t := time.NewTicker(100 * time.Millisecond)
		defer t.Stop()
		for {
			s.peakRSS = max(s.peakRSS, proc.RSSKiB(s.runtimePID))
			s.peakClients = max(s.peakClients, redisInfo(s.rdb, "clients", "connected_clients")-s.ownRedisConnections)
			s.peakRedisMemory = max(s.peakRedisMemory, redisInfo(s.rdb, "memory", "used_memory"))
			select {
			case <-s.stopped:
				return
			case <-t.C:
			}
		}
	}()
	return s
}

func (s *sampler) stop() { close(s.stopped); s.done.Wait() }

// redisInfo reads one integer field of an INFO section, or -1.
func redisInfo(rdb *redis.Client, section, field string) int64 {
	info, err := rdb.Info(context.Background(), section).Result()
	if err != nil {
		return -1
	}
	for _, line := range strings.Split(info, "\r\n") {
		if v, ok := strings.CutPrefix(line, field+":"); ok {
			n, _ := strconv.ParseInt(v, 10, 64)
			return n
		}
	}
	return -1
}

func (b *bench) fanout() error {
	deliveries := b.scaled(60_000, 10_000)
	fmt.Printf("## fan-out: one Broker, N Triggers to one warm function (c=32 publishers, 128 B events, ~%d deliveries per row)\n", deliveries)
	fmt.Printf("| triggers | each matches | events accepted | deliveries | delivered/s | ratio to hello | runtime CPU per delivery | redis connections (peak) | lost | extra deliveries | stored though refused |\n|---|---|---|---|---|---|---|---|---|---|---|\n")
	for _, tc := range []struct {
		triggers int
		onePct   bool
	}{{1, false}, {10, false}, {100, false}, {100, true}} {
		var ms strings.Builder
		ms.WriteString(brokerYAML(nil, "") + serviceYAML("noop", 1))
		for t := range tc.triggers {
			typ := "bench.event"
			if tc.onePct {
				typ = fmt.Sprintf("bench.k%d", t)
			}
			ms.WriteString(triggerYAML(fmt.Sprintf("t%d", t), typ, serviceRef("noop")))
		}
		u, err := b.startUp(ms.String(), 1)
		if err != nil {
			return err
		}
		events, fan := deliveries/tc.triggers, tc.triggers
		typ, match := sameType, "100 %"
		if tc.onePct {
			events, fan, match = deliveries, 1, "1 %"
			typ = func(i int64) string { return fmt.Sprintf("bench.k%d", i%100) }
		}
		u.warm(typ, fan)
		s := b.sample(u.pid())
		base, cpu0, t0 := u.delivered(), proc.CPUSeconds(u.pid()), time.Now()
		p := load.Run(load.Options{Concurrency: 32, Requests: int64(events), Transport: localhost.Transport()}, u.publisher("fan", typ, jsonBody(128)))
		want := float64(p.N * int64(fan))
		got, took := u.waitDelivered(base, want, t0)
		cpu := proc.CPUSeconds(u.pid()) - cpu0
		s.stop()
		rate := got / took.Seconds()
		fmt.Printf("| %d | %s | %d%s | %.0f | %.0f | %.3f | %.1f µs | %d | %.0f | %.0f | %d |\n",
			tc.triggers, match, p.N, refusals(p), got, rate, rate/b.hello.Rate(), 1e6*cpu/max(got, 1), s.peakClients, max(0, want-got), max(0, got-want), b.storedThoughRefused(u))
		u.stop()
	}
	return nil
}

// refusals describes the requests of p that failed, if any: transport errors (a timeout, whose
// event may still have been stored) and statuses.
func refusals(p load.Result) string {
	if p.Failed == 0 {
		return ""
	}
	codes := []string{}
	for code, n := range p.Status {
		if code >= 300 {
			codes = append(codes, fmt.Sprintf("%d × %d", n, code))
		}
	}
	sort.Strings(codes)
	if p.Errors > 0 {
		codes = append(codes, fmt.Sprintf("%d transport errors", p.Errors))
	}
	return " (failed: " + strings.Join(codes, ", ") + ")"
}

// warm publishes a few events (about 500 deliveries with fan deliveries per event) and waits
// for their deliveries, so the connections and the instance are warm before a measurement.
func (u *up) warm(typ func(int64) string, fan int) {
	base := u.delivered()
	p := load.Run(load.Options{Concurrency: 8, Requests: int64(max(10, 500/fan)), Transport: localhost.Transport()}, u.publisher("warm", typ, jsonBody(128)))
	u.waitDelivered(base, float64(p.N*int64(fan)), time.Now())
}

func (b *bench) payload() error {
	fmt.Printf("## payload: one Broker (knfaas.dev/max-event-bytes: 2Mi, set explicitly), one Trigger to one warm function, c=32 publishers\n")
	fmt.Printf("| payload | events accepted | delivered/s | MB/s delivered | ratio to hello | publish p99 | runtime RSS peak | lost | extra deliveries | stored though refused (so far) |\n|---|---|---|---|---|---|---|---|---|---|\n")
	u, err := b.startUp(brokerYAML(map[string]string{"knfaas.dev/max-event-bytes": "2Mi"}, "")+serviceYAML("noop", 1)+triggerYAML("noop", "bench.event", serviceRef("noop")), 1)
	if err != nil {
		return err
	}
	defer u.stop()
	u.warm(sameType, 1)
	for _, tc := range []struct {
		size, full, quick int
		name              string
	}{{128, 10_000, 3_000, "128 B"}, {4 << 10, 10_000, 3_000, "4 KiB"}, {64 << 10, 3_000, 1_000, "64 KiB"}, {1 << 20, 300, 100, "1 MiB"}} {
		s := b.sample(u.pid())
		base, t0 := u.delivered(), time.Now()
		p := load.Run(load.Options{Concurrency: 32, Requests: int64(b.scaled(tc.full, tc.quick)), Transport: localhost.Transport()}, u.publisher("size"+strconv.Itoa(tc.size), sameType, jsonBody(tc.size)))
		got, took := u.waitDelivered(base, float64(p.N), t0)
		s.stop()
		rate := got / took.Seconds()
		fmt.Printf("| %s | %d%s | %.0f | %.1f | %.3f | %s | %.1f MiB | %.0f | %.0f | %d |\n",
			tc.name, p.N, refusals(p), rate, rate*float64(tc.size)/1e6, rate/b.hello.Rate(), p.P99.Round(100*time.Microsecond), float64(s.peakRSS)/1024, max(0, float64(p.N)-got), max(0, got-float64(p.N)), b.storedThoughRefused(u))
	}
	return nil
}

func (b *bench) concurrency() error {
	d := time.Duration(b.scaled(10, 4)) * time.Second
	// A backlog limit the faster publishers overrun within a run, so back-pressure shows.
	maxBacklog := 1000
	fmt.Printf("## concurrency: one Broker (--max-backlog %d, set explicitly, low so back-pressure shows), one Trigger to one warm function, closed loop for %s at each c, hello at the same c just before\n", maxBacklog, d)
	fmt.Printf("| c | hello req/s | hello p99 | accepted/s | delivered/s | ratio to hello | publish p99 | p99 ÷ hello p99 | 503 | other errors | runtime RSS peak | lost | extra deliveries | stored though refused (so far) |\n|---|---|---|---|---|---|---|---|---|---|---|---|---|---|\n")
	u, err := b.startUp(brokerYAML(nil, "")+serviceYAML("noop", 1)+triggerYAML("noop", "bench.event", serviceRef("noop")), 1, "--max-backlog", strconv.Itoa(maxBacklog))
	if err != nil {
		return err
	}
	defer u.stop()
	u.warm(sameType, 1)
	for _, c := range []int{8, 32, 128, 512} {
		h := b.helloLoad(c, d)
		s := b.sample(u.pid())
		tr := localhost.Transport()
		tr.MaxIdleConns = 0 // no limit: keep every worker's connection
		base, t0 := u.delivered(), time.Now()
		p := load.Run(load.Options{Concurrency: c, Duration: d, Transport: tr}, u.publisher("c"+strconv.Itoa(c), sameType, jsonBody(128)))
		got, took := u.waitDelivered(base, float64(p.N), t0)
		s.stop()
		other := p.Failed - p.Status[http.StatusServiceUnavailable]
		rate := got / took.Seconds()
		fmt.Printf("| %d | %.0f | %s | %.0f | %.0f | %.3f | %s | %.1f | %d | %d | %.1f MiB | %.0f | %.0f | %d |\n",
			c, h.Rate(), h.P99.Round(10*time.Microsecond), p.Rate(), rate, rate/h.Rate(), p.P99.Round(100*time.Microsecond), float64(p.P99)/float64(max(h.P99, 1)),
			p.Status[http.StatusServiceUnavailable], other, float64(s.peakRSS)/1024, max(0, float64(p.N)-got), max(0, got-float64(p.N)), b.storedThoughRefused(u))
		if other > 0 {
			fmt.Printf("   c=%d: failures other than 503:%s; the first: %s\n", c, refusals(p), p.FirstFailure)
		}
	}
	return nil
}

func (b *bench) instances() error {
	fmt.Printf("## instances: N warm functions (N Services, min-scale 1), idle after one request each\n")
	fmt.Printf("| warm functions | runtime RSS | instance RSS median | instance RSS max | all instances | runtime RSS per instance |\n|---|---|---|---|---|---|\n")
	var base int
	for _, n := range []int{1, 10, 50} {
		var ms strings.Builder
		for i := range n {
			ms.WriteString(serviceYAML(fmt.Sprintf("f%d", i), 1))
		}
		u, err := b.startUp(ms.String(), n)
		if err != nil {
			return err
		}
		client := localhost.Client(10 * time.Second)
		var rss []int
		for i := range n {
			pid, err := get(client, fmt.Sprintf("http://f%d.bench.localhost:%s/pid", i, portOf(u.addr)))
			if err != nil {
				u.stop()
				return err
			}
			p, _ := strconv.Atoi(pid)
			rss = append(rss, p)
		}
		time.Sleep(2 * time.Second)
		total := 0
		for i, p := range rss {
			rss[i] = proc.RSSKiB(p)
			total += rss[i]
		}
		sort.Ints(rss)
		runtime := proc.RSSKiB(u.pid())
		if n == 1 {
			base = runtime
		}
		perInstance := "—"
		if n > 1 {
			perInstance = fmt.Sprintf("%.2f MiB over 1 warm function", float64(runtime-base)/1024/float64(n-1))
		}
		fmt.Printf("| %d | %.1f MiB | %.1f MiB | %.1f MiB | %.1f MiB | %s |\n", n, float64(runtime)/1024, float64(rss[len(rss)/2])/1024, float64(rss[len(rss)-1])/1024, float64(total)/1024, perInstance)
		u.stop()
	}
	return nil
}

func (b *bench) backlog() error {
	n := b.backlogEvents
	maxBacklog := 2 * n
	sinkAddr := load.FreeAddr()
	fmt.Printf("## backlog: %d events (128 B) queued while the subscriber (a counting sink) is down, then drained (--max-backlog %d, set explicitly; linear retry backoff)\n", n, maxBacklog)
	u, err := b.startUp(brokerYAML(nil, "    retry: 1000\n    backoffPolicy: linear\n    backoffDelay: PT0.2S\n")+triggerYAML("sink", "bench.event", "    uri: http://"+sinkAddr+"/\n"), 0,
		"--max-backlog", strconv.Itoa(maxBacklog))
	if err != nil {
		return err
	}
	defer u.stop()
	memBefore := redisInfo(b.rdb, "memory", "used_memory")
	rssBefore := proc.RSSKiB(u.pid())
	s := b.sample(u.pid())
	p := load.Run(load.Options{Concurrency: 32, Requests: int64(n), Transport: localhost.Transport()}, u.publisher("backlog", sameType, jsonBody(128)))
	s.stop()
	queuedMem, queuedRSS := redisInfo(b.rdb, "memory", "used_memory"), proc.RSSKiB(u.pid())
	sink := b.child("sink", sinkAddr)
	if err := sink.Start(); err != nil {
		return err
	}
	defer func() { _ = sink.Process.Kill(); _ = sink.Wait() }()
	d := b.sample(u.pid())
	t0 := time.Now()
	var at99 time.Duration
	last, lastChange := int64(-1), time.Now()
	for {
		got := load.SinkCount(sinkAddr)
		if at99 == 0 && got >= p.N*99/100 {
			at99 = time.Since(t0)
		}
		if got != last {
			last, lastChange = got, time.Now()
		}
		if got >= p.N || time.Since(lastChange) > time.Minute {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	all := lastChange.Sub(t0)
	d.stop()
	time.Sleep(6 * time.Second) // the ingress trims acknowledged entries every 5 s
	memAfter, rssAfter := redisInfo(b.rdb, "memory", "used_memory"), proc.RSSKiB(u.pid())
	delivered := u.delivered()
	fmt.Printf("| phase | events | rate | redis used_memory | runtime RSS |\n|---|---|---|---|---|\n")
	fmt.Printf("| before | — | — | %.1f MiB | %.1f MiB |\n", mib(memBefore), float64(rssBefore)/1024)
	fmt.Printf("| queued (subscriber down) | %d accepted, failed %d (statuses %v) | %.0f ev/s accepted | %.1f MiB (peak %.1f) | %.1f MiB (peak %.1f) |\n",
		p.N, p.Failed, p.Status, p.Rate(), mib(queuedMem), mib(s.peakRedisMemory), float64(queuedRSS)/1024, float64(s.peakRSS)/1024)
	fmt.Printf("| drained (subscriber up) | %d at the sink (%.0f delivered by the runtime's count), lost %d | %.0f ev/s to 99 %% (%s), all in %s | peak %.1f MiB | peak %.1f MiB |\n",
		last, delivered, max(0, p.N-last), float64(p.N*99/100)/at99.Seconds(), at99.Round(time.Millisecond), all.Round(time.Millisecond), mib(d.peakRedisMemory), float64(d.peakRSS)/1024)
	fmt.Printf("| after (6 s later) | — | — | %.1f MiB | %.1f MiB |\n", mib(memAfter), float64(rssAfter)/1024)
	fmt.Printf("   drain ÷ hello = %.3f; duplicates at the sink %d\n", float64(p.N*99/100)/at99.Seconds()/b.hello.Rate(), max(0, last-p.N))
	return nil
}

func mib(b int64) float64 { return float64(b) / (1 << 20) }

func brokerYAML(annotations map[string]string, delivery string) string {
	var a strings.Builder
	if len(annotations) > 0 {
		a.WriteString("  annotations:\n")
		for k, v := range annotations {
			fmt.Fprintf(&a, "    %s: %q\n", k, v)
		}
	}
	if delivery == "" {
		delivery = "    retry: 10\n    backoffPolicy: exponential\n    backoffDelay: PT0.2S\n"
	}
	return "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: bench\n" + a.String() +
		"spec:\n  delivery:\n" + delivery + "---\n"
}

func serviceYAML(name string, minScale int) string {
	return fmt.Sprintf(`apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: %s
  namespace: bench
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "%d"
        autoscaling.knative.dev/max-scale: "1"
    spec:
      containers:
      - image: ko://github.com/knfaas/knfaas/test/functions/echo
        readinessProbe:
          httpGet:
            path: /health/readiness
---
`, name, minScale)
}

func serviceRef(name string) string {
	return "    ref:\n      apiVersion: serving.knative.dev/v1\n      kind: Service\n      name: " + name + "\n"
}

func triggerYAML(name, typ, subscriber string) string {
	return fmt.Sprintf(`apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: %s
  namespace: bench
spec:
  broker: default
  filter:
    attributes:
      type: %s
  subscriber:
%s---
`, name, typ, subscriber)
}

// metricSum adds the values of the runtime's metric lines that start with prefix.
func metricSum(addr, prefix string) float64 {
	resp, err := http.Get("http://" + addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	sum := 0.0
	sc := bufio.NewScanner(resp.Body)
	sc.Buffer(make([]byte, 1<<20), 1<<20)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), prefix) {
			f := strings.Fields(sc.Text())
			v, _ := strconv.ParseFloat(f[len(f)-1], 64)
			sum += v
		}
	}
	return sum
}

func get(client *http.Client, url string) (string, error) {
	resp, err := client.Get(url)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return "", err
	}
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s: %s: %s", url, resp.Status, b)
	}
	return string(b), nil
}

func waitHTTP(url string, limit time.Duration) error {
	deadline := time.Now().Add(limit)
	for time.Now().Before(deadline) {
		if resp, err := http.Get(url); err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer within %s", url, limit)
}

func portOf(addr string) string { _, p, _ := net.SplitHostPort(addr); return p }

func cores() int {
	b, _ := os.ReadFile("/proc/cpuinfo")
	return strings.Count(string(b), "processor\t:")
}

func loadAvg() string {
	b, err := os.ReadFile("/proc/loadavg")
	if err != nil {
		return "?"
	}
	return strings.Join(strings.Fields(string(b))[:3], " ")
}
