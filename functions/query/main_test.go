package main

import (
	"context"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/harness/maintest"
)

func TestMain(m *testing.M) { maintest.Run(m, main) }

// templateTokens are the lines of config/330-query-auth-secret.yaml as shipped.
const templateTokens = "dashboard:stock-readers:CHANGE-ME-dashboard-token-000\n" +
	"buyer:purchasing:CHANGE-ME-buyer-token-0000000000\n"

// startCases are configurations Start must refuse, each with what the error must name.
func startCases(t *testing.T) map[string]startCase {
	file := filepath.Join(t.TempDir(), "tokens")
	if err := os.WriteFile(file, []byte(templateTokens), 0o600); err != nil {
		t.Fatal(err)
	}
	return map[string]startCase{
		"template tokens file": {env: map[string]string{"AUTH_TOKENS_FILE": file},
			want: []string{"AUTH_TOKENS_FILE " + file, `token "dashboard" holds the template placeholder "CHANGE-ME-dashboard-token-000"`, `token "buyer"`}},
		"template inline token": {env: map[string]string{"AUTH_TOKENS": "buyer:purchasing:CHANGE-ME-buyer-token-0000000000"},
			want: []string{"AUTH_TOKENS", `token "buyer" holds the template placeholder`}},
		"no read models": {unset: []string{"QUERY_MODELS"}, want: []string{"QUERY_MODELS"}},
	}
}

type startCase struct {
	env   map[string]string // set over baseEnv
	unset []string          // removed from it
	want  []string          // fragments the error must hold
}

// environ returns the case's variables over baseEnv as KEY=value lines.
func (c startCase) environ() []string {
	env := baseEnv()
	for k, v := range c.env {
		env[k] = v
	}
	for _, k := range c.unset {
		delete(env, k)
	}
	out := make([]string, 0, len(env))
	for k, v := range env {
		out = append(out, k+"="+v)
	}
	return out
}

// baseEnv is a configuration Start accepts; each case overrides part of it.
func baseEnv() map[string]string {
	return map[string]string{
		"QUERY_MODELS":     "stock:stock-readers",
		"AUTH_TOKENS":      "dashboard:stock-readers:" + readerToken,
		"AUTH_TOKENS_FILE": "",
		"AUTH_OIDC_ISSUER": "",
		"REDIS_URL":        "redis://127.0.0.1:1",
	}
}

func TestStartRefusesBadConfiguration(t *testing.T) {
	for name, tc := range startCases(t) {
		t.Run(name, func(t *testing.T) {
			for _, kv := range tc.environ() {
				k, v, _ := strings.Cut(kv, "=")
				t.Setenv(k, v)
			}
			for _, k := range tc.unset {
				t.Setenv(k, "") // restored after the test
				os.Unsetenv(k)
			}
			f := New()
			err := f.Start(context.Background(), nil)
			if err == nil {
				_ = f.Stop(context.Background())
				t.Fatal("Start accepted a bad configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not name %q", err, w)
				}
			}
		})
	}
}

// TestMainExitsNonZeroWhenStartFails runs the real main (func-go and all) with each bad
// configuration: it must exit non-zero and say what is wrong, so that the platform reports the
// revision as failed instead of running it.
func TestMainExitsNonZeroWhenStartFails(t *testing.T) {
	for name, tc := range startCases(t) {
		t.Run(name, func(t *testing.T) {
			var env []string
			for _, kv := range os.Environ() {
				if k, _, _ := strings.Cut(kv, "="); !slices.Contains(tc.unset, k) {
					env = append(env, kv)
				}
			}
			out := maintest.FailingOutput(t, env, tc.environ()...)
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output does not name %q:\n%s", w, out)
				}
			}
		})
	}
}
