// Package dataplanetest builds the RedisStreamBroker data plane's binaries and runs them as
// processes for tests.
package dataplanetest

import (
	"bytes"
	"fmt"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

var (
	buildOnce sync.Once
	binaries  map[string]string
	buildErr  error
)

// Binaries builds cmd/broker-ingress and cmd/broker-dispatcher once per test binary,
// with the race detector when KNFAAS_RACE=1.
func Binaries(t testing.TB) map[string]string {
	t.Helper()
	root := runtimetest.ModuleRoot(t)
	buildOnce.Do(func() {
		dir, err := runtimetest.BinaryDir("knfaas-broker-e2e-")
		if err != nil {
			buildErr = err
			return
		}
		binaries = map[string]string{}
		for _, mode := range []string{brokerclass.ModeIngress, brokerclass.ModeDispatcher} {
			bin := filepath.Join(dir, "broker-"+mode)
			args := []string{"build", "-o", bin}
			if serving.Race() {
				args = append(args, "-race")
			}
			cmd := exec.Command("go", append(args, "./cmd/broker-"+mode)...)
			cmd.Dir = root
			if serving.Race() {
				cmd.Env = append(os.Environ(), "CGO_ENABLED=1")
			}
			if out, err := cmd.CombinedOutput(); err != nil {
				buildErr = fmt.Errorf("building broker-%s: %w: %s", mode, err, out)
				return
			}
			binaries[mode] = bin
		}
	})
	if buildErr != nil {
		t.Fatal(buildErr)
	}
	return binaries
}

type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}

func (l *lockedBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.String()
}

// Process is a data plane process; it is stopped with SIGTERM when the test ends unless killed.
type Process struct {
	name string
	cmd  *exec.Cmd
	out  *lockedBuffer
	done chan struct{}
}

func Start(t testing.TB, name, bin string, env map[string]string) *Process {
	t.Helper()
	p := &Process{name: name, cmd: exec.Command(bin), out: &lockedBuffer{}, done: make(chan struct{})}
	p.cmd.Env = os.Environ()
	for k, v := range env {
		p.cmd.Env = append(p.cmd.Env, k+"="+v)
	}
	p.cmd.Stdout, p.cmd.Stderr = p.out, p.out
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	go func() { _ = p.cmd.Wait(); close(p.done) }()
	t.Cleanup(func() {
		_ = p.cmd.Process.Signal(syscall.SIGTERM)
		select {
		case <-p.done:
		case <-time.After(30 * time.Second):
			_ = p.cmd.Process.Kill()
			<-p.done
		}
		if strings.Contains(p.out.String(), "WARNING: DATA RACE") {
			t.Errorf("%s reported a data race:\n%s", name, p.out.String())
		}
		if t.Failed() {
			t.Logf("%s output:\n%s", name, tail(p.out.String(), 40))
		}
	})
	return p
}

// Kill ends the process with SIGKILL.
func (p *Process) Kill(t testing.TB) {
	t.Helper()
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	<-p.done
}

func tail(s string, n int) string {
	lines := strings.Split(s, "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// WaitReady waits until the process serving on addr answers its readiness check.
func WaitReady(t testing.TB, addr string) {
	t.Helper()
	runtimetest.Eventually(t, time.Minute, addr+" ready", func() bool {
		resp, err := http.Get("http://" + addr + brokerclass.ReadinessPath)
		if err != nil {
			return false
		}
		resp.Body.Close()
		return resp.StatusCode == http.StatusOK
	})
}
