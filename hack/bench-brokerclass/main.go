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
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/hack/bench/load"
	"github.com/knfaas/knfaas/hack/bench/proc"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

func main() {
	if len(os.Args) > 2 && os.Args[1] == "hello" {
		_ = load.ServeHello(os.Args[2])
		return
	}
	if len(os.Args) > 2 && os.Args[1] == "sink" {
		_ = load.ServeSink(os.Args[2])
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
	helloAddr := load.FreeAddr()
	hello, err := start(self, nil, "hello", helloAddr)
	if err != nil {
		return err
	}
	defer stop(hello)
	if err := waitHTTP("http://" + helloAddr + "/"); err != nil {
		return err
	}
	h := load.Run(load.Options{Concurrency: c, Duration: dur}, event("http://"+helloAddr+"/"))
	helloRate := h.Rate()
	fmt.Printf("hello (net/http)       %8.0f req/s  p50 %v p99 %v  failed %d\n", helloRate, h.P50.Round(10*time.Microsecond), h.P99.Round(10*time.Microsecond), h.Failed)

	// The data plane on a contract, as the controller writes it.
	sinkAddr := load.FreeAddr()
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
	ingressAddr := load.FreeAddr()
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
	dispatcherAddr := load.FreeAddr()
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
	cpu0 := proc.CPUSeconds(in.Process.Pid) + proc.CPUSeconds(disp.Process.Pid)
	t0 := time.Now()
	p := load.Run(load.Options{Concurrency: c, Duration: dur}, event(brokerURL))
	accepted := p.N
	// Delivered events/s: every accepted event reached the sink, over the time from the first
	// publish to the last delivery (bounded wait for the backlog to drain).
	var delivered int64
	deadline := time.Now().Add(2 * time.Minute)
	for time.Now().Before(deadline) {
		if delivered = load.SinkCount(sinkAddr); delivered >= accepted {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	drained := time.Since(t0)
	cpu := proc.CPUSeconds(in.Process.Pid) + proc.CPUSeconds(disp.Process.Pid) - cpu0
	deliveredRate := float64(delivered) / drained.Seconds()
	fmt.Printf("ingress accepted (202) %8.0f ev/s   p50 %v p99 %v  failed %d\n", float64(accepted)/p.Elapsed.Seconds(), p.P50.Round(10*time.Microsecond), p.P99.Round(10*time.Microsecond), p.Failed)
	fmt.Printf("delivered to the sink  %8.0f ev/s   %d of %d accepted, last %v after the first publish\n", deliveredRate, delivered, accepted, drained.Round(time.Millisecond))
	fmt.Printf("ratio delivered/hello  %8.3f   (c=%d, %d-byte events, 1 ingress + 1 dispatcher, CPU %.2f ms per event)\n",
		deliveredRate/helloRate, c, len(payload), 1000*cpu/float64(max(delivered, 1)))
	return nil
}
