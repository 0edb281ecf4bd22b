//go:build e2e

package cli

import (
	"context"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// userModule writes an empty Go module example.com/myapp outside this repository whose go.mod
// requires what this one does (so it builds offline from the same module cache), as a user's
// application built on the platform would.
func userModule(t *testing.T, root string) string {
	t.Helper()
	dir, err := os.MkdirTemp("", "knfaas-myapp-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(dir) })
	gomod, err := os.ReadFile(filepath.Join(root, "go.mod"))
	if err != nil {
		t.Fatal(err)
	}
	requires := regexp.MustCompile(`(?ms)^require \(.*?^\)`).FindAll(gomod, -1)
	if len(requires) == 0 {
		t.Fatal("no require blocks in go.mod")
	}
	var b strings.Builder
	b.WriteString("module example.com/myapp\n\ngo 1.26.0\n")
	for _, r := range requires {
		b.WriteString("\n" + string(r) + "\n")
	}
	gosum, err := os.ReadFile(filepath.Join(root, "go.sum"))
	if err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte(b.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "go.sum"), gosum, 0o644); err != nil {
		t.Fatal(err)
	}
	return dir
}

// TestFunctionsOfAnotherModule: knfaas new function --dir scaffolds into a user's own module
// (its ko:// path is example.com/myapp/functions/greeter), knfaas verify -f accepts it, and
// knfaas up -f builds it in that module's directory and runs it: the function handles an event.
func TestFunctionsOfAnotherModule(t *testing.T) {
	root := runtimetest.ModuleRoot(t)
	app := userModule(t, root)
	t.Chdir(root)

	out, err := runCLI(t, "new", "function", "greeter", "--dir", app)
	if err != nil {
		t.Fatalf("new function --dir: %v\n%s", err, out)
	}
	manifest, err := os.ReadFile(filepath.Join(app, "config", "700-greeter.yaml"))
	if err != nil || !strings.Contains(string(manifest), "image: ko://example.com/myapp/functions/greeter") {
		t.Fatalf("the scaffolded Service does not name the module's import path (%v):\n%s", err, manifest)
	}
	if out, err := runCLI(t, "verify", "-f", app); err != nil {
		t.Fatalf("verify -f %s: %v\n%s", app, err, out)
	}

	state, err := os.MkdirTemp("", "knfaas-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(state) })
	rt := runtimetest.Start(t, runtimetest.Options{StateDir: state, Paths: []string{
		"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/400-deadletter-config.yaml", "config/600-broker.yaml",
		"config/500-redis-service.yaml", "config/510-redis-statefulset.yaml", "config/700-deadletter.yaml", app,
	}})
	if !strings.Contains(rt.Output(), "module example.com/myapp: its ko:// paths are built in "+app) {
		t.Errorf("up does not say where it builds the module:\n%s", rt.Output())
	}
	t.Logf("knfaas up:\n%s", rt.Output())
	var ep embedded.Endpoints
	for deadline := time.Now().Add(30 * time.Second); ; {
		if ep, err = embedded.Discover(filepath.Join(state, embedded.RunsDir), ""); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no discovery record: %v\n%s", err, rt.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if out, err := runCLI(t, "send", "--type", "dev.knfaas.greeter.requested", "--id", "own-1", "--state-dir", state); err != nil {
		t.Fatalf("send: %v\n%s\n%s", err, out, rt.Output())
	}
	rdb, err := redisconn.New(ep.RedisURL, redisconn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	key := "knfaas:greeter:seen:/knfaas/cli\x00own-1"
	runtimetest.Eventually(t, 90*time.Second, "the function of the other module handled the event", func() bool {
		n, err := rdb.Exists(context.Background(), key).Result()
		return err == nil && n == 1
	})
	// Its own logging.go set it up as the platform's functions are: the line names the function.
	runtimetest.Eventually(t, 10*time.Second, "the function's handled line, naming it", func() bool {
		return hasFunctionLine(rt.Output(), "greeter", "handled", "own-1")
	})
}
