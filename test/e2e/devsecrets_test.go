//go:build e2e

package e2e

import (
	"io"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

var devSecret = regexp.MustCompile(`^[0-9a-f]{64}$`)

// echoGet asks the echo function for an env value (/env?name=) or a file (/file?path=).
func echoGet(t *testing.T, rt *runtimetest.Runtime, path, param, value string) string {
	t.Helper()
	resp, err := rt.Client().Get(rt.ServiceURL("e2e", "echo") + path + "?" + param + "=" + url.QueryEscape(value))
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	b, _ := io.ReadAll(resp.Body)
	if resp.StatusCode != http.StatusOK {
		t.Fatalf("GET %s %s=%s: %d %s", path, param, value, resp.StatusCode, b)
	}
	return string(b)
}

type echoed struct{ token, plain, redisURL, tokensFile, tokens string }

func echoSecrets(t *testing.T, rt *runtimetest.Runtime) echoed {
	t.Helper()
	e := echoed{
		token:      echoGet(t, rt, "/env", "name", "TOKEN"),
		plain:      echoGet(t, rt, "/env", "name", "PLAIN"),
		redisURL:   echoGet(t, rt, "/env", "name", "REDIS_URL"),
		tokensFile: echoGet(t, rt, "/env", "name", "TOKENS_FILE"),
	}
	e.tokens = echoGet(t, rt, "/file", "path", e.tokensFile)
	return e
}

// TestDevelopmentSecretsAndLocalState runs template Secrets under knfaas up: placeholders become
// development secrets that stay the same across runs with one state directory; a crash
// (SIGKILL) leaves the projected secrets of its run behind and the next start removes them; a
// clean exit removes the per-run part and keeps the development secrets.
func TestDevelopmentSecretsAndLocalState(t *testing.T) {
	rt := runtimetest.Start(t, runtimetest.Options{Paths: []string{"test/e2e/testdata/devsecrets"}})
	runs := filepath.Join(rt.StateDir(), "runs")
	first := echoSecrets(t, rt)

	token := rt.DevSecret("e2e", "template", "token", "CHANGE-ME-e2e-token")
	manager := rt.DevSecret("e2e", "template", "tokens", "CHANGE-ME-manager-token-000000")
	tests := []struct{ name, got, want string }{
		{name: "a whole-value placeholder is the development secret", got: first.token, want: token},
		{name: "a placeholder inside a projected file", got: first.tokens, want: "manager:managers:" + manager + "\n"},
		{name: "a value without placeholder is unchanged", got: first.plain, want: "not-a-placeholder"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
	for _, v := range []string{token, manager} {
		if !devSecret.MatchString(v) {
			t.Errorf("development secret %q is not 64 hex characters", v)
		}
	}
	for _, v := range []string{first.token, first.tokens, first.redisURL} {
		if strings.Contains(v, "CHANGE-ME") {
			t.Errorf("a function got a placeholder: %q", v)
		}
	}
	if !strings.HasPrefix(first.redisURL, "redis://127.0.0.1:") {
		t.Errorf("REDIS_URL = %q, want the runtime's Redis standing in for the Service", first.redisURL)
	}
	if !strings.Contains(rt.Output(), "development secrets: "+rt.DevSecretsFile()) {
		t.Errorf("start-up does not say where the development secrets are:\n%s", rt.Output())
	}
	if fi, err := os.Stat(rt.DevSecretsFile()); err != nil || fi.Mode().Perm() != 0o600 {
		t.Errorf("development secrets file: %v (%v), want mode 0600", fi, err)
	}
	if !strings.HasPrefix(first.tokensFile, runs+string(filepath.Separator)) {
		t.Fatalf("projected secret %s is not under the per-run directory %s", first.tokensFile, runs)
	}
	rel, _ := filepath.Rel(runs, first.tokensFile) // <run>/e2e/echo/volumes/auth/tokens
	crashedRun := filepath.Join(runs, strings.Split(rel, string(filepath.Separator))[0])

	// A crash leaves the run's projected secrets behind ...
	rt.Kill()
	if _, err := os.Stat(first.tokensFile); err != nil {
		t.Fatalf("after SIGKILL the projected secret should still be there (the crash case): %v", err)
	}
	// ... and the next start removes them, with the same development secrets.
	rt.Restart()
	if _, err := os.Stat(first.tokensFile); !os.IsNotExist(err) {
		t.Errorf("the crashed run's projected secret survived the next start: %v", err)
	}
	if !strings.Contains(rt.Output(), "removed "+crashedRun+": left by a run that did not exit cleanly") {
		t.Errorf("start-up does not say it removed %s:\n%s", crashedRun, rt.Output())
	}
	second := echoSecrets(t, rt)
	if second.token != first.token || second.tokens != first.tokens {
		t.Errorf("development secrets changed across runs: %q/%q, then %q/%q", first.token, first.tokens, second.token, second.tokens)
	}

	// A clean exit removes the per-run part and keeps the persistent part.
	rt.Stop()
	left, err := os.ReadDir(runs)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("after a clean exit %s holds %v", runs, left)
	}
	rt.Restart()
	if third := echoSecrets(t, rt); third.token != first.token {
		t.Errorf("development secret changed after a clean exit: %q, then %q", first.token, third.token)
	}
}
