// Package runtimetest runs `knfaas up` as a child process for end-to-end tests.
package runtimetest

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/runtime/localhost"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// Options choose what the runtime runs.
type Options struct {
	// Paths are manifest files or folders, relative to the module root or absolute. Only these
	// are loaded (the runtime runs with --defaults=false).
	Paths []string
	// RedisURL is the Redis the runtime uses; empty runs the embedded one.
	RedisURL string
	// Idle is the scale-to-zero window (default 30s).
	Idle time.Duration
	// RedeliverAfter is how long a failed delivery waits before it is retried (default 2s).
	RedeliverAfter time.Duration
	// Args are extra flags for knfaas up.
	Args []string
	// StateDir is the runtime's persistent state directory (--state-dir: development secrets,
	// per-run directories under runs/). Empty: a new temporary one per Start, shared by its
	// restarts and removed when the test ends.
	StateDir string
}

// Runtime is one knfaas up process (and its restarts).
type Runtime struct {
	t    testing.TB
	opts Options
	root string
	addr string
	cmd  *exec.Cmd
	done chan struct{}
	out  *syncBuffer
	// launchedAt is the length of out when the latest start began.
	launchedAt int
}

var (
	buildOnce sync.Once
	binary    string
	buildErr  error
)

// ModuleRoot finds the directory holding go.mod above the working directory.
func ModuleRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatal("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Binary builds cmd/knfaas once per test binary and returns its path. With KNFAAS_RACE=1
// (serving.EnvRace) it is built with the race detector, and so are the functions it builds.
func Binary(t testing.TB) string {
	t.Helper()
	root := ModuleRoot(t)
	buildOnce.Do(func() {
		dir, err := BinaryDir("knfaas-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binary = filepath.Join(dir, "knfaas")
		args := []string{"build", "-o", binary, "./cmd/knfaas"}
		if serving.Race() {
			args = []string{"build", "-race", "-o", binary, "./cmd/knfaas"}
		}
		cmd := exec.Command("go", args...)
		cmd.Dir = root
		if serving.Race() {
			cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
		}
		if out, err := cmd.CombinedOutput(); err != nil {
			buildErr = fmt.Errorf("building knfaas: %w: %s", err, out)
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binary
}

// Start runs knfaas up and waits until it listens; it is stopped when the test ends.
func Start(t testing.TB, opts Options) *Runtime {
	t.Helper()
	if opts.Idle == 0 {
		opts.Idle = 30 * time.Second
	}
	if opts.RedeliverAfter == 0 {
		opts.RedeliverAfter = 2 * time.Second
	}
	if opts.StateDir == "" {
		// Not t.TempDir: a short path leaves room for Unix sockets in the per-run directory.
		dir, err := os.MkdirTemp("", "knfaas-state-")
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { _ = os.RemoveAll(dir) })
		opts.StateDir = dir
	}
	r := &Runtime{t: t, opts: opts, root: ModuleRoot(t), out: &syncBuffer{}}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	r.addr = l.Addr().String()
	l.Close()
	r.launch()
	t.Cleanup(func() {
		r.stop()
		r.checkRaces()
	})
	return r
}

// raceReport marks a report of the race detector in the output of the runtime or a function.
const raceReport = "WARNING: DATA RACE"

// checkRaces fails the test when the runtime or a function it ran reported a data race (they
// do when built with KNFAAS_RACE=1).
func (r *Runtime) checkRaces() {
	out := r.out.String()
	i := strings.Index(out, raceReport)
	if i < 0 {
		return
	}
	report := out[i:]
	if end := strings.Index(report, "=================="); end > 0 {
		report = report[:end]
	}
	r.t.Errorf("the runtime or a function reported %d data race(s); the first:\n%s", strings.Count(out, raceReport), report)
}

func (r *Runtime) launch() {
	r.t.Helper()
	args := []string{"up", "--defaults=false", "--addr", r.addr, "--idle", r.opts.Idle.String(), "--redeliver-after", r.opts.RedeliverAfter.String(), "--state-dir", r.opts.StateDir}
	for _, p := range r.opts.Paths {
		args = append(args, "-f", p)
	}
	args = append(args, r.opts.Args...)
	cmd := exec.Command(Binary(r.t), args...)
	cmd.Dir = r.root
	cmd.Env = append(os.Environ(), "REDIS_URL="+r.opts.RedisURL)
	cmd.Stdout, cmd.Stderr = r.out, r.out
	r.launchedAt = r.out.Len()
	if err := cmd.Start(); err != nil {
		r.t.Fatalf("starting knfaas up: %v", err)
	}
	r.cmd = cmd
	r.done = make(chan struct{})
	go func() { _ = cmd.Wait(); close(r.done) }()
	deadline := time.Now().Add(startWait())
	for {
		select {
		case <-r.done:
			r.t.Fatalf("knfaas up exited during start-up (%s):\n%s", cmd.ProcessState, r.out.String())
		default:
		}
		resp, err := http.Get("http://" + r.addr + "/healthz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == 200 {
				// Ready means announced: the addresses are printed before /healthz answers,
				// so a script (or test) that waits for it can read them at once.
				if !capabilityBase.MatchString(r.out.String()[r.launchedAt:]) {
					r.t.Fatalf("knfaas up answered /healthz before it printed its internal address:\n%s", r.out.String()[r.launchedAt:])
				}
				return
			}
		}
		if time.Now().After(deadline) {
			r.t.Fatalf("knfaas up did not listen within %s:\n%s", startWait(), r.out.String())
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// startWait bounds how long knfaas up may take to listen, building the functions included;
// race-detector builds (KNFAAS_RACE=1) compile every dependency again, instrumented, and take
// far longer on a cold build cache.
func startWait() time.Duration {
	if serving.Race() {
		return 15 * time.Minute
	}
	return 3 * time.Minute
}

func (r *Runtime) stop() {
	if r.cmd == nil {
		return
	}
	_ = r.cmd.Process.Signal(syscall.SIGINT)
	select {
	case <-r.done:
	case <-time.After(30 * time.Second):
		_ = r.cmd.Process.Kill()
		<-r.done
	}
	if r.t.Failed() {
		r.t.Logf("knfaas up output:\n%s", r.out.Tail(200))
	}
	r.cmd = nil
}

// Stop shuts the runtime down with SIGINT and waits for it.
func (r *Runtime) Stop() { r.stop() }

// Kill sends SIGKILL to the runtime (its functions die with it) and waits.
func (r *Runtime) Kill() {
	_ = r.cmd.Process.Signal(syscall.SIGKILL)
	<-r.done
	r.cmd = nil
}

// Restart starts the runtime again on the same address with the same options.
func (r *Runtime) Restart() {
	r.t.Helper()
	if r.cmd != nil {
		r.stop()
	}
	r.launch()
}

// StateDir is the runtime's persistent state directory (--state-dir).
func (r *Runtime) StateDir() string { return r.opts.StateDir }

// DevSecretsFile is the file of development secrets that knfaas up generates for the CHANGE-ME
// placeholders of the loaded Secrets (see the top README, "Local state").
func (r *Runtime) DevSecretsFile() string { return filepath.Join(r.opts.StateDir, "dev-secrets.json") }

// DevSecret returns the development secret that replaced placeholder (e.g.
// "CHANGE-ME-manager-token-000000") in key of Secret namespace/secret, and fails the test when
// there is none. Where the placeholder is the whole template value, it is the value itself.
func (r *Runtime) DevSecret(namespace, secret, key, placeholder string) string {
	r.t.Helper()
	raw, err := os.ReadFile(r.DevSecretsFile())
	if err != nil {
		r.t.Fatalf("development secrets: %v\n%s", err, r.out.Tail(50))
	}
	var file struct {
		Secrets []struct{ Namespace, Secret, Key, Placeholder, Value string }
	}
	if err := json.Unmarshal(raw, &file); err != nil {
		r.t.Fatalf("development secrets: %v", err)
	}
	for _, s := range file.Secrets {
		if s.Namespace == namespace && s.Secret == secret && s.Key == key && s.Placeholder == placeholder {
			return s.Value
		}
	}
	r.t.Fatalf("no development secret for %s in Secret %s/%s key %s", placeholder, namespace, secret, key)
	return ""
}

// Addr is host:port of the runtime.
func (r *Runtime) Addr() string { return r.addr }

// PID is the process id of the running knfaas up (0 when stopped).
func (r *Runtime) PID() int {
	if r.cmd == nil || r.cmd.Process == nil {
		return 0
	}
	return r.cmd.Process.Pid
}

var capabilityBase = regexp.MustCompile(`http://127\.0\.0\.1:[0-9]+/_knfaas/[A-Za-z0-9]+`)

// InternalBase is the base of the internal listener's capability URLs that the runtime printed
// at its latest start (http://127.0.0.1:<port>/_knfaas/<token>), or "" when it printed none.
// Cluster-local Services are at <base>/services/<namespace>/<name>.
func (r *Runtime) InternalBase() string {
	all := capabilityBase.FindAllString(r.out.String(), -1)
	if len(all) == 0 {
		return ""
	}
	return all[len(all)-1]
}

// ListeningPorts returns the TCP ports the running knfaas up process itself listens on (not
// its functions'), read from /proc; the test is skipped where there is no /proc.
func (r *Runtime) ListeningPorts() []int {
	r.t.Helper()
	pid := r.PID()
	fds, err := os.ReadDir(fmt.Sprintf("/proc/%d/fd", pid))
	if err != nil {
		r.t.Skipf("listing the runtime's sockets needs /proc: %v", err)
	}
	sockets := map[string]bool{}
	for _, fd := range fds {
		link, err := os.Readlink(fmt.Sprintf("/proc/%d/fd/%s", pid, fd.Name()))
		if err == nil && strings.HasPrefix(link, "socket:[") {
			sockets[strings.TrimSuffix(strings.TrimPrefix(link, "socket:["), "]")] = true
		}
	}
	seen := map[int]bool{}
	var ports []int
	for _, table := range []string{"tcp", "tcp6"} {
		f, err := os.Open(fmt.Sprintf("/proc/%d/net/%s", pid, table))
		if err != nil {
			continue
		}
		sc := bufio.NewScanner(f)
		for sc.Scan() {
			// sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
			fields := strings.Fields(sc.Text())
			if len(fields) < 10 || fields[3] != "0A" || !sockets[fields[9]] {
				continue
			}
			_, hexPort, _ := strings.Cut(fields[1], ":")
			if p, err := strconv.ParseInt(hexPort, 16, 32); err == nil && !seen[int(p)] {
				seen[int(p)] = true
				ports = append(ports, int(p))
			}
		}
		f.Close()
	}
	return ports
}

// InstancePIDs returns the process ids of the running instances of the Knative Service name:
// the children of knfaas up whose environment has K_SERVICE=name, read from /proc; the test is
// skipped where there is no /proc.
func (r *Runtime) InstancePIDs(name string) []int {
	r.t.Helper()
	parent := strconv.Itoa(r.PID())
	entries, err := os.ReadDir("/proc")
	if err != nil {
		r.t.Skipf("finding the instances needs /proc: %v", err)
	}
	var pids []int
	for _, e := range entries {
		pid, err := strconv.Atoi(e.Name())
		if err != nil {
			continue
		}
		stat, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
		if err != nil {
			continue // gone meanwhile
		}
		// pid (comm) state ppid …; comm may hold spaces and parentheses.
		i := bytes.LastIndex(stat, []byte(") "))
		if i < 0 {
			continue
		}
		fields := strings.Fields(string(stat[i+2:]))
		if len(fields) < 2 || fields[1] != parent {
			continue
		}
		environ, err := os.ReadFile(fmt.Sprintf("/proc/%d/environ", pid))
		if err != nil {
			continue
		}
		for _, kv := range bytes.Split(environ, []byte{0}) {
			if string(kv) == "K_SERVICE="+name {
				pids = append(pids, pid)
				break
			}
		}
	}
	return pids
}

// Output is everything the runtime printed so far.
func (r *Runtime) Output() string { return r.out.String() }

// BrokerURL is the ingress URL of a broker.
func (r *Runtime) BrokerURL(namespace, name string) string {
	return "http://" + r.addr + "/" + namespace + "/" + name
}

// ServiceURL is the public URL of a Knative Service; use Client to resolve it.
func (r *Runtime) ServiceURL(namespace, name string) string {
	_, port, _ := net.SplitHostPort(r.addr)
	return "http://" + name + "." + namespace + ".localhost:" + port
}

// Client returns an HTTP client that resolves *.localhost to loopback.
func (r *Runtime) Client() *http.Client { return localhost.Client(30 * time.Second) }

// Send posts e to a broker and fails the test unless it was accepted.
func (r *Runtime) Send(namespace, broker string, e cloudevents.Event) {
	r.t.Helper()
	if err := r.TrySend(namespace, broker, e); err != nil {
		r.t.Fatal(err)
	}
}

var (
	sendersMu sync.Mutex
	senders   = map[string]*sink.Sender{}
)

// TrySend posts e to a broker and returns an error unless it was accepted.
func (r *Runtime) TrySend(namespace, broker string, e cloudevents.Event) error {
	url := r.BrokerURL(namespace, broker)
	sendersMu.Lock()
	s, ok := senders[url]
	if !ok {
		var err error
		if s, err = sink.New(url, 10*time.Second); err != nil {
			sendersMu.Unlock()
			return err
		}
		senders[url] = s
	}
	sendersMu.Unlock()
	return s.Send(context.Background(), e)
}

// Metric returns the value of the first sample of a metric whose line starts with prefix
// (e.g. `knfaas_service_instances{namespace="e2e",service="echo"}`), or -1 if absent.
func (r *Runtime) Metric(prefix string) float64 {
	resp, err := http.Get("http://" + r.addr + "/metrics")
	if err != nil {
		return -1
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(resp.Body)
	for _, line := range strings.Split(string(body), "\n") {
		if strings.HasPrefix(line, prefix) {
			f := strings.Fields(line)
			v, err := strconv.ParseFloat(f[len(f)-1], 64)
			if err == nil {
				return v
			}
		}
	}
	return -1
}

// Eventually polls cond until it is true or the timeout passes, then fails the test.
func Eventually(t testing.TB, timeout time.Duration, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(timeout)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("%s: not true within %s", what, timeout)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// NewEvent returns a valid event with the given id and type.
func NewEvent(id, typ string) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetType(typ)
	e.SetSource("/e2e")
	_ = e.SetData("application/json", map[string]string{"id": id})
	return e
}

type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) Len() int {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Len()
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// Tail returns the last n lines.
func (b *syncBuffer) Tail(n int) string {
	lines := strings.Split(b.String(), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
