// Package maintest runs a function's real main in a child test process, so that a test can watch what the deployed binary does when Start fails: its exit code and its log.
package maintest

import (
	"context"
	"encoding/json"
	"errors"
	"os"
	"os/exec"
	"strings"
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
