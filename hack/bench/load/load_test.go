package load

import (
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

func TestRun(t *testing.T) {
	tests := []struct {
		name string
		// status answers request number i.
		status     func(i int64) int
		opts       Options
		wantN      int64 // -1: at least one
		wantFailed int64
		wantStatus map[int]int64
	}{
		{
			name:       "stops after the requested number of requests",
			status:     func(int64) int { return http.StatusOK },
			opts:       Options{Concurrency: 4, Requests: 100},
			wantN:      100,
			wantStatus: map[int]int64{200: 100},
		},
		{
			name: "counts answers of 300 and more as failed, by status",
			status: func(i int64) int {
				return map[bool]int{true: http.StatusServiceUnavailable, false: http.StatusAccepted}[i%4 == 0]
			},
			opts:       Options{Concurrency: 2, Requests: 40},
			wantN:      30,
			wantFailed: 10,
			wantStatus: map[int]int64{202: 30, 503: 10},
		},
		{
			name:   "runs for the duration when no count is given",
			status: func(int64) int { return http.StatusOK },
			opts:   Options{Concurrency: 3, Duration: 200 * time.Millisecond},
			wantN:  -1,
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			var served atomic.Int64
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				served.Add(1)
				code := tt.status(parseIndex(r))
				w.WriteHeader(code)
				if code >= 300 {
					_, _ = w.Write([]byte("refused\n"))
				}
			}))
			defer srv.Close()
			r := Run(tt.opts, func(i int64) *http.Request {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/?i="+strconv.FormatInt(i, 10), nil)
				return req
			})
			if tt.wantN >= 0 && r.N != tt.wantN {
				t.Errorf("N = %d, want %d", r.N, tt.wantN)
			}
			if tt.wantN < 0 && (r.N == 0 || r.Elapsed < tt.opts.Duration) {
				t.Errorf("N = %d after %v, want some requests over at least %v", r.N, r.Elapsed, tt.opts.Duration)
			}
			if r.Failed != tt.wantFailed || r.Errors != 0 {
				t.Errorf("Failed = %d, Errors = %d, want %d and 0", r.Failed, r.Errors, tt.wantFailed)
			}
			if tt.wantFailed > 0 && r.FirstFailure != "503 Service Unavailable: refused" {
				t.Errorf("FirstFailure = %q, want the status and the body", r.FirstFailure)
			}
			if tt.wantStatus != nil && !equal(r.Status, tt.wantStatus) {
				t.Errorf("Status = %v, want %v", r.Status, tt.wantStatus)
			}
			if (r.Failed > 0) != (r.FirstFailure != "") {
				t.Errorf("Failed = %d, FirstFailure = %q", r.Failed, r.FirstFailure)
			}
			if served.Load() != r.N+r.Failed {
				t.Errorf("server saw %d requests, result counts %d", served.Load(), r.N+r.Failed)
			}
			if r.N > 0 && (r.P50 <= 0 || r.P99 < r.P50) {
				t.Errorf("p50 %v, p99 %v: want 0 < p50 ≤ p99", r.P50, r.P99)
			}
		})
	}
}

func TestRunAtARate(t *testing.T) {
	tests := []struct {
		name string
		opts Options
		// slowFirst delays the answer to request 0.
		slowFirst time.Duration
		wantN     int64
		// wantP50AtLeast: requests queued behind the slow first one are charged from when they
		// were due, so the median latency includes the wait.
		wantP50AtLeast time.Duration
	}{
		{
			name:  "issues exactly the requests due within the duration",
			opts:  Options{Concurrency: 4, Rate: 200, Duration: 500 * time.Millisecond},
			wantN: 101, // due at 0, 5 ms, …, 500 ms
		},
		{
			name:           "charges a request from when it was due, not from when a worker was free",
			opts:           Options{Concurrency: 1, Rate: 100, Requests: 3},
			slowFirst:      100 * time.Millisecond,
			wantN:          3,
			wantP50AtLeast: 80 * time.Millisecond, // request 1 was due at 10 ms and sent at ≥ 100 ms
		},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				if parseIndex(r) == 0 {
					time.Sleep(tt.slowFirst)
				}
			}))
			defer srv.Close()
			r := Run(tt.opts, func(i int64) *http.Request {
				req, _ := http.NewRequest(http.MethodGet, srv.URL+"/?i="+strconv.FormatInt(i, 10), nil)
				return req
			})
			if r.N != tt.wantN || r.Failed != 0 {
				t.Errorf("N = %d, Failed = %d, want %d and 0", r.N, r.Failed, tt.wantN)
			}
			if r.P50 < tt.wantP50AtLeast {
				t.Errorf("p50 = %v, want at least %v", r.P50, tt.wantP50AtLeast)
			}
		})
	}
}

func TestRunCountsTransportErrors(t *testing.T) {
	addr := FreeAddr() // nobody listens there
	r := Run(Options{Concurrency: 2, Requests: 6}, func(int64) *http.Request {
		req, _ := http.NewRequest(http.MethodGet, "http://"+addr+"/", nil)
		return req
	})
	if r.N != 0 || r.Failed != 6 || r.Errors != 6 {
		t.Errorf("N %d, Failed %d, Errors %d; want 0, 6, 6", r.N, r.Failed, r.Errors)
	}
}

func parseIndex(r *http.Request) int64 {
	n, _ := strconv.ParseInt(r.URL.Query().Get("i"), 10, 64)
	return n
}

func equal(a, b map[int]int64) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if b[k] != v {
			return false
		}
	}
	return true
}

func TestSinkCountsWhatItReceived(t *testing.T) {
	addr := FreeAddr()
	go func() { _ = ServeSink(addr) }()
	for i := 0; SinkCount(addr) < 0; i++ {
		if i > 200 {
			t.Fatal("the sink did not answer")
		}
		time.Sleep(10 * time.Millisecond)
	}
	r := Run(Options{Concurrency: 3, Requests: 25}, func(int64) *http.Request {
		req, _ := http.NewRequest(http.MethodPost, "http://"+addr+"/", strings.NewReader("event"))
		return req
	})
	if r.N != 25 || SinkCount(addr) != 25 {
		t.Errorf("sent %d, sink counted %d; want 25 and 25", r.N, SinkCount(addr))
	}
}
