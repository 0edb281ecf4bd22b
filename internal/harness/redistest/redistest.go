// Package redistest starts and stops real redis-server processes for tests.
package redistest

import (
	"bufio"
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// Options select how the server is started.
type Options struct {
	// AOF turns on the append-only file with fsync on every write, so a kill -9 loses nothing
	// that was acknowledged.
	AOF bool
	// Password sets requirepass.
	Password string
}

// Server is one redis-server child process owned by a test.
type Server struct {
	t    testing.TB
	opts Options
	dir  string
	port int
	cmd  *exec.Cmd
}

// Start launches redis-server on a free loopback port in a temporary directory and stops it
// when the test ends. A missing redis-server fails the test: hack/test.sh installs it.
func Start(t testing.TB, opts Options) *Server {
	t.Helper()
	if _, err := exec.LookPath("redis-server"); err != nil {
		t.Fatalf("redis-server not found on PATH (./hack/test.sh installs it): %v", err)
	}
	s := &Server{t: t, opts: opts, dir: t.TempDir(), port: freePort(t)}
	s.launch()
	t.Cleanup(s.stop)
	return s
}

// Addr is host:port of the server.
func (s *Server) Addr() string { return net.JoinHostPort("127.0.0.1", strconv.Itoa(s.port)) }

// URL is a redis:// URL for the server, with its password.
func (s *Server) URL() string {
	if s.opts.Password != "" {
		return fmt.Sprintf("redis://:%s@%s/0", s.opts.Password, s.Addr())
	}
	return fmt.Sprintf("redis://%s/0", s.Addr())
}

// Client returns a new client closed at the end of the test.
func (s *Server) Client() *redis.Client {
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.opts.Password})
	s.t.Cleanup(func() { _ = c.Close() })
	return c
}

// Kill sends SIGKILL and waits for the process to exit.
func (s *Server) Kill() {
	s.t.Helper()
	if s.cmd == nil {
		return
	}
	_ = s.cmd.Process.Signal(syscall.SIGKILL)
	_ = s.cmd.Wait()
	s.cmd = nil
}

// Stop sends SIGSTOP: the server keeps its connections open but answers nothing, as a hung
// Redis does, until Cont. The test's cleanup resumes it before stopping it.
func (s *Server) Stop() {
	s.t.Helper()
	s.signal(syscall.SIGSTOP)
}

// Cont sends SIGCONT to a server paused by Stop.
func (s *Server) Cont() {
	s.t.Helper()
	s.signal(syscall.SIGCONT)
}

func (s *Server) signal(sig syscall.Signal) {
	s.t.Helper()
	if s.cmd == nil {
		s.t.Fatalf("redis-server on %s is not running", s.Addr())
	}
	if err := s.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("sending %v to redis-server: %v", sig, err)
	}
}

// Restart kills the server and starts it again on the same port and data directory.
func (s *Server) Restart() {
	s.t.Helper()
	s.Kill()
	s.launch()
}

func (s *Server) launch() {
	s.t.Helper()
	args := []string{
		"--port", strconv.Itoa(s.port), "--bind", "127.0.0.1", "--dir", s.dir,
		"--save", "", "--daemonize", "no", "--protected-mode", "no", "--logfile", "redis.log",
	}
	if s.opts.AOF {
		args = append(args, "--appendonly", "yes", "--appendfsync", "always")
	}
	if s.opts.Password != "" {
		args = append(args, "--requirepass", s.opts.Password)
	}
	cmd := exec.Command("redis-server", args...)
	cmd.Dir = s.dir
	if err := cmd.Start(); err != nil {
		s.t.Fatalf("starting redis-server: %v", err)
	}
	s.cmd = cmd
	deadline := time.Now().Add(10 * time.Second)
	c := redis.NewClient(&redis.Options{Addr: s.Addr(), Password: s.opts.Password, MaxRetries: -1})
	defer c.Close()
	// A refused connection (not listening yet) and a LOADING reply (still reading the AOF)
	// both mean "not yet"; anything else that persists to the deadline is reported.
	var err error
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 200*time.Millisecond)
		err = c.Ping(ctx).Err()
		cancel()
		if err == nil {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	state := "not answering"
	if redis.IsLoadingError(err) {
		state = "still loading its data"
	}
	s.t.Fatalf("redis-server on %s %s after 10s (%v); log:\n%s", s.Addr(), state, err, s.logTail())
}

func (s *Server) stop() {
	if s.cmd == nil {
		return
	}
	// A server paused by Stop would not act on SIGTERM.
	_ = s.cmd.Process.Signal(syscall.SIGCONT)
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(5 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	s.cmd = nil
}

func (s *Server) logTail() string {
	f, err := os.Open(filepath.Join(s.dir, "redis.log"))
	if err != nil {
		return err.Error()
	}
	defer f.Close()
	var lines []string
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		lines = append(lines, sc.Text())
		if len(lines) > 20 {
			lines = lines[1:]
		}
	}
	return strings.Join(lines, "\n")
}

func freePort(t testing.TB) int {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatalf("finding a free port: %v", err)
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port
}
