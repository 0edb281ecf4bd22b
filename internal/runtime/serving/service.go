// Package serving runs Knative Services as local processes: cold start on demand, a bounded
// request queue in front of each (containerConcurrency, max-scale), scale to zero when idle.
package serving

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httputil"
	"os"
	"os/exec"
	"strconv"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// DefaultTargetConcurrency is the in-flight requests per instance at which another instance is
// started when containerConcurrency is 0 (unlimited), as Knative's autoscaler default.
const DefaultTargetConcurrency = 100

// Spec is what the runtime needs to run one Knative Service.
type Spec struct {
	Namespace string
	Name      string
	// Binary is the executable; Env its environment (KEY=VALUE), without the listen address,
	// which each instance gets on its own.
	Binary string
	Env    []string
	// Dir is the working directory of instances.
	Dir string
	// ReadinessPath is the HTTP path polled until it answers 200; empty means a TCP connect.
	ReadinessPath string
	// ContainerConcurrency is the hard limit of in-flight requests per instance; 0 is unlimited.
	ContainerConcurrency int
	// MinScale instances are kept running (autoscaling.knative.dev/min-scale).
	MinScale int
	// MaxScale bounds the instances (autoscaling.knative.dev/max-scale); 0 or less means
	// defaultMaxScale, 10 instances (see EffectiveMaxScale).
	MaxScale int
	// InitialScale is how many instances Warm starts (autoscaling.knative.dev/initial-scale).
	InitialScale int
	// Timeout bounds each request, queueing included (timeoutSeconds).
	Timeout time.Duration
	// IdleTimeout is how long an instance may serve nothing before it is stopped.
	IdleTimeout time.Duration
	// StartTimeout bounds exec → ready.
	StartTimeout time.Duration
	// Logs receives the instances' output, one line at a time, prefixed with the instance.
	Logs io.Writer
}

// defaultMaxScale bounds instances when a Service sets no max-scale.
const defaultMaxScale = 10

// EffectiveMaxScale is the bound of instances: MaxScale, or 10 when MaxScale is not set.
func (s Spec) EffectiveMaxScale() int {
	if s.MaxScale <= 0 {
		return defaultMaxScale
	}
	return s.MaxScale
}

// Observer is told about scaling events (metrics).
type Observer interface {
	ColdStart(namespace, name string, d time.Duration)
	SetInstances(namespace, name string, n int)
}

// RequestObserver is told about every request a Service answered (its RED metrics): the
// CloudEvent type of a binary-mode event ("" otherwise), the HTTP status, the time from arrival
// to the end of the answer, and the trace id of the sampled trace the request belongs to ("" for
// none). A Pool whose Observer is also a RequestObserver tells it.
type RequestObserver interface {
	ObserveRequest(namespace, name, eventType string, status int, d time.Duration, traceID string)
}

// Pool is the activator and autoscaler of one Knative Service: the instances that serve it
// and the queue in front of them.
type Pool struct {
	spec Spec
	log  *slog.Logger
	obs  Observer
	// requests is obs as a RequestObserver, nil when it is not one.
	requests RequestObserver
	proxy    *httputil.ReverseProxy
	// transport reaches the instances, for the proxy and for in-process requests.
	transport *http.Transport
	nextID    int
	// buffered is the bytes of request bodies held in memory, up to bufferBudget.
	buffered     atomic.Int64
	bufferBudget int64

	mu        sync.Mutex
	instances []*instance
	waiting   int
	changed   chan struct{}
	closed    bool
	lastErr   error
	lastErrAt time.Time
}

type instance struct {
	id   int
	port int
	// cmd is set under Pool.mu once the process has started, so that stopAll either sees it
	// or the launch sees the instance draining.
	cmd      *exec.Cmd
	started  time.Time
	ready    bool
	draining bool
	inflight int
	lastUsed time.Time
	exited   chan struct{}
	// settled is closed once the instance is ready or has failed to start (err set).
	settled chan struct{}
	err     error
	// gone is closed once the instance has been removed and its process has exited.
	gone chan struct{}
}

type instanceKey struct{}

// NewPool returns a Pool; call Run to keep min-scale and reap idle instances.
func NewPool(spec Spec, log *slog.Logger, obs Observer) *Pool {
	if spec.StartTimeout == 0 {
		spec.StartTimeout = 30 * time.Second
	}
	spec.MaxScale = spec.EffectiveMaxScale()
	if spec.Logs == nil {
		spec.Logs = io.Discard
	}
	s := &Pool{spec: spec, log: log.With("service", spec.Namespace+"/"+spec.Name), obs: obs, changed: make(chan struct{}), bufferBudget: maxBufferedBytes}
	s.requests, _ = obs.(RequestObserver)
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = 1024
	transport.MaxIdleConnsPerHost = 256
	transport.DialContext = (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext
	// Below the 30 s func-go's servers keep an idle connection, so the activator drops an idle
	// connection before an instance closes it.
	transport.IdleConnTimeout = 20 * time.Second
	s.transport = transport
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			target := pr.In.Context().Value(instanceKey{}).(*proxyTarget)
			inst := target.inst
			if target.body != nil {
				// An in-memory body lets the transport send headers and body in one write.
				body := target.body
				pr.Out.Body = io.NopCloser(bytes.NewReader(body))
				pr.Out.ContentLength = int64(len(body))
				// The transport may resend a request that a closing keep-alive connection lost.
				pr.Out.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
			}
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "127.0.0.1:" + strconv.Itoa(inst.port)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport:  transport,
		BufferPool: copyBuffers,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			_ = http.NewResponseController(w).SetWriteDeadline(time.Now().Add(errorWriteTimeout))
			if d, ok := r.Context().Deadline(); ok && !time.Now().Before(d) {
				http.Error(w, fmt.Sprintf("request to %s/%s exceeded its timeout of %s", spec.Namespace, spec.Name, spec.Timeout), http.StatusGatewayTimeout)
				return
			}
			s.log.Warn("proxying request failed", "error", err)
			http.Error(w, fmt.Sprintf("instance of %s/%s failed: %v", spec.Namespace, spec.Name, err), http.StatusBadGateway)
		},
	}
	return s
}

// copyBufferSize is the size of the buffers the reverse proxy copies answers through, that of
// the buffer it allocates for each answer when it has no BufferPool.
const copyBufferSize = 32 << 10

// copyBufferPool is an httputil.BufferPool that reuses the proxy's copy buffers across requests
// and Services instead of allocating (and zeroing) one per answer. It keeps only buffers of
// copyBufferSize, and only those idle since the last garbage collections (sync.Pool drops the
// rest), so it holds about as many as are in use at once.
type copyBufferPool struct{ pool sync.Pool }

// copyBuffers serves every Pool's reverse proxy.
var copyBuffers = &copyBufferPool{pool: sync.Pool{New: func() any { return new([copyBufferSize]byte) }}}

// Get implements httputil.BufferPool.
func (p *copyBufferPool) Get() []byte { return p.pool.Get().(*[copyBufferSize]byte)[:] }

// Put implements httputil.BufferPool; a buffer of another size is left to the collector.
func (p *copyBufferPool) Put(b []byte) {
	if cap(b) != copyBufferSize {
		return
	}
	p.pool.Put((*[copyBufferSize]byte)(b[:copyBufferSize]))
}

var _ httputil.BufferPool = copyBuffers

// Name is namespace/name.
func (s *Pool) Name() string { return s.spec.Namespace + "/" + s.spec.Name }

// ServeHTTP routes the request to an instance, starting one when none has room and max-scale
// allows, or queueing until one has room.
//
// The Service's timeout (timeoutSeconds) bounds the whole request, queueing included: reading
// its body, waiting for a slot, and the instance's answer. A body of up to maxBufferedBody bytes
// is read before the request takes a slot, so a client that never finishes sending holds no
// instance; it is answered 504 when the timeout passes, as Knative's queue-proxy answers a
// request that did not complete within timeoutSeconds, and its connection is closed.
func (s *Pool) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if s.requests != nil {
		began := time.Now()
		eventType, traceID := r.Header.Get("Ce-Type"), sampledTraceID(r.Header)
		rec := &statusRecorder{ResponseWriter: w}
		w = rec
		defer func() {
			s.requests.ObserveRequest(s.spec.Namespace, s.spec.Name, eventType, rec.statusCode(), time.Since(began), traceID)
		}()
	}
	rc := http.NewResponseController(w)
	ctx, deadline, cancel := s.withTimeout(r.Context())
	defer cancel()
	if !deadline.IsZero() {
		// A client that does not read the answer cannot hold the slot past the timeout either.
		// The server resets the write deadline for the next request only when it has a
		// WriteTimeout: clear it on return.
		if rc.SetWriteDeadline(deadline) == nil {
			defer func() { _ = rc.SetWriteDeadline(time.Time{}) }()
		}
	}
	body, reserved, err := s.readBody(ctx, rc, r, deadline)
	defer s.buffered.Add(-reserved)
	if err != nil {
		// The rest of the body is unread: the connection cannot carry another request.
		w.Header().Set("Connection", "close")
		s.fail(w, rc, err)
		return
	}
	inst, err := s.acquire(ctx)
	if err != nil {
		s.fail(w, rc, err)
		return
	}
	defer s.release(inst)
	target := &proxyTarget{inst: inst, body: body}
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, instanceKey{}, target)))
}

// withTimeout bounds ctx by the Service's timeout (timeoutSeconds), when it has one, and
// returns the deadline (zero without one).
func (s *Pool) withTimeout(ctx context.Context) (context.Context, time.Time, context.CancelFunc) {
	if s.spec.Timeout <= 0 {
		return ctx, time.Time{}, func() {}
	}
	deadline := time.Now().Add(s.spec.Timeout)
	ctx, cancel := context.WithDeadline(ctx, deadline)
	return ctx, deadline, cancel
}

// sampledTraceID is the trace id of the sampled trace context h carries (the traceparent header,
// else a binary-mode CloudEvent's ce-traceparent), "" when it carries none: an exemplar should
// name a trace that was recorded.
func sampledTraceID(h http.Header) string {
	if h.Get(tracing.HeaderTraceParent) == "" && h.Get("Ce-Traceparent") == "" {
		return ""
	}
	sc := trace.SpanContextFromContext(tracing.Propagator().Extract(context.Background(), propagation.HeaderCarrier(h)))
	if !sc.IsValid() || !sc.IsSampled() {
		return ""
	}
	return sc.TraceID().String()
}

// statusRecorder remembers the status of the answer; Unwrap lets http.ResponseController (and
// the reverse proxy's flushes) reach the connection's own writer.
type statusRecorder struct {
	http.ResponseWriter
	status int
}

// WriteHeader implements http.ResponseWriter; informational (1xx) headers are not the status.
func (w *statusRecorder) WriteHeader(code int) {
	if w.status == 0 && code >= 200 {
		w.status = code
	}
	w.ResponseWriter.WriteHeader(code)
}

// Write implements http.ResponseWriter.
func (w *statusRecorder) Write(b []byte) (int, error) {
	if w.status == 0 {
		w.status = http.StatusOK
	}
	return w.ResponseWriter.Write(b)
}

// Unwrap returns the wrapped writer, for http.ResponseController.
func (w *statusRecorder) Unwrap() http.ResponseWriter { return w.ResponseWriter }

// statusCode is the status answered, 200 when the handler wrote nothing (net/http's default).
func (w *statusRecorder) statusCode() int {
	if w.status == 0 {
		return http.StatusOK
	}
	return w.status
}

// errorWriteTimeout bounds writing an error answer once the request's own deadline has passed.
const errorWriteTimeout = 5 * time.Second

// fail answers a request that did not reach an instance: 504 when its timeout passed (while its
// body was arriving or while it queued), 413 for a body over a limit set in front of the
// Service, 400 for a body that broke off, 503 otherwise (no instance could start, shutting down).
func (s *Pool) fail(w http.ResponseWriter, rc *http.ResponseController, err error) {
	status := http.StatusServiceUnavailable
	var mbe *http.MaxBytesError
	var bodyErr *bodyError
	switch {
	case errors.Is(err, context.DeadlineExceeded), errors.Is(err, os.ErrDeadlineExceeded):
		status = http.StatusGatewayTimeout
	case errors.As(err, &mbe):
		status = http.StatusRequestEntityTooLarge
	case errors.As(err, &bodyErr):
		status = http.StatusBadRequest
	}
	_ = rc.SetWriteDeadline(time.Now().Add(errorWriteTimeout))
	http.Error(w, err.Error(), status)
}

// maxBufferedBody is the largest request body read into memory before the request takes a
// slot; larger bodies are streamed to the instance, still within the Service's timeout.
const maxBufferedBody = 1 << 20

// maxBufferedBytes bounds the bodies one Service holds in memory at once; requests beyond it
// stream their bodies, as larger ones do.
const maxBufferedBytes = 64 << 20

// proxyTarget is what ServeHTTP hands the proxy: the instance, and the body when buffered.
type proxyTarget struct {
	inst *instance
	body []byte
}

// bodyError is a request body that ended before its Content-Length or failed to arrive for a
// reason other than the timeout.
type bodyError struct {
	read int
	err  error
}

func (e *bodyError) Error() string {
	return fmt.Sprintf("reading the request body (%d bytes arrived): %v", e.read, e.err)
}

func (e *bodyError) Unwrap() error { return e.err }

// readBody reads a body of up to maxBufferedBody bytes into memory before the request takes a
// slot; it also lets the forwarded request go out in one write instead of headers and body
// apart (on loopback each write is a system call, and most events are a few hundred bytes).
// It returns the body, or nil when the request has none or streams it, and the bytes it
// reserved of the Service's buffer budget, which the caller gives back.
//
// The connection's read deadline becomes the request's deadline, so a stalled body, buffered
// or streamed, is cut off when the timeout passes (the server clears the deadline once the body
// has been read). Should the ResponseWriter not support deadlines, the read runs aside and the
// request stops waiting for it when ctx ends.
func (s *Pool) readBody(ctx context.Context, rc *http.ResponseController, r *http.Request, deadline time.Time) ([]byte, int64, error) {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength == 0 {
		return nil, 0, nil
	}
	inline := true
	if !deadline.IsZero() {
		inline = rc.SetReadDeadline(deadline) == nil
	}
	if r.ContentLength > maxBufferedBody {
		return nil, 0, nil
	}
	reserve := r.ContentLength
	if reserve < 0 { // chunked: as much as may be buffered
		reserve = maxBufferedBody
	}
	if s.buffered.Add(reserve) > s.bufferBudget {
		s.buffered.Add(-reserve)
		return nil, 0, nil
	}
	read := func() ([]byte, error) {
		var buf bytes.Buffer
		if r.ContentLength > 0 {
			// Room for the whole body and the read that finds its end: one allocation, where
			// ReadFrom alone grows the buffer from 512 bytes.
			buf.Grow(int(r.ContentLength) + bytes.MinRead)
		}
		_, err := buf.ReadFrom(io.LimitReader(r.Body, maxBufferedBody+1))
		return buf.Bytes(), err
	}
	var buf []byte
	var err error
	if inline {
		buf, err = read()
	} else {
		done := make(chan struct{})
		go func() { buf, err = read(); close(done) }()
		select {
		case <-done:
		case <-ctx.Done():
			return nil, reserve, fmt.Errorf("the request body did not arrive within the timeout of %s (%s): %w", s.Name(), s.spec.Timeout, ctx.Err())
		}
	}
	if err != nil {
		var mbe *http.MaxBytesError
		switch {
		case errors.Is(err, os.ErrDeadlineExceeded):
			return nil, reserve, fmt.Errorf("the request body did not arrive within the timeout of %s (%s): %w", s.Name(), s.spec.Timeout, err)
		case errors.As(err, &mbe):
			return nil, reserve, err
		}
		return nil, reserve, &bodyError{read: len(buf), err: err}
	}
	if len(buf) > maxBufferedBody {
		// A chunked body longer than may be buffered: stream what arrived, then the rest.
		r.Body = struct {
			io.Reader
			io.Closer
		}{io.MultiReader(bytes.NewReader(buf), r.Body), r.Body}
		return nil, reserve, nil
	}
	r.Body = io.NopCloser(bytes.NewReader(buf))
	r.ContentLength = int64(len(buf))
	return buf, reserve, nil
}

func (s *Pool) capacity() int {
	if s.spec.ContainerConcurrency > 0 {
		return s.spec.ContainerConcurrency
	}
	return DefaultTargetConcurrency
}

// broadcastLocked wakes every waiter.
func (s *Pool) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Pool) acquire(ctx context.Context) (*instance, error) {
	began := time.Now()
	s.mu.Lock()
	for {
		if s.closed {
			s.mu.Unlock()
			return nil, fmt.Errorf("service %s is shutting down", s.Name())
		}
		var best *instance
		starting := 0
		for _, in := range s.instances {
			if in.draining {
				continue
			}
			if !in.ready {
				starting++
				continue
			}
			if best == nil || in.inflight < best.inflight {
				best = in
			}
		}
		room := best != nil && (best.inflight < s.capacity())
		if best != nil && (room || (s.spec.ContainerConcurrency == 0 && len(s.instances) >= s.spec.MaxScale)) {
			best.inflight++
			best.lastUsed = time.Now()
			s.mu.Unlock()
			return best, nil
		}
		// An instance that failed to start after this request arrived fails the request, rather
		// than restarting in a loop until the timeout.
		if best == nil && starting == 0 && s.lastErr != nil && s.lastErrAt.After(began) {
			err := s.lastErr
			s.mu.Unlock()
			return nil, err
		}
		// No room: start an instance when the ones already starting cannot take the waiters.
		if s.live() < s.spec.MaxScale && s.waiting >= starting*s.capacity() {
			s.startLocked()
		}
		ch := s.changed
		s.waiting++
		s.mu.Unlock()
		select {
		case <-ch:
		case <-ctx.Done():
			s.mu.Lock()
			s.waiting--
			s.mu.Unlock()
			return nil, fmt.Errorf("no instance of %s had room before the request timed out: %w", s.Name(), ctx.Err())
		}
		s.mu.Lock()
		s.waiting--
	}
}

func (s *Pool) live() int {
	n := 0
	for _, in := range s.instances {
		if !in.draining {
			n++
		}
	}
	return n
}

func (s *Pool) release(in *instance) {
	s.mu.Lock()
	in.inflight--
	in.lastUsed = time.Now()
	s.broadcastLocked()
	s.mu.Unlock()
}

// startLocked launches an instance; readiness is awaited in the background.
func (s *Pool) startLocked() *instance {
	s.nextID++
	in := &instance{id: s.nextID, exited: make(chan struct{}), settled: make(chan struct{}), gone: make(chan struct{}), lastUsed: time.Now()}
	s.instances = append(s.instances, in)
	s.obs.SetInstances(s.spec.Namespace, s.spec.Name, len(s.instances))
	go s.runInstance(in)
	return in
}

// Warm starts n instances and waits until each is ready, as Knative brings a new revision up
// to its initial scale before the Service is Ready. The first instance that fails to start
// fails Warm with the cause. Idle instances are stopped later by Run, min-scale permitting.
func (s *Pool) Warm(n int) error {
	s.mu.Lock()
	started := make([]*instance, 0, n)
	for i := 0; i < n; i++ {
		started = append(started, s.startLocked())
	}
	s.mu.Unlock()
	for _, in := range started {
		<-in.settled
		if in.err != nil {
			return in.err
		}
	}
	return nil
}

func (s *Pool) runInstance(in *instance) {
	defer close(in.gone)
	log := s.log.With("instance", in.id)
	err := s.launch(in)
	if err == nil {
		err = s.awaitReady(in)
	}
	if err != nil {
		if in.cmd != nil && in.cmd.Process != nil {
			_ = syscall.Kill(-in.cmd.Process.Pid, syscall.SIGKILL)
			<-in.exited
		}
		s.mu.Lock()
		in.err = fmt.Errorf("service %s: %w", s.Name(), err)
		if in.draining {
			log.Debug("instance stopped while starting")
		} else {
			log.Error("instance failed to start", "error", err)
			s.lastErr, s.lastErrAt = in.err, time.Now()
		}
		close(in.settled)
		s.removeLocked(in)
		s.mu.Unlock()
		return
	}
	d := time.Since(in.started)
	s.obs.ColdStart(s.spec.Namespace, s.spec.Name, d)
	log.Info("instance ready", "port", in.port, "startup", d.Round(time.Microsecond))
	s.mu.Lock()
	in.ready = true
	s.lastErr = nil
	close(in.settled)
	s.broadcastLocked()
	s.mu.Unlock()

	<-in.exited
	s.mu.Lock()
	if !in.draining && !s.closed {
		log.Warn("instance exited unexpectedly; it will be replaced on demand", "state", in.cmd.ProcessState.String())
	}
	s.removeLocked(in)
	s.mu.Unlock()
}

func (s *Pool) removeLocked(in *instance) {
	for i, x := range s.instances {
		if x == in {
			s.instances = append(s.instances[:i], s.instances[i+1:]...)
			break
		}
	}
	s.obs.SetInstances(s.spec.Namespace, s.spec.Name, len(s.instances))
	s.broadcastLocked()
}

func (s *Pool) launch(in *instance) error {
	port, err := freePort()
	if err != nil {
		return err
	}
	in.port = port
	addr := "127.0.0.1:" + strconv.Itoa(port)
	cmd := exec.Command(s.spec.Binary)
	cmd.Dir = s.spec.Dir
	cmd.Env = append(append([]string{}, s.spec.Env...), "LISTEN_ADDRESS="+addr, "PORT="+strconv.Itoa(port))
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	out, err := cmd.StdoutPipe()
	if err != nil {
		return err
	}
	cmd.Stderr = cmd.Stdout
	in.started = time.Now()
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting %s: %w", s.spec.Binary, err)
	}
	s.mu.Lock()
	in.cmd = cmd
	stopping := in.draining
	s.mu.Unlock()
	prefix := fmt.Sprintf("[%s-%d] ", s.Name(), in.id)
	go func() {
		sc := bufio.NewScanner(out)
		sc.Buffer(make([]byte, 64*1024), 1024*1024)
		for sc.Scan() {
			fmt.Fprintln(s.spec.Logs, prefix+sc.Text())
		}
		_ = cmd.Wait()
		close(in.exited)
	}()
	if stopping {
		// stopAll (or scale-down) marked the instance before its process existed, so it could
		// not stop it: runInstance kills it on this error.
		return errors.New("stopped while starting")
	}
	return nil
}

var readinessClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func (s *Pool) awaitReady(in *instance) error {
	deadline := time.Now().Add(s.spec.StartTimeout)
	addr := "127.0.0.1:" + strconv.Itoa(in.port)
	delay := time.Millisecond
	for {
		select {
		case <-in.exited:
			return fmt.Errorf("instance exited before it became ready (%s)", in.cmd.ProcessState.String())
		default:
		}
		if s.probe(addr) {
			return nil
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("instance did not become ready on %s within %s", s.readinessTarget(), s.spec.StartTimeout)
		}
		time.Sleep(delay)
		if delay < 20*time.Millisecond {
			delay += delay / 2
		}
	}
}

func (s *Pool) readinessTarget() string {
	if s.spec.ReadinessPath == "" {
		return "its TCP port"
	}
	return s.spec.ReadinessPath
}

func (s *Pool) probe(addr string) bool {
	if s.spec.ReadinessPath == "" {
		c, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err != nil {
			return false
		}
		_ = c.Close()
		return true
	}
	resp, err := readinessClient.Get("http://" + addr + s.spec.ReadinessPath)
	if err != nil {
		return false
	}
	_, _ = io.Copy(io.Discard, resp.Body)
	_ = resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// Run keeps min-scale instances and stops idle ones until ctx ends, then stops every instance.
func (s *Pool) Run(ctx context.Context) {
	tick := s.spec.IdleTimeout / 4
	if tick < 50*time.Millisecond {
		tick = 50 * time.Millisecond
	}
	if tick > time.Second {
		tick = time.Second
	}
	t := time.NewTicker(tick)
	defer t.Stop()
	for {
		s.reconcile()
		select {
		case <-ctx.Done():
			s.stopAll()
			return
		case <-t.C:
		}
	}
}

func (s *Pool) reconcile() {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.closed {
		return
	}
	for s.live() < s.spec.MinScale {
		s.startLocked()
	}
	live := s.live()
	for _, in := range s.instances {
		if live <= s.spec.MinScale {
			break
		}
		if in.ready && !in.draining && in.inflight == 0 && s.waiting == 0 && time.Since(in.lastUsed) >= s.spec.IdleTimeout {
			in.draining = true
			live--
			s.log.Info("scaling down idle instance", "instance", in.id, "idle", time.Since(in.lastUsed).Round(time.Millisecond))
			go s.terminate(in, 10*time.Second)
		}
	}
}

// terminate stops an instance marked draining: SIGTERM, then SIGKILL after grace. An instance
// whose process has not started yet is killed by its launch, which sees it draining; terminate
// waits for that.
func (s *Pool) terminate(in *instance, grace time.Duration) {
	s.mu.Lock()
	cmd := in.cmd
	s.mu.Unlock()
	if cmd == nil {
		<-in.settled
		return
	}
	_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-in.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL)
		<-in.exited
	}
}

// stopAll stops every instance, starting ones included, and returns once all are gone.
func (s *Pool) stopAll() {
	s.mu.Lock()
	s.closed = true
	all := append([]*instance(nil), s.instances...)
	for _, in := range all {
		in.draining = true
	}
	s.broadcastLocked()
	s.mu.Unlock()
	var wg sync.WaitGroup
	for _, in := range all {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s.terminate(in, 10*time.Second)
			<-in.gone
		}()
	}
	wg.Wait()
}

// Instances returns the number of running or starting instances.
func (s *Pool) Instances() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.instances)
}

// PIDs returns the process ids of the instances (for tests and fault injection).
func (s *Pool) PIDs() []int {
	s.mu.Lock()
	defer s.mu.Unlock()
	var pids []int
	for _, in := range s.instances {
		if in.cmd != nil && in.cmd.Process != nil {
			pids = append(pids, in.cmd.Process.Pid)
		}
	}
	return pids
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, fmt.Errorf("finding a free port: %w", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

var _ http.Handler = (*Pool)(nil)
