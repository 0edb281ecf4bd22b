// Command bench-brokerclass measures delivered events/s through the RedisStreamBroker data plane
// (broker-ingress and broker-dispatcher processes on a real redis-server → a no-op sink) beside a
// bare net/http hello server loaded by the same closed-loop generator in the same run.
// hack/bench-brokerclass.sh runs it; it prints figures, it asserts nothing.
package main

import (
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
	"sync/atomic"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "hello" {
		serveHello(os.Args[2])
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "sink" {
		serveSink(os.Args[2])
		return
	}
	var (
		conc       = flag.Int("c", 32, "concurrent connections (hello and publish alike)")
		dur        = flag.Duration("d", 15*time.Second, "duration of each load run")
		size       = flag.Int("size", 128, "event payload bytes")
		ingress    = flag.String("ingress", "", "broker-ingress binary")
		dispatcher = flag.String("dispatcher", "", "broker-dispatcher binary")
		redisURL   = flag.String("redis", "", "REDIS_URL of a real redis-server")
	)
	flag.Parse()
	if err := run(*conc, *dur, *size, *ingress, *dispatcher, *redisURL); err != nil {
		fmt.Fprintln(os.Stderr, "bench-brokerclass:", err)
		os.Exit(1)
	}
}

func serveHello(addr string) {
	http.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello\n") })
	_ = http.ListenAndServe(addr, nil)
}

// serveSink answers every event 200 and counts them; GET /count reads the count.
func serveSink(addr string) {
	var n atomic.Int64
	http.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) { fmt.Fprint(w, n.Load()) })
	http.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n.Add(1)
	})
	_ = http.ListenAndServe(addr, nil)
}

func freeAddr() string {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	defer l.Close()
	return l.Addr().String()
}

type result struct {
	n, failed int64
	elapsed   time.Duration
	p50, p99  time.Duration
}

// load runs a closed loop of c workers issuing mk() requests for dur.
func load(c int, dur time.Duration, mk func(i int64) *http.Request) result {
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = c
	client := &http.Client{Transport: tr, Timeout: 30 * time.Second}
	var next, failed atomic.Int64
	lat := make([][]time.Duration, c)
	start := time.Now()
	deadline := start.Add(dur)
	var wg sync.WaitGroup
	for w := range c {
		wg.Add(1)
		go func() {
			defer wg.Done()
			for time.Now().Before(deadline) {
				i := next.Add(1) - 1
				t0 := time.Now()
				resp, err := client.Do(mk(i))
				if err != nil {
					failed.Add(1)
					continue
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				if resp.StatusCode >= 300 {
					failed.Add(1)
					continue
				}
				lat[w] = append(lat[w], time.Since(t0))
			}
		}()
	}
	wg.Wait()
	var all []time.Duration
	for _, l := range lat {
		all = append(all, l...)
	}
	sort.Slice(all, func(i, j int) bool { return all[i] < all[j] })
	r := result{n: int64(len(all)), failed: failed.Load(), elapsed: time.Since(start)}
	if len(all) > 0 {
		r.p50, r.p99 = all[len(all)/2], all[len(all)*99/100]
	}
	return r
}

// start runs bin with env added; the returned func stops it.
func start(bin string, env map[string]string, args ...string) (*exec.Cmd, error) {
	cmd := exec.Command(bin, args...)
	cmd.Env = os.Environ()
	for k, v := range env {
		cmd.Env = append(cmd.Env, k+"="+v)
	}
	cmd.Stdout, cmd.Stderr = io.Discard, os.Stderr
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting %s: %w", bin, err)
	}
	return cmd, nil
}

func stop(cmd *exec.Cmd) {
	_ = cmd.Process.Signal(syscall.SIGTERM)
	_, _ = cmd.Process.Wait()
}

func waitHTTP(url string) error {
	for range 300 {
		resp, err := http.Get(url)
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode < 300 {
				return nil
			}
		}
		time.Sleep(100 * time.Millisecond)
	}
	return fmt.Errorf("%s did not answer", url)
}

func sinkCount(addr string) int64 {
	resp, err := http.Get("http://" + addr + "/count")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	n, _ := strconv.ParseInt(string(b), 10, 64)
	return n
}

// cpuSeconds is the user+system CPU time a process used so far.
func cpuSeconds(pid int) float64 {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0
	}
	f := strings.Fields(string(b[strings.LastIndexByte(string(b), ')')+2:]))
	ut, _ := strconv.ParseFloat(f[11], 64)
	st, _ := strconv.ParseFloat(f[12], 64)
	return (ut + st) / 100 // USER_HZ
}

func run(c int, dur time.Duration, size int, ingressBin, dispatcherBin, redisURL string) error {
	self, err := os.Executable()
	if err != nil {
		return err
	}
	payload := []byte(`{"d":"` + strings.Repeat("x", max(0, size-8)) + `"}`)
	event := func(url string) func(i int64) *http.Request {
		return func(i int64) *http.Request {
			req, _ := http.NewRequest(http.MethodPost, url, strings.NewReader(string(payload)))
			req.Header.Set("Content-Type", "application/json")
			req.Header.Set("Ce-Specversion", "1.0")
			req.Header.Set("Ce-Id", strconv.FormatInt(i, 10))
			req.Header.Set("Ce-Source", "/bench")
			req.Header.Set("Ce-Type", "bench.event")
			return req
		}
	}

	// The baseline: the same requests to a bare net/http handler.
	helloAddr := freeAddr()
	hello, err := start(self, nil, "hello", helloAddr)
	if err != nil {
		return err
	}
	defer stop(hello)
	if err := waitHTTP("http://" + helloAddr + "/"); err != nil {
		return err
	}
	h := load(c, dur, event("http://"+helloAddr+"/"))
	helloRate := float64(h.n) / h.elapsed.Seconds()
	fmt.Printf("hello (net/http)       %8.0f req/s  p50 %v p99 %v  failed %d\n", helloRate, h.p50.Round(10*time.Microsecond), h.p99.Round(10*time.Microsecond), h.failed)

	// The data plane on a contract, as the controller writes it.
	sinkAddr := freeAddr()
	sink, err := start(self, nil, "sink", sinkAddr)
	if err != nil {
		return err
	}
	defer stop(sink)
	if err := waitHTTP("http://" + sinkAddr + "/count"); err != nil {
		return err
	}
	opts, err := redis.ParseURL(redisURL)
	if err != nil {
		return fmt.Errorf("-redis: %w", err)
	}
	rdb := redis.NewClient(opts)
	defer rdb.Close()
	ingressAddr := freeAddr()
	brokerURL := "http://" + ingressAddr + broker.Path("bench", "default")
	trigger := brokerclass.Trigger{Namespace: "bench", Name: "sink", Broker: "default", Subscriber: "http://" + sinkAddr + "/", ReplyURL: brokerURL}
	if err := broker.EnsureGroup(context.Background(), rdb, trigger.Stream(), trigger.Group()); err != nil {
		return err
	}
	contract := &brokerclass.Contract{Generation: 1, Brokers: []brokerclass.Broker{{Namespace: "bench", Name: "default"}}, Triggers: []brokerclass.Trigger{trigger}}
	body, err := contract.Encode()
	if err != nil {
		return err
	}
	dir, err := os.MkdirTemp("", "bench-brokerclass")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	path := filepath.Join(dir, brokerclass.ContractKey)
	if err := os.WriteFile(path, body, 0o644); err != nil {
		return err
	}
	env := func(listen, pod string) map[string]string {
		return map[string]string{"REDIS_URL": redisURL, "CONTRACT_PATH": path, "LISTEN_ADDRESS": listen, "POD_NAME": pod}
	}
	dispatcherAddr := freeAddr()
	in, err := start(ingressBin, env(ingressAddr, "ingress-0"))
	if err != nil {
		return err
	}
	defer stop(in)
	disp, err := start(dispatcherBin, env(dispatcherAddr, "dispatcher-0"))
	if err != nil {
		return err
	}
	defer stop(disp)
	for _, a := range []string{ingressAddr, dispatcherAddr} {
		if err := waitHTTP("http://" + a + brokerclass.ReadinessPath); err != nil {
			return err
		}
	}
	cpu0 := cpuSeconds(in.Process.Pid) + cpuSeconds(disp.Process.Pid)
	t0 := time.Now()
	p := load(c, dur, event(brokerURL))
	accepted := p.n
	// Delivered events/s: every accepted event reached the sink, over the time from the first
	// publish to the last delivery (bounded wait for the backlog to drain).
	var delivered int64
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if delivered = sinkCount(sinkAddr); delivered >= accepted {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	drained := time.Since(t0)
	cpu := cpuSeconds(in.Process.Pid) + cpuSeconds(disp.Process.Pid) - cpu0
	deliveredRate := float64(delivered) / drained.Seconds()
	fmt.Printf("ingress accepted (202) %8.0f ev/s   p50 %v p99 %v  failed %d\n", float64(accepted)/p.elapsed.Seconds(), p.p50.Round(10*time.Microsecond), p.p99.Round(10*time.Microsecond), p.failed)
	fmt.Printf("delivered to the sink  %8.0f ev/s   %d of %d accepted, last %v after the first publish\n", deliveredRate, delivered, accepted, drained.Round(time.Millisecond))
	fmt.Printf("ratio delivered/hello  %8.3f   (c=%d, %d-byte events, 1 ingress + 1 dispatcher, CPU %.2f ms per event)\n",
		deliveredRate/helloRate, c, len(payload), 1000*cpu/float64(max(delivered, 1)))
	return nil
}
