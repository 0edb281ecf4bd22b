package main

import (
	"context"
	"errors"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// runMainEnv makes the test binary run the function's main instead of the tests, so that a
// test can watch what the deployed binary does when Start fails: its exit code and its log.
const runMainEnv = "KNFAAS_TEST_RUN_MAIN"

func TestMain(m *testing.M) {
	if os.Getenv(runMainEnv) == "1" {
		main()
		os.Exit(0) // main returned: the exit code the real binary would have
	}
	os.Exit(m.Run())
}

// TestMainExitsNonZeroWhenStartFails runs the real main (func-go and all) with a template
// secret: it must exit non-zero and say which variable is wrong, so that the platform reports
// the revision as failed instead of running it.
func TestMainExitsNonZeroWhenStartFails(t *testing.T) {
	tests := map[string]struct {
		env  []string
		want string
	}{
		"template github secret": {[]string{"GITHUB_WEBHOOK_SECRET=CHANGE-ME-github-webhook-secret"}, "GITHUB_WEBHOOK_SECRET holds the template placeholder"},
		"no sources file":        {[]string{"WEBHOOK_SOURCES_FILE="}, "WEBHOOK_SOURCES_FILE"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			// A safety net only: a main that keeps serving instead of exiting is killed here.
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, os.Args[0], "-test.run=^$")
			cmd.Env = append(os.Environ(), runMainEnv+"=1", "LISTEN_ADDRESS=127.0.0.1:0",
				"WEBHOOK_SOURCES_FILE=testdata/sources.yaml", "K_SINK=http://127.0.0.1:1", "REDIS_URL=redis://127.0.0.1:1",
				"GITHUB_WEBHOOK_SECRET="+githubSecret, "GITHUB_WEBHOOK_SECRET_PREVIOUS=", "STRIPE_WEBHOOK_SECRET="+stripeSecret,
				"SLACK_SIGNING_SECRET="+slackSecret, "SVIX_WEBHOOK_SECRET="+svixSecret, "SHOP_WEBHOOK_SECRET="+shopSecret)
			cmd.Env = append(cmd.Env, tc.env...)
			out, err := cmd.CombinedOutput()
			var exit *exec.ExitError
			if !errors.As(err, &exit) || exit.ExitCode() <= 0 {
				t.Fatalf("main ended with %v, want a non-zero exit; output:\n%s", err, out)
			}
			if !strings.Contains(string(out), tc.want) {
				t.Fatalf("output does not say %q:\n%s", tc.want, out)
			}
		})
	}
}
