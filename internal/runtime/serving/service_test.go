package serving

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"log/slog"
	"maps"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"
)

var echoBinary string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "serving-test")
	if err != nil {
		panic(err)
	}
	b := &Builder{Dir: "../../..", CacheDir: dir}
	built, err := b.Build(context.Background(), []string{"github.com/knfaas/knfaas/test/functions/echo"})
	if err != nil {
		fmt.Fprintln(os.Stderr, "building echo:", err)
		os.Exit(1)
	}
	echoBinary = built[0].Binary
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type countingObserver struct {
	coldStarts atomic.Int64
	maxSeen    atomic.Int64
}

func (o *countingObserver) ColdStart(string, string, time.Duration) { o.coldStarts.Add(1) }
func (o *countingObserver) SetInstances(_, _ string, n int) {
	for {
		m := o.maxSeen.Load()
		if int64(n) <= m || o.maxSeen.CompareAndSwap(m, int64(n)) {
			return
		}
	}
}

func startPool(t *testing.T, spec Spec) (*Pool, *httptest.Server, *countingObserver) {
	t.Helper()
	svc, obs := newPool(t, spec)
	return svc, runPool(t, svc, svc), obs
}

// newPool returns a Pool of the echo function with test defaults.
func newPool(t testing.TB, spec Spec) (*Pool, *countingObserver) {
	t.Helper()
	spec.Namespace, spec.Name = "test", t.Name()
	if spec.Binary == "" {
		spec.Binary = echoBinary
	}
	if spec.ReadinessPath == "" {
		spec.ReadinessPath = "/health/readiness"
	}
	if spec.IdleTimeout == 0 {
		spec.IdleTimeout = time.Minute
	}
	obs := &countingObserver{}
	return NewPool(spec, slog.New(slog.NewTextHandler(io.Discard, nil)), obs), obs
}

// runService runs svc until the test ends and serves h (svc, or a handler calling it) on a test
// server configured as the runtime's (NewServer).
func runPool(t testing.TB, svc *Pool, h http.Handler) *httptest.Server {
	t.Helper()
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan struct{})
	go func() { svc.Run(ctx); close(done) }()
	srv := httptest.NewUnstartedServer(h)
	srv.Config = NewServer(h)
	srv.Start()
	t.Cleanup(func() { srv.Close(); cancel(); <-done })
	return srv
}

func get(t *testing.T, url string) (int, string) {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatalf("GET %s: %v", url, err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	return resp.StatusCode, string(b)
}

func eventually(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(15 * time.Second)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s did not happen within 15s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func TestColdStartThenScaleToZero(t *testing.T) {
	svc, srv, obs := startPool(t, Spec{IdleTimeout: 200 * time.Millisecond, Env: []string{"GREETING=hello"}})
	if n := svc.Instances(); n != 0 {
		t.Fatalf("instances before the first request = %d, want 0 (min-scale 0)", n)
	}

	code, body := get(t, srv.URL+"/env?name=GREETING")

	if code != 200 || body != "hello" {
		t.Fatalf("first request: %d %q, want 200 \"hello\" (buffered through the cold start)", code, body)
	}
	if obs.coldStarts.Load() != 1 {
		t.Errorf("cold starts = %d, want 1", obs.coldStarts.Load())
	}
	eventually(t, "scale to zero", func() bool { return svc.Instances() == 0 })
}

func TestReadinessIsAwaited(t *testing.T) {
	_, srv, _ := startPool(t, Spec{Env: []string{"ECHO_READY_DELAY=300ms"}})
	code, _ := get(t, srv.URL+"/pid")
	if code != 200 {
		t.Fatalf("request during a slow start answered %d, want 200 after readiness", code)
	}
}

func TestMinScaleKeepsInstancesWarm(t *testing.T) {
	svc, _, _ := startPool(t, Spec{MinScale: 2, IdleTimeout: 50 * time.Millisecond})
	eventually(t, "two warm instances", func() bool { return svc.Instances() == 2 })
	time.Sleep(300 * time.Millisecond) // several idle windows
	if n := svc.Instances(); n != 2 {
		t.Fatalf("instances after idle windows = %d, want min-scale 2", n)
	}
}

func TestConcurrencyBounds(t *testing.T) {
	tests := []struct {
		name          string
		cc, maxScale  int
		requests      int
		wantInstances int64
	}{
		{name: "one slot queues the rest", cc: 1, maxScale: 1, requests: 5, wantInstances: 1},
		{name: "two instances of one slot", cc: 1, maxScale: 2, requests: 6, wantInstances: 2},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc, srv, obs := startPool(t, Spec{ContainerConcurrency: tc.cc, MaxScale: tc.maxScale})
			var wg sync.WaitGroup
			var failed atomic.Int64
			for i := 0; i < tc.requests; i++ {
				wg.Add(1)
				go func() {
					defer wg.Done()
					resp, err := http.Get(srv.URL + "/?sleep=150ms")
					if err != nil || resp.StatusCode != 200 {
						failed.Add(1)
					}
					if resp != nil {
						resp.Body.Close()
					}
				}()
			}
			wg.Wait()
			if failed.Load() != 0 {
				t.Fatalf("%d requests failed; excess requests must queue, not fail", failed.Load())
			}
			if got := obs.maxSeen.Load(); got != tc.wantInstances {
				t.Errorf("most instances at once = %d, want %d (max-scale)", got, tc.wantInstances)
			}
			if svc.Instances() > tc.maxScale {
				t.Errorf("instances = %d > max-scale %d", svc.Instances(), tc.maxScale)
			}
			for range svc.Instances() {
				_, body := get(t, srv.URL+"/maxinflight")
				if n, _ := strconv.Atoi(body); n > tc.cc {
					t.Errorf("an instance saw %d requests in flight, above containerConcurrency %d", n, tc.cc)
				}
			}
		})
	}
}

func TestTimeoutIsEnforced(t *testing.T) {
	_, srv, _ := startPool(t, Spec{Timeout: 300 * time.Millisecond})
	code, body := get(t, srv.URL+"/?sleep=5s")
	if code != http.StatusGatewayTimeout {
		t.Fatalf("slow request answered %d %q, want 504", code, body)
	}
}

func TestCrashedInstanceIsReplaced(t *testing.T) {
	_, srv, _ := startPool(t, Spec{})
	_, pid1 := get(t, srv.URL+"/pid")
	resp, err := http.Post(srv.URL+"/crash", "text/plain", nil)
	if err == nil {
		resp.Body.Close()
		if resp.StatusCode != http.StatusBadGateway {
			t.Errorf("request that crashed the instance answered %d, want 502", resp.StatusCode)
		}
	}
	var pid2 string
	eventually(t, "a new instance", func() bool {
		code, body := get(t, srv.URL+"/pid")
		pid2 = body
		return code == 200 && body != pid1
	})
	if pid2 == pid1 {
		t.Fatal("the crashed instance was not replaced")
	}
}

func TestStartFailureIsReported(t *testing.T) {
	dir := t.TempDir()
	bad := filepath.Join(dir, "fails")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\necho boom >&2\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	_, srv, _ := startPool(t, Spec{Binary: bad, Timeout: 10 * time.Second})
	code, body := get(t, srv.URL+"/")
	if code != http.StatusServiceUnavailable || !strings.Contains(body, "exited before it became ready") {
		t.Fatalf("request to a function that cannot start: %d %q, want 503 naming the cause", code, body)
	}
}

func TestImportPath(t *testing.T) {
	tests := map[string]struct {
		image, want string
		wantErr     bool
	}{
		"ko image":       {image: "ko://github.com/knfaas/knfaas/functions/webhook", want: "github.com/knfaas/knfaas/functions/webhook"},
		"registry image": {image: "ghcr.io/acme/fn:1.0", wantErr: true},
		"empty ko":       {image: "ko://", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			got, err := ImportPath(tc.image)
			if (err != nil) != tc.wantErr || got != tc.want {
				t.Fatalf("ImportPath(%q) = %q, %v", tc.image, got, err)
			}
			if name == "registry image" && !strings.Contains(err.Error(), "only ko://") {
				t.Errorf("error %q does not say only ko:// images run locally", err)
			}
		})
	}
}

func TestBuildIsCachedByContent(t *testing.T) {
	b := &Builder{Dir: "../../..", CacheDir: t.TempDir()}
	ctx := context.Background()
	first, err := b.Build(ctx, []string{"github.com/knfaas/knfaas/test/functions/echo"})
	if err != nil {
		t.Fatal(err)
	}
	second, err := b.Build(ctx, []string{"github.com/knfaas/knfaas/test/functions/echo"})
	if err != nil {
		t.Fatal(err)
	}
	if first[0].Cached || !second[0].Cached || first[0].Binary != second[0].Binary {
		t.Fatalf("first=%+v second=%+v; want a fresh build then a cache hit on the same binary", first[0], second[0])
	}
	if _, err := b.Build(ctx, []string{"github.com/knfaas/knfaas/internal/function/redisconn"}); err == nil || !strings.Contains(err.Error(), "not a main package") {
		t.Fatalf("building a library package: err = %v, want 'not a main package'", err)
	}
}

// TestRaceBuildsAreKeyedApart: KNFAAS_RACE=1 builds with -race (and cgo, which it needs), under
// a cache key of its own, so a cached plain binary never stands in for a race build. A plain
// build leaves CGO_ENABLED to the environment, as `go run` does (TestFunctionBuildsReuseTheCompileCache).
func TestRaceBuildsAreKeyedApart(t *testing.T) {
	t.Setenv(EnvRace, "1")
	if !Race() {
		t.Fatalf("Race() = false with %s=1", EnvRace)
	}
	plainEnv, plainFlags := buildSettings(false)
	raceEnv, raceFlags := buildSettings(true)
	if !slices.Contains(raceFlags, "-race") || slices.Contains(plainFlags, "-race") {
		t.Errorf("flags: race %q, plain %q; want -race only in the race build", raceFlags, plainFlags)
	}
	if raceEnv[len(raceEnv)-1] != "CGO_ENABLED=1" {
		t.Errorf("race build environment ends with %q, want CGO_ENABLED=1", raceEnv[len(raceEnv)-1])
	}
	if !slices.Equal(plainEnv, os.Environ()) {
		t.Errorf("plain build environment differs from the process's: %q", plainEnv)
	}
	p := &listedPackage{ImportPath: "example.com/fn", Name: "main"}
	pkgs := map[string]*listedPackage{p.ImportPath: p}
	plainKey, err := contentKey([]byte("go1"), plainFlags, p, pkgs)
	if err != nil {
		t.Fatal(err)
	}
	raceKey, err := contentKey([]byte("go1"), raceFlags, p, pkgs)
	if err != nil {
		t.Fatal(err)
	}
	if plainKey == raceKey {
		t.Errorf("race and plain builds share the cache key %s", plainKey)
	}
}

func TestWarmStartsInitialScale(t *testing.T) {
	svc, _, _ := startPool(t, Spec{})
	if err := svc.Warm(2); err != nil {
		t.Fatalf("Warm: %v", err)
	}
	if n := svc.Instances(); n != 2 {
		t.Fatalf("instances after Warm(2) = %d, want 2", n)
	}

	dir := t.TempDir()
	bad := filepath.Join(dir, "fails")
	if err := os.WriteFile(bad, []byte("#!/bin/sh\nexit 7\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	failing, _, _ := startPool(t, Spec{Binary: bad})
	if err := failing.Warm(1); err == nil || !strings.Contains(err.Error(), "exited before it became ready") {
		t.Fatalf("Warm of a function that cannot start: %v, want the cause", err)
	}
}

// TestStopAllStopsStartingInstances stops a Service while an instance is still starting: Run
// returns only once every instance, the starting one included, is gone, and no process of it
// survives. PIDs is polled meanwhile, as fault tests do, which -race checks against the launch.
func TestStopAllStopsStartingInstances(t *testing.T) {
	tests := []struct {
		name string
		// stopWhen is polled with the Service's pids; Run is stopped once it returns true.
		stopWhen func(pids []int) bool
	}{
		{name: "before its process exists", stopWhen: func([]int) bool { return true }},
		{name: "while it awaits readiness", stopWhen: func(pids []int) bool { return len(pids) > 0 }},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			svc, _ := newPool(t, Spec{MinScale: 1, Env: []string{"ECHO_READY_DELAY=1h"}})
			ctx, cancel := context.WithCancel(context.Background())
			done := make(chan struct{})
			go func() { svc.Run(ctx); close(done) }()
			var seen []int
			eventually(t, "an instance starting", func() bool {
				seen = append(seen, svc.PIDs()...)
				return svc.Instances() > 0 && tc.stopWhen(seen)
			})

			cancel()
			<-done

			n := svc.Instances()
			pids := append(seen, svc.PIDs()...)
			if n != 0 {
				// The escaped instance runs on; wait for its process to show, then stop it.
				eventually(t, "the escaped process", func() bool { pids = append(pids, svc.PIDs()...); return len(pids) > 0 })
				for _, pid := range pids {
					_ = syscall.Kill(-pid, syscall.SIGKILL)
				}
				t.Fatalf("instances after Run returned = %d, want 0: an instance still starting escaped stopAll", n)
			}
			for _, pid := range pids {
				if err := syscall.Kill(pid, 0); err == nil {
					_ = syscall.Kill(-pid, syscall.SIGKILL)
					t.Errorf("process %d of a starting instance survived Run", pid)
				}
			}
		})
	}
}

func TestEffectiveMaxScale(t *testing.T) {
	tests := []struct {
		name     string
		maxScale int
		want     int
	}{
		{name: "not set is the default", maxScale: 0, want: 10},
		{name: "negative is the default", maxScale: -1, want: 10},
		{name: "set", maxScale: 3, want: 3},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if got := (Spec{MaxScale: tc.maxScale}).EffectiveMaxScale(); got != tc.want {
				t.Fatalf("EffectiveMaxScale() = %d, want %d", got, tc.want)
			}
		})
	}
}

// TestBuildReportsProgress: the shared dependencies compile first, then each function starts
// and finishes, at most Parallelism at a time, each step reported with its time; a function
// that does not compile is reported as failed and named in the error.
func TestBuildReportsProgress(t *testing.T) {
	broken := t.TempDir()
	tests := []struct {
		name        string
		parallelism int
		paths       []string
		setup       func(t *testing.T) string // returns the module dir
		wantErr     string
	}{
		{name: "two functions, one at a time", parallelism: 1,
			paths: []string{"github.com/knfaas/knfaas/test/functions/echo", "github.com/knfaas/knfaas/test/functions/recorder"}},
		{name: "two functions in parallel", parallelism: 2,
			paths: []string{"github.com/knfaas/knfaas/test/functions/echo", "github.com/knfaas/knfaas/test/functions/recorder"}},
		{name: "a function that does not compile", parallelism: 2, paths: []string{"example.com/broken/fn"},
			setup: func(t *testing.T) string {
				must := func(err error) {
					if err != nil {
						t.Fatal(err)
					}
				}
				must(os.WriteFile(filepath.Join(broken, "go.mod"), []byte("module example.com/broken\n\ngo 1.22\n"), 0o644))
				must(os.MkdirAll(filepath.Join(broken, "fn"), 0o755))
				must(os.WriteFile(filepath.Join(broken, "fn", "main.go"), []byte("package main\n\nfunc main() { undefined() }\n"), 0o644))
				return broken
			},
			wantErr: "building example.com/broken/fn"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := "../../.."
			if tc.setup != nil {
				dir = tc.setup(t)
			}
			var steps []BuildProgress
			running, maxRunning := 0, 0
			b := &Builder{Dir: dir, CacheDir: t.TempDir(), Parallelism: tc.parallelism, Progress: func(p BuildProgress) {
				steps = append(steps, p)
				switch p.Step {
				case StepStart:
					running++
					maxRunning = max(maxRunning, running)
				case StepDone:
					running--
				}
			}}
			_, err := b.Build(context.Background(), tc.paths)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
			} else if err != nil {
				t.Fatal(err)
			}
			if len(steps) == 0 || steps[0].Step != StepDepsStart {
				t.Fatalf("steps %+v: want the dependencies first", steps)
			}
			started, done := map[string]bool{}, map[string]bool{}
			depsDone := false
			for _, p := range steps {
				switch p.Step {
				case StepDepsDone:
					depsDone = p.Err == nil
				case StepStart:
					if !depsDone {
						t.Errorf("%s started before the dependencies compiled", p.ImportPath)
					}
					started[p.ImportPath] = true
				case StepDone:
					if !started[p.ImportPath] || p.Elapsed <= 0 {
						t.Errorf("done %+v: want it started before and timed", p)
					}
					if (p.Err != nil) != (tc.wantErr != "") {
						t.Errorf("done %s: err %v", p.ImportPath, p.Err)
					}
					done[p.ImportPath] = true
				}
			}
			for _, ip := range tc.paths {
				if !done[ip] {
					t.Errorf("%s: no done step in %+v", ip, steps)
				}
			}
			if maxRunning > tc.parallelism {
				t.Errorf("%d builds ran at once, want at most %d", maxRunning, tc.parallelism)
			}
			var lines strings.Builder
			print := PrintProgress(&lines)
			for _, p := range steps {
				print(p)
			}
			if !strings.Contains(lines.String(), "compiling their dependencies") || !strings.Contains(lines.String(), tc.paths[0]) {
				t.Errorf("printed progress:\n%s", lines.String())
			}
		})
	}
}

// TestProxyReusesCopyBuffers checks that answering through the reverse proxy does not allocate a
// copy buffer per request: without a BufferPool, httputil.ReverseProxy makes (and zeroes) one of
// 32 KiB for every answer, which on the event path was most of the bytes allocated per delivery.
func TestProxyReusesCopyBuffers(t *testing.T) {
	if raceDetector {
		t.Skip("under the race detector sync.Pool drops pooled items at random: allocations per request say nothing")
	}
	tests := []struct {
		name   string
		method string
		body   string
		header http.Header
	}{
		{name: "request without a body", method: http.MethodGet},
		{name: "echoed body", method: http.MethodPost, body: strings.Repeat("x", 128)},
		{name: "CloudEvent answered without a body", method: http.MethodPost, body: `{"n":1}`,
			header: http.Header{"Ce-Id": {"1"}, "Ce-Type": {"t"}, "Ce-Source": {"/s"}, "Ce-Specversion": {"1.0"}}},
	}
	svc, _ := newPool(t, Spec{MinScale: 1})
	runPool(t, svc, svc)
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			serve := func() {
				req := httptest.NewRequest(tc.method, "/", strings.NewReader(tc.body))
				maps.Copy(req.Header, tc.header)
				rec := httptest.NewRecorder()
				svc.ServeHTTP(rec, req)
				if rec.Code != http.StatusOK {
					t.Fatalf("status = %d, want 200: %s", rec.Code, rec.Body)
				}
			}
			for range 20 { // an instance started, connections open, buffers pooled
				serve()
			}
			const requests = 200
			var before, after runtime.MemStats
			runtime.ReadMemStats(&before)
			for range requests {
				serve()
			}
			runtime.ReadMemStats(&after)
			perRequest := (after.TotalAlloc - before.TotalAlloc) / requests
			t.Logf("%d bytes allocated per proxied request", perRequest)
			if perRequest >= copyBufferSize {
				t.Errorf("%d bytes allocated per proxied request, at least the %d of a copy buffer: the proxy allocates one per answer", perRequest, copyBufferSize)
			}
		})
	}
}

// TestBufferedBodyIsSizedByItsLength checks that a body of known length is read into one buffer
// of its size (and the read that finds its end), not into one grown from 512 bytes by doubling:
// the buffer's capacity is that of a single allocation of ContentLength+bytes.MinRead bytes.
func TestBufferedBodyIsSizedByItsLength(t *testing.T) {
	tests := []struct {
		name string
		size int
	}{
		{name: "event of 128 bytes", size: 128},
		{name: "event of 4 KiB", size: 4 << 10},
		{name: "event of 64 KiB", size: 64 << 10},
	}
	svc, _ := newPool(t, Spec{})
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			sent := strings.Repeat("x", tc.size)
			req := httptest.NewRequest(http.MethodPost, "/", strings.NewReader(sent))
			rec := httptest.NewRecorder()
			body, reserved, err := svc.readBody(context.Background(), http.NewResponseController(rec), req, time.Time{})
			svc.buffered.Add(-reserved)
			if err != nil {
				t.Fatalf("reading the body: %v", err)
			}
			if string(body) != sent {
				t.Fatalf("read %d bytes, want the %d sent", len(body), len(sent))
			}
			// The capacity the runtime gives one allocation of that many bytes.
			want := cap(append([]byte(nil), make([]byte, tc.size+bytes.MinRead)...))
			if cap(body) > want {
				t.Errorf("body read into a buffer of %d bytes, want one allocation of %d (ContentLength %d + %d)", cap(body), want, tc.size, bytes.MinRead)
			}
		})
	}
}
