//go:build e2e

package cli

import (
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// TestScaffoldRunsUnderUp: a function scaffolded by `knfaas new function` passes verify and
// runs under knfaas up unchanged; send finds the running up through its discovery record (no
// address given) and the function handles the event; once up is killed, the record is stale
// and send says so.
func TestScaffoldRunsUnderUp(t *testing.T) {
	root := runtimetest.ModuleRoot(t)
	const domain = "e2escaffold"
	example := filepath.Join(root, "examples", domain)
	_ = os.RemoveAll(example) // left by an interrupted run of this test
	t.Cleanup(func() { _ = os.RemoveAll(example) })
	t.Chdir(root)

	if out, err := runCLI(t, "new", "function", "hello", "--example", domain); err != nil {
		t.Fatalf("new function: %v\n%s", err, out)
	}
	if out, err := runCLI(t, "verify", "-f", "config", "-f", "triggers", "-f", "examples/"+domain); err != nil {
		t.Fatalf("verify: %v\n%s", err, out)
	}

	state, err := os.MkdirTemp("", "knfaas-state-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(state) })
	rt := runtimetest.Start(t, runtimetest.Options{StateDir: state, Paths: []string{
		"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/400-deadletter-config.yaml", "config/600-broker.yaml",
		"config/500-redis-service.yaml", "config/510-redis-statefulset.yaml", "config/700-deadletter.yaml", "examples/" + domain,
	}})
	runs := filepath.Join(state, embedded.RunsDir)
	var ep embedded.Endpoints
	for deadline := time.Now().Add(30 * time.Second); ; {
		if ep, err = embedded.Discover(runs, ""); err == nil {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("no discovery record: %v\n%s", err, rt.Output())
		}
		time.Sleep(100 * time.Millisecond)
	}
	if ep.Addr != rt.Addr() || ep.PID != rt.PID() || !strings.HasPrefix(ep.Internal, "http://127.0.0.1:") {
		t.Fatalf("record %+v; want addr %s, pid %d", ep, rt.Addr(), rt.PID())
	}

	typ := "dev.knfaas.example." + domain + ".hello.requested"
	if out, err := runCLI(t, "send", "--type", typ, "--id", "e2e-1", "--state-dir", state); err != nil {
		t.Fatalf("send: %v\n%s\n%s", err, out, rt.Output())
	}
	rdb, err := redisconn.New(ep.RedisURL, redisconn.Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer rdb.Close()
	key := "knfaas:hello:seen:/knfaas/cli\x00e2e-1"
	for deadline := time.Now().Add(90 * time.Second); ; {
		n, err := rdb.Exists(context.Background(), key).Result()
		if err == nil && n == 1 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the scaffolded function did not handle the event (key %q: %d, %v):\n%s", key, n, err, rt.Output())
		}
		time.Sleep(200 * time.Millisecond)
	}
	// Its main set up logging as every function's does: its "handled" line names the function
	// in the format up gave it (LOG_FORMAT), with the event's id.
	runtimetest.Eventually(t, 10*time.Second, "the scaffolded function's handled line, naming it", func() bool {
		return hasFunctionLine(rt.Output(), "hello", "handled", "e2e-1")
	})

	rt.Kill()
	_, err = runCLI(t, "send", "--type", typ, "--state-dir", state)
	if err == nil || !strings.Contains(err.Error(), "stale record") || !strings.Contains(err.Error(), "is gone") {
		t.Fatalf("send after kill: %v, want the stale record named", err)
	}
}

// hasFunctionLine says whether output holds a log line of function (its function attribute,
// in JSON or text) whose message is msg and that mentions id.
func hasFunctionLine(output, function, msg, id string) bool {
	for line := range strings.Lines(output) {
		json := strings.Contains(line, `"function":"`+function+`"`) && strings.Contains(line, `"msg":"`+msg+`"`)
		text := strings.Contains(line, "function="+function) && strings.Contains(line, "msg="+msg)
		if (json || text) && strings.Contains(line, id) {
			return true
		}
	}
	return false
}
