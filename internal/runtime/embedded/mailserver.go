package embedded

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"syscall"
	"time"
)

// EnvSMTPURL names the SMTP server a function sends mail through. Under knfaas up, every function
// whose manifest sets it gets the run's server instead: the one SMTP_URL names in knfaas up's own
// environment, or else a Mailpit started by the run, whose web UI shows every mail sent.
const EnvSMTPURL = "SMTP_URL"

// MailpitModule is the folder, relative to the module directory, of the Go module that pins
// Mailpit: its own go.mod, so that Mailpit's dependencies stay out of the platform's.
const MailpitModule = "hack/mailpit"

// mailpitPackage is the Mailpit command that module builds.
const mailpitPackage = "github.com/axllent/mailpit"

// mailServer is the run's SMTP server.
type mailServer struct {
	// url replaces SMTP_URL in every function that sets it.
	url string
	// mailpit is the Mailpit the run started; nil for the server SMTP_URL names.
	mailpit *Mailpit
}

// Mailpit is a running Mailpit.
type Mailpit struct {
	// SMTPAddr is its SMTP listener (no TLS, any or no credentials accepted).
	SMTPAddr string
	// UI is its web UI and HTTP API (GET /api/v1/messages).
	UI   string
	cmd  *exec.Cmd
	done chan struct{}
}

// SMTPURL is the SMTP_URL that sends through it.
func (m *Mailpit) SMTPURL() string { return "smtp://" + m.SMTPAddr + "?tls=none" }

// usesMailServer reports whether a function of the plan sets SMTP_URL.
func usesMailServer(p *Plan) bool {
	for _, s := range p.Services {
		for _, kv := range s.Spec.Env {
			if strings.HasPrefix(kv, EnvSMTPURL+"=") {
				return true
			}
		}
	}
	return false
}

// mailServerNotes says in the plan which SMTP server the functions that set SMTP_URL will use.
func mailServerNotes(p *Plan) []string {
	switch {
	case !usesMailServer(p):
		return nil
	case os.Getenv(EnvSMTPURL) != "":
		return []string{"smtp: the server SMTP_URL names stands in for the SMTP_URL of every function"}
	}
	return []string{"smtp: Mailpit, built from " + MailpitModule + " (cached) and started by the run on loopback, stands in for the SMTP_URL of every function; its web UI shows every mail sent; set SMTP_URL to use a real server"}
}

// openMailServerAsync runs openMailServer in the background; the function it returns waits for
// it and returns its error.
func (r *Runtime) openMailServerAsync(ctx context.Context) func() error {
	done := make(chan error, 1)
	go func() { done <- r.openMailServer(ctx) }()
	return func() error { return <-done }
}

// openMailServer starts Mailpit, or takes the server SMTP_URL names, when a function sends mail,
// and says where it is.
func (r *Runtime) openMailServer(ctx context.Context) error {
	if !usesMailServer(r.plan) {
		return nil
	}
	if u := os.Getenv(EnvSMTPURL); u != "" {
		r.mail = &mailServer{url: u}
		fmt.Fprintln(r.opts.Out, "smtp: the server SMTP_URL names")
		return nil
	}
	start := time.Now()
	fmt.Fprintf(r.opts.Out, "smtp: building Mailpit from %s (cached after the first run) …\n", MailpitModule)
	bin, err := BuildMailpit(ctx, r.opts.ModuleDir, r.opts.CacheDir)
	if err != nil {
		return fmt.Errorf("smtp: %w; set SMTP_URL to use another SMTP server", err)
	}
	smtpAddr, err := freeLoopbackPort()
	if err != nil {
		return fmt.Errorf("smtp: finding a port for Mailpit's SMTP: %w", err)
	}
	uiAddr, err := freeLoopbackPort()
	if err != nil {
		return fmt.Errorf("smtp: finding a port for Mailpit's web UI: %w", err)
	}
	m, err := StartMailpit(ctx, bin, smtpAddr, uiAddr, r.opts.FunctionLogs)
	if err != nil {
		return fmt.Errorf("smtp: %w; set SMTP_URL to use another SMTP server", err)
	}
	r.mail = &mailServer{url: m.SMTPURL(), mailpit: m}
	fmt.Fprintf(r.opts.Out, "smtp: Mailpit on %s (ready in %s) — every mail the functions send is in its web UI at %s; set SMTP_URL to use a real server\n",
		m.SMTPAddr, time.Since(start).Round(100*time.Millisecond), m.UI)
	return nil
}

// mailpitBinary is where the Mailpit of the module at moduleDir/MailpitModule is cached: one
// binary per content of that module's go.mod and go.sum.
func mailpitBinary(moduleDir, cacheDir string) (string, error) {
	h := sha256.New()
	for _, f := range []string{"go.mod", "go.sum"} {
		b, err := os.ReadFile(filepath.Join(moduleDir, MailpitModule, f))
		if err != nil {
			return "", fmt.Errorf("reading the Mailpit module: %w", err)
		}
		h.Write(b)
	}
	return filepath.Join(cacheDir, "mailpit-"+hex.EncodeToString(h.Sum(nil))[:16]), nil
}

// BuildMailpit builds Mailpit from the module at moduleDir/MailpitModule into cacheDir, once per
// content of that module's go.mod and go.sum, and returns the binary.
func BuildMailpit(ctx context.Context, moduleDir, cacheDir string) (string, error) {
	bin, err := mailpitBinary(moduleDir, cacheDir)
	if err != nil {
		return "", err
	}
	if _, err := os.Stat(bin); err == nil {
		return bin, nil
	}
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return "", fmt.Errorf("creating the build cache: %w", err)
	}
	// Built under a temporary name, then renamed: a build cut short leaves no binary behind.
	tmp := fmt.Sprintf("%s.%d.tmp", bin, os.Getpid())
	cmd := exec.CommandContext(ctx, "go", "build", "-o", tmp, mailpitPackage)
	cmd.Dir = filepath.Join(moduleDir, MailpitModule)
	// The module's own go.mod, never a workspace: its dependencies stay its own.
	cmd.Env = append(os.Environ(), "GOWORK=off", "CGO_ENABLED=0")
	if out, err := cmd.CombinedOutput(); err != nil {
		_ = os.Remove(tmp)
		return "", fmt.Errorf("building Mailpit in %s: %w\n%s", MailpitModule, err, out)
	}
	if err := os.Rename(tmp, bin); err != nil {
		return "", fmt.Errorf("caching Mailpit: %w", err)
	}
	return bin, nil
}

// freeLoopbackPort finds a TCP port free on 127.0.0.1.
func freeLoopbackPort() (string, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return "", err
	}
	defer l.Close()
	return l.Addr().String(), nil
}

// StartMailpit runs the Mailpit binary with SMTP on smtpAddr (no TLS, any or no credentials
// accepted) and its web UI and HTTP API on uiAddr, messages in a temporary database (lost on
// exit), and waits until its HTTP API answers. Its output goes to logs. It dies with the process
// that started it.
func StartMailpit(ctx context.Context, bin, smtpAddr, uiAddr string, logs io.Writer) (*Mailpit, error) {
	if logs == nil {
		logs = io.Discard
	}
	cmd := exec.Command(bin, "--smtp", smtpAddr, "--listen", uiAddr, "--quiet", "--disable-version-check",
		"--smtp-auth-accept-any", "--smtp-auth-allow-insecure", "--max", "5000")
	cmd.Stdout, cmd.Stderr = logs, logs
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true, Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting Mailpit: %w", err)
	}
	m := &Mailpit{SMTPAddr: smtpAddr, UI: "http://" + uiAddr, cmd: cmd, done: make(chan struct{})}
	go func() { _ = cmd.Wait(); close(m.done) }()
	deadline := time.Now().Add(30 * time.Second)
	client := &http.Client{Timeout: 2 * time.Second}
	for {
		resp, err := client.Get(m.UI + "/readyz")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return m, nil
			}
		}
		select {
		case <-m.done:
			return nil, errors.New("mailpit exited at start (see the function logs)")
		case <-ctx.Done():
			m.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			m.Close()
			return nil, fmt.Errorf("mailpit did not answer on %s within 30s", m.UI)
		}
	}
}

// Close stops Mailpit and waits until it exited.
func (m *Mailpit) Close() {
	if m == nil || m.cmd == nil || m.cmd.Process == nil {
		return
	}
	_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGTERM)
	select {
	case <-m.done:
	case <-time.After(5 * time.Second):
		_ = syscall.Kill(-m.cmd.Process.Pid, syscall.SIGKILL)
		<-m.done
	}
}

// withMailServer gives a function that sets SMTP_URL the run's server.
func (r *Runtime) withMailServer(env []string) []string {
	if r.mail == nil {
		return env
	}
	i := slices.IndexFunc(env, func(kv string) bool { return strings.HasPrefix(kv, EnvSMTPURL+"=") })
	if i >= 0 {
		env[i] = EnvSMTPURL + "=" + r.mail.url
	}
	return env
}

// closeMailServer stops the run's Mailpit, if any.
func (r *Runtime) closeMailServer() {
	if r.mail != nil {
		r.mail.mailpit.Close()
	}
}
