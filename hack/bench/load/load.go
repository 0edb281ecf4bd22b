// Package load drives an HTTP server with workers, in a closed loop or at a fixed rate, the load
// generator the benchmarks under hack/ share so their figures compare.
package load

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"net/http"
	"sort"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Options say how hard and how long Run loads a server.
type Options struct {
	// Concurrency is the number of workers, each with one request in flight.
	Concurrency int
	// Requests, when above 0, ends the run after that many requests; otherwise Duration does.
	Requests int64
	// Duration ends the run when Requests is 0.
	Duration time.Duration
	// Transport carries the requests; nil is a clone of http.DefaultTransport. Run keeps
	// Concurrency idle connections per host on it.
	Transport *http.Transport
	// Timeout bounds each request; 0 is 30 s.
	Timeout time.Duration
	// Rate, when above 0, paces the run: request i is due Rate⁻¹·i after the start, and a
	// worker that is free waits until the next request is due. A request's latency is measured
	// from when it was due, so a server that falls behind is charged for the queueing its
	// slowness causes (no coordinated omission), as long as Concurrency workers can keep up.
	Rate float64
}

// Result is what a run measured. Latencies are those of the successful (2xx) requests.
type Result struct {
	// N is the number of successful requests; Failed those that failed (a transport error or a
	// status of 300 or more).
	N, Failed int64
	// Errors counts the transport errors; Status counts the responses by status code.
	Errors int64
	Status map[int]int64
	// FirstFailure describes the first failed request (its error, or its status and body);
	// empty when none failed.
	FirstFailure string
	Elapsed      time.Duration
	P50          time.Duration
	P99          time.Duration
}

// Rate is the successful requests per second.
func (r Result) Rate() float64 {
	if r.Elapsed <= 0 {
		return 0
	}
	return float64(r.N) / r.Elapsed.Seconds()
}

// Run issues request(i) for i = 0, 1, … from opts.Concurrency workers until opts.Requests
// requests were issued or opts.Duration passed, each worker waiting for its answer before the
// next request, and with opts.Rate set, none before it is due.
func Run(opts Options, request func(i int64) *http.Request) Result {
	tr := opts.Transport
	if tr == nil {
		tr = http.DefaultTransport.(*http.Transport).Clone()
	}
	tr.MaxIdleConnsPerHost = opts.Concurrency
	timeout := opts.Timeout
	if timeout == 0 {
		timeout = 30 * time.Second
	}
	client := &http.Client{Transport: tr, Timeout: timeout}
	var next, failed, errs atomic.Int64
	var firstFailure sync.Once
	var failure string
	fail := func(what string) {
		failed.Add(1)
		firstFailure.Do(func() { failure = what })
	}
	lat := make([][]time.Duration, opts.Concurrency)
	status := make([]map[int]int64, opts.Concurrency)
	start := time.Now()
	deadline := start.Add(opts.Duration)
	var wg sync.WaitGroup
	for w := range opts.Concurrency {
		status[w] = map[int]int64{}
		wg.Add(1)
		go func() {
			defer wg.Done()
			for {
				i := next.Add(1) - 1
				t0 := time.Now()
				// A paced run ends with the last request due within the duration, however late a
				// busy worker takes it; a closed loop ends when the duration has passed.
				end := t0
				if opts.Rate > 0 {
					end = start.Add(time.Duration(float64(i) / opts.Rate * float64(time.Second)))
				}
				if (opts.Requests > 0 && i >= opts.Requests) || (opts.Requests == 0 && end.After(deadline)) {
					return
				}
				if opts.Rate > 0 {
					time.Sleep(time.Until(end))
					t0 = end
				}
				resp, err := client.Do(request(i))
				if err != nil {
					errs.Add(1)
					fail(err.Error())
					continue
				}
				if resp.StatusCode >= 300 {
					b, _ := io.ReadAll(io.LimitReader(resp.Body, 512))
					fail(fmt.Sprintf("%s: %s", resp.Status, bytes.TrimSpace(b)))
				}
				_, _ = io.Copy(io.Discard, resp.Body)
				resp.Body.Close()
				status[w][resp.StatusCode]++
				if resp.StatusCode >= 300 {
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
	r := Result{N: int64(len(all)), Failed: failed.Load(), Errors: errs.Load(), Status: map[int]int64{}, Elapsed: time.Since(start), FirstFailure: failure}
	for _, s := range status {
		for code, n := range s {
			r.Status[code] += n
		}
	}
	if len(all) > 0 {
		r.P50, r.P99 = all[len(all)/2], all[len(all)*99/100]
	}
	return r
}

// ServeHello serves the baseline every benchmark compares with: a bare net/http handler that
// answers "hello". It returns when the listener fails.
func ServeHello(addr string) error {
	mux := http.NewServeMux()
	mux.HandleFunc("/", func(w http.ResponseWriter, _ *http.Request) { _, _ = io.WriteString(w, "hello\n") })
	return http.ListenAndServe(addr, mux)
}

// ServeSink serves a subscriber that answers every request 200 and counts them; GET /count
// answers the count. It returns when the listener fails.
func ServeSink(addr string) error {
	var n atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("/count", func(w http.ResponseWriter, _ *http.Request) {
		_, _ = io.WriteString(w, strconv.FormatInt(n.Load(), 10))
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		n.Add(1)
	})
	return http.ListenAndServe(addr, mux)
}

// SinkCount reads the count of the sink ServeSink serves at addr, or -1 if it does not answer.
func SinkCount(addr string) int64 {
	resp, err := http.Get("http://" + addr + "/count")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(resp.Body)
	if err != nil {
		return -1
	}
	n, err := strconv.ParseInt(string(b), 10, 64)
	if err != nil {
		return -1
	}
	return n
}

// FreeAddr is a loopback address with a port nobody listens on right now.
func FreeAddr() string {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		panic(err)
	}
	defer l.Close()
	return l.Addr().String()
}
