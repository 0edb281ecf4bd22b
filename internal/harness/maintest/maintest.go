// Package maintest runs a function's real main in a child test process, so that a test can watch what the deployed binary does: its exit code and log when Start fails, and what it does when stopped.
package maintest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"os"
	"os/exec"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"
)

// runMainEnv makes the test binary run the function's main instead of the tests.
const runMainEnv = "KNFAAS_TEST_RUN_MAIN"

// Run is the body of a function's TestMain: in the child that FailingOutput starts it runs main,
// and otherwise the tests.
func Run(m *testing.M, main func()) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0) // main returned: the exit code the real binary would have
	}
	os.Exit(m.Run())
}

// FailingOutput runs main in a child with the environment base, then LISTEN_ADDRESS on a free
// port, then extra (KEY=value lines; exec uses the last value of a variable listed twice), and
// returns what it printed, followed by the msg and error of each JSON log line decoded (a JSON
// line escapes the quotes a test may look for). It fails t unless main exits non-zero.
func FailingOutput(t *testing.T, base []string, extra ...string) string {
	t.Helper()
	// A safety net only: a main that keeps serving instead of exiting is killed here.
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
	cmd.Env = append(append(base[:len(base):len(base)], runMainEnv+"=1", "LISTEN_ADDRESS=127.0.0.1:0"), extra...)
	out, err := cmd.CombinedOutput()
	var exit *exec.ExitError
	if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
		t.Fatalf("main ended with %v, want a non-zero exit; output:\n%s", err, out)
	}
	return string(out) + decodedLogLines(string(out))
}

// decodedLogLines returns the msg and error fields of the JSON log lines in out, one per line.
func decodedLogLines(out string) string {
	var b strings.Builder
	for _, line := range strings.Split(out, "\n") {
		var record map[string]any
		if json.Unmarshal([]byte(line), &record) != nil {
			continue
		}
		for _, field := range []string{"msg", "error"} {
			if v, ok := record[field].(string); ok {
				b.WriteString(v + "\n")
			}
		}
	}
	return b.String()
}

// Child is a function's main running in a child test process, serving on Addr.
type Child struct {
	Addr string
	cmd  *exec.Cmd
	out  *syncBuffer
	done chan error
}

// Serve runs main in a child with the environment base, then LISTEN_ADDRESS on a free port,
// then extra, and returns once the port accepts connections. The child is killed when the test
// ends if it is still running.
func Serve(t *testing.T, base []string, extra ...string) *Child {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	c := &Child{Addr: addr, out: &syncBuffer{}, done: make(chan error, 1)}
	c.cmd = exec.Command(os.Args[0], "-test.run=^$")
	c.cmd.Env = append(append(base[:len(base):len(base)], runMainEnv+"=1", "LISTEN_ADDRESS="+addr), extra...)
	c.cmd.Stdout, c.cmd.Stderr = c.out, c.out
	if err := c.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { c.done <- c.cmd.Wait() }()
	t.Cleanup(func() { _ = c.cmd.Process.Kill() })
	deadline := time.Now().Add(30 * time.Second)
	for {
		conn, err := net.DialTimeout("tcp", addr, 100*time.Millisecond)
		if err == nil {
			conn.Close()
			return c
		}
		select {
		case err := <-c.done:
			t.Fatalf("main exited (%v) before it listened; output:\n%s", err, c.out.String())
		default:
		}
		if time.Now().After(deadline) {
			t.Fatalf("main did not listen on %s within 30s; output:\n%s", addr, c.out.String())
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// Terminate sends SIGTERM, as the platform does to stop an instance, and returns what main
// printed and how it ended (nil: exit code 0). It fails t if main has not exited within 30 s.
func (c *Child) Terminate(t *testing.T) (output string, exit error) {
	t.Helper()
	if err := c.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-c.done:
		return c.out.String(), err
	case <-time.After(30 * time.Second):
		t.Fatalf("main did not exit within 30s of SIGTERM; output:\n%s", c.out.String())
		return "", nil
	}
}

type syncBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.b.String()
}
