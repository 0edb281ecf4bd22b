package main

import (
	"os"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/harness/maintest"
)

func TestMain(m *testing.M) { maintest.Run(m, main) }

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
			env := append([]string{
				"WEBHOOK_SOURCES_FILE=testdata/sources.yaml", "K_SINK=http://127.0.0.1:1", "REDIS_URL=redis://127.0.0.1:1",
				"GITHUB_WEBHOOK_SECRET=" + githubSecret, "GITHUB_WEBHOOK_SECRET_PREVIOUS=", "STRIPE_WEBHOOK_SECRET=" + stripeSecret,
				"SLACK_SIGNING_SECRET=" + slackSecret, "SVIX_WEBHOOK_SECRET=" + svixSecret, "SHOP_WEBHOOK_SECRET=" + shopSecret}, tc.env...)
			out := maintest.FailingOutput(t, os.Environ(), env...)
			if !strings.Contains(out, tc.want) {
				t.Fatalf("output does not say %q:\n%s", tc.want, out)
			}
		})
	}
}
