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
	"os/exec"
	"strconv"
	"sync"
	"syscall"
	"time"
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
	// MinScale instances are kept running; MaxScale bounds them (0 means DefaultMaxScale).
	MinScale, MaxScale int
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

// DefaultMaxScale bounds instances when a Service sets no max-scale.
const DefaultMaxScale = 10

// Observer is told about scaling events (metrics).
type Observer interface {
	ColdStart(namespace, name string, d time.Duration)
	SetInstances(namespace, name string, n int)
}

// Service is the activator and autoscaler of one Knative Service.
type Service struct {
	spec   Spec
	log    *slog.Logger
	obs    Observer
	proxy  *httputil.ReverseProxy
	nextID int

	mu        sync.Mutex
	instances []*instance
	waiting   int
	changed   chan struct{}
	closed    bool
	lastErr   error
	lastErrAt time.Time
}

type instance struct {
	id       int
	port     int
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
}

type instanceKey struct{}

// NewService returns a Service; call Run to keep min-scale and reap idle instances.
func NewService(spec Spec, log *slog.Logger, obs Observer) *Service {
	if spec.StartTimeout == 0 {
		spec.StartTimeout = 30 * time.Second
	}
	if spec.MaxScale <= 0 {
		spec.MaxScale = DefaultMaxScale
	}
	if spec.Logs == nil {
		spec.Logs = io.Discard
	}
	s := &Service{spec: spec, log: log.With("service", spec.Namespace+"/"+spec.Name), obs: obs, changed: make(chan struct{})}
	transport := http.DefaultTransport.(*http.Transport).Clone()
	transport.MaxIdleConns = 1024
	transport.MaxIdleConnsPerHost = 256
	transport.DialContext = (&net.Dialer{Timeout: time.Second, KeepAlive: 30 * time.Second}).DialContext
	s.proxy = &httputil.ReverseProxy{
		Rewrite: func(pr *httputil.ProxyRequest) {
			target := pr.In.Context().Value(instanceKey{}).(*proxyTarget)
			inst := target.inst
			if target.body != nil {
				// An in-memory body lets the transport send headers and body in one write.
				pr.Out.Body = io.NopCloser(bytes.NewReader(target.body))
				pr.Out.ContentLength = int64(len(target.body))
			}
			pr.Out.URL.Scheme = "http"
			pr.Out.URL.Host = "127.0.0.1:" + strconv.Itoa(inst.port)
			pr.Out.Host = pr.In.Host
			pr.SetXForwarded()
		},
		Transport: transport,
		ErrorHandler: func(w http.ResponseWriter, r *http.Request, err error) {
			if errors.Is(r.Context().Err(), context.DeadlineExceeded) {
				http.Error(w, fmt.Sprintf("request to %s/%s exceeded its timeout of %s", spec.Namespace, spec.Name, spec.Timeout), http.StatusGatewayTimeout)
				return
			}
			s.log.Warn("proxying request failed", "error", err)
			http.Error(w, fmt.Sprintf("instance of %s/%s failed: %v", spec.Namespace, spec.Name, err), http.StatusBadGateway)
		},
	}
	return s
}

// Name is namespace/name.
func (s *Service) Name() string { return s.spec.Namespace + "/" + s.spec.Name }

// ServeHTTP routes the request to an instance, starting one when none has room and max-scale
// allows, or queueing until one has room.
func (s *Service) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	ctx := r.Context()
	if s.spec.Timeout > 0 {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, s.spec.Timeout)
		defer cancel()
	}
	inst, err := s.acquire(ctx)
	if err != nil {
		status := http.StatusServiceUnavailable
		if errors.Is(err, context.DeadlineExceeded) {
			status = http.StatusGatewayTimeout
		}
		http.Error(w, err.Error(), status)
		return
	}
	defer s.release(inst)
	target := &proxyTarget{inst: inst, body: bufferSmallBody(r)}
	s.proxy.ServeHTTP(w, r.WithContext(context.WithValue(ctx, instanceKey{}, target)))
}

// maxBufferedBody is the largest request body read into memory before it is forwarded.
const maxBufferedBody = 1 << 20

// proxyTarget is what ServeHTTP hands the proxy: the instance, and the body when buffered.
type proxyTarget struct {
	inst *instance
	body []byte
}

// bufferSmallBody reads a small body of known length into memory, so that the forwarded
// request goes out in one write instead of headers and body apart: on loopback each write is
// a system call, and most events are a few hundred bytes. It returns nil for other bodies,
// which are streamed.
func bufferSmallBody(r *http.Request) []byte {
	if r.Body == nil || r.Body == http.NoBody || r.ContentLength <= 0 || r.ContentLength > maxBufferedBody {
		return nil
	}
	buf := make([]byte, r.ContentLength)
	n, err := io.ReadFull(r.Body, buf)
	_ = r.Body.Close()
	if err != nil {
		// Forward what arrived; the instance sees the same short body the client sent.
		buf = buf[:n]
	}
	r.Body = io.NopCloser(bytes.NewReader(buf))
	r.ContentLength = int64(len(buf))
	return buf
}

func (s *Service) capacity() int {
	if s.spec.ContainerConcurrency > 0 {
		return s.spec.ContainerConcurrency
	}
	return DefaultTargetConcurrency
}

// broadcastLocked wakes every waiter.
func (s *Service) broadcastLocked() {
	close(s.changed)
	s.changed = make(chan struct{})
}

func (s *Service) acquire(ctx context.Context) (*instance, error) {
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

func (s *Service) live() int {
	n := 0
	for _, in := range s.instances {
		if !in.draining {
			n++
		}
	}
	return n
}

func (s *Service) release(in *instance) {
	s.mu.Lock()
	in.inflight--
	in.lastUsed = time.Now()
	s.broadcastLocked()
	s.mu.Unlock()
}

// startLocked launches an instance; readiness is awaited in the background.
func (s *Service) startLocked() *instance {
	s.nextID++
	in := &instance{id: s.nextID, exited: make(chan struct{}), settled: make(chan struct{}), lastUsed: time.Now()}
	s.instances = append(s.instances, in)
	s.obs.SetInstances(s.spec.Namespace, s.spec.Name, len(s.instances))
	go s.runInstance(in)
	return in
}

// Warm starts n instances and waits until each is ready, as Knative brings a new revision up
// to its initial scale before the Service is Ready. The first instance that fails to start
// fails Warm with the cause. Idle instances are stopped later by Run, min-scale permitting.
func (s *Service) Warm(n int) error {
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

func (s *Service) runInstance(in *instance) {
	log := s.log.With("instance", in.id)
	err := s.launch(in)
	if err == nil {
		err = s.awaitReady(in)
	}
	if err != nil {
		log.Error("instance failed to start", "error", err)
		if in.cmd != nil && in.cmd.Process != nil {
			_ = syscall.Kill(-in.cmd.Process.Pid, syscall.SIGKILL)
			<-in.exited
		}
		s.mu.Lock()
		s.lastErr = fmt.Errorf("service %s: %w", s.Name(), err)
		s.lastErrAt = time.Now()
		in.err = s.lastErr
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

func (s *Service) removeLocked(in *instance) {
	for i, x := range s.instances {
		if x == in {
			s.instances = append(s.instances[:i], s.instances[i+1:]...)
			break
		}
	}
	s.obs.SetInstances(s.spec.Namespace, s.spec.Name, len(s.instances))
	s.broadcastLocked()
}

func (s *Service) launch(in *instance) error {
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
	in.cmd = cmd
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
	return nil
}

var readinessClient = &http.Client{Timeout: time.Second, Transport: &http.Transport{DisableKeepAlives: true}}

func (s *Service) awaitReady(in *instance) error {
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

func (s *Service) readinessTarget() string {
	if s.spec.ReadinessPath == "" {
		return "its TCP port"
	}
	return s.spec.ReadinessPath
}

func (s *Service) probe(addr string) bool {
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
func (s *Service) Run(ctx context.Context) {
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

func (s *Service) reconcile() {
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
			go terminate(in, 10*time.Second)
		}
	}
}

func terminate(in *instance, grace time.Duration) {
	if in.cmd == nil || in.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-in.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-in.exited:
	case <-time.After(grace):
		_ = syscall.Kill(-in.cmd.Process.Pid, syscall.SIGKILL)
		<-in.exited
	}
}

func (s *Service) stopAll() {
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
		go func() { defer wg.Done(); terminate(in, 10*time.Second) }()
	}
	wg.Wait()
}

// Instances returns the number of running or starting instances.
func (s *Service) Instances() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.instances)
}

// PIDs returns the process ids of the instances (for tests and fault injection).
func (s *Service) PIDs() []int {
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

var _ http.Handler = (*Service)(nil)
