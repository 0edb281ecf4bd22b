package cli

import (
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/webhook/signature"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// TestSignWebhook: each provider's delivery verifies with the webhook function's own verifier
// for that scheme, and fails with another secret.
func TestSignWebhook(t *testing.T) {
	const secret = "s3cret"
	const svixSecret = "whsec_c2VjcmV0LWtleS1vZi0yNC1ieXRlcyEh"
	key, err := signature.DecodeStandardSecret(svixSecret)
	if err != nil {
		t.Fatal(err)
	}
	now := time.Unix(1_780_000_000, 0)
	tests := []struct {
		provider string
		secret   string
		verifier func(secret []byte) signature.Verifier
		key      []byte
	}{
		{"github", secret, func(s []byte) signature.Verifier { return &signature.GitHub{Secrets: [][]byte{s}} }, []byte(secret)},
		{"stripe", secret, func(s []byte) signature.Verifier { return &signature.Stripe{Secrets: [][]byte{s}} }, []byte(secret)},
		{"slack", secret, func(s []byte) signature.Verifier { return &signature.Slack{Secrets: [][]byte{s}} }, []byte(secret)},
		{"svix", svixSecret, func(s []byte) signature.Verifier { return &signature.StandardWebhooks{Secrets: [][]byte{s}} }, key},
	}
	for _, tc := range tests {
		t.Run(tc.provider, func(t *testing.T) {
			body := defaultWebhookBody(tc.provider, defaultWebhookEvent(tc.provider), "d-1")
			if !json.Valid(body) {
				t.Fatalf("default body %s is not JSON", body)
			}
			d, err := signWebhook(tc.provider, tc.secret, defaultWebhookEvent(tc.provider), "d-1", body, now)
			if err != nil {
				t.Fatal(err)
			}
			if err := tc.verifier(tc.key).Verify(d.header, d.body, now); err != nil {
				t.Errorf("the webhook function refuses the delivery: %v (headers %v)", err, d.header)
			}
			if err := tc.verifier([]byte("other")).Verify(d.header, d.body, now); err == nil {
				t.Errorf("verified with another secret")
			}
		})
	}
	if _, err := signWebhook("gitlab", secret, "", "1", nil, now); ExitCode(err) != ExitUsage {
		t.Errorf("unknown provider: %v, want a usage error", err)
	}
}

// TestSendWebhook: send --webhook signs with the development secret of the running up's state
// directory and posts to the webhook function's source through the run's internal capability.
func TestSendWebhook(t *testing.T) {
	var mu sync.Mutex
	var got *http.Request
	var gotBody []byte
	intake := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		defer mu.Unlock()
		got = r
		gotBody, _ = io.ReadAll(r.Body)
		if (&signature.GitHub{Secrets: [][]byte{[]byte("dev-github")}}).Verify(r.Header, gotBody, time.Now()) != nil {
			http.Error(w, "unauthorized", http.StatusUnauthorized)
			return
		}
		w.WriteHeader(http.StatusAccepted)
		_, _ = w.Write([]byte(`{"accepted":true}`))
	}))
	t.Cleanup(intake.Close)
	state := filepath.Join(t.TempDir(), "knfaas")
	fakeRun(t, state, true, embedded.Endpoints{Addr: "127.0.0.1:1", Internal: intake.URL + "/_knfaas/T", PID: 1})
	secrets := `{"secrets":[{"namespace":"knfaas","secret":"webhook-secrets","key":"github","placeholder":"CHANGE-ME-github-webhook-secret","value":"dev-github"}]}`
	if err := os.WriteFile(filepath.Join(state, embedded.DevSecretsFile), []byte(secrets), 0o600); err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name    string
		args    []string
		wantOut string
		wantErr string
	}{
		{name: "signed with the development secret", args: []string{"--webhook", "github", "--type", "push", "--id", "d-1"},
			wantOut: "delivered github webhook d-1 to " + intake.URL + "/_knfaas/T/services/knfaas/webhook/github: 202 Accepted"},
		{name: "another secret is refused by the intake", args: []string{"--webhook", "github", "--webhook-secret", "wrong"},
			wantErr: "the webhook intake answered 401 Unauthorized unauthorized"},
		{name: "no development secret for the provider", args: []string{"--webhook", "slack"},
			wantErr: "no development secret for key slack of Secret knfaas/webhook-secrets"},
		{name: "unknown provider", args: []string{"--webhook", "gitlab"}, wantErr: `--webhook "gitlab": want one of github, stripe, slack, svix`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, append([]string{"send", "--state-dir", state}, tc.args...)...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || !strings.Contains(out, tc.wantOut) {
				t.Fatalf("err = %v, output %q; want %q", err, out, tc.wantOut)
			}
			mu.Lock()
			defer mu.Unlock()
			if got.Header.Get("X-GitHub-Event") != "push" || got.Header.Get("X-GitHub-Delivery") != "d-1" || !json.Valid(gotBody) {
				t.Errorf("delivery headers %v, body %s", got.Header, gotBody)
			}
		})
	}
}

// TestDevWebhookSecret: the secret up's webhook function gets is the template value with its
// placeholder replaced: whole for GitHub and Slack, after whsec_ for Stripe, and the whole
// base64 payload for Standard Webhooks; without the manifests, the platform template's shapes.
func TestDevWebhookSecret(t *testing.T) {
	dir := scaffoldModule(t)
	state := filepath.Join(dir, "state")
	if err := os.MkdirAll(state, 0o700); err != nil {
		t.Fatal(err)
	}
	secrets := `{"secrets":[
{"namespace":"knfaas","secret":"webhook-secrets","key":"github","placeholder":"CHANGE-ME-github-webhook-secret","value":"g1"},
{"namespace":"knfaas","secret":"webhook-secrets","key":"stripe","placeholder":"CHANGE-ME-stripe-signing-secret","value":"s1"},
{"namespace":"knfaas","secret":"webhook-secrets","key":"svix","placeholder":"Q0hBTkdFLU1FLWdlbmVyYXRlLWEtcmVhbC1zZWNyZXQ=","value":"abcd"}]}`
	if err := os.WriteFile(filepath.Join(state, embedded.DevSecretsFile), []byte(secrets), 0o600); err != nil {
		t.Fatal(err)
	}
	template := `apiVersion: v1
kind: Secret
metadata: {name: webhook-secrets, namespace: knfaas}
stringData:
  github: CHANGE-ME-github-webhook-secret
  stripe: whsec_CHANGE-ME-stripe-signing-secret
  svix: whsec_Q0hBTkdFLU1FLWdlbmVyYXRlLWEtcmVhbC1zZWNyZXQ=
`
	tests := []struct {
		provider     string
		withTemplate bool
		want         string
		wantErr      string
	}{
		{provider: "github", withTemplate: true, want: "g1"},
		{provider: "stripe", withTemplate: true, want: "whsec_s1"},
		{provider: "svix", withTemplate: true, want: "whsec_abcd"},
		{provider: "github", want: "g1"},
		{provider: "stripe", want: "whsec_s1"},
		{provider: "svix", want: "whsec_abcd"},
		{provider: "slack", wantErr: "no development secret for key slack"},
	}
	for _, tc := range tests {
		name := tc.provider
		if tc.withTemplate {
			name += " with the template"
		}
		t.Run(name, func(t *testing.T) {
			path := filepath.Join(dir, "config", "340-webhook-secrets.yaml")
			if tc.withTemplate {
				if err := os.WriteFile(path, []byte(template), 0o644); err != nil {
					t.Fatal(err)
				}
				defer os.Remove(path)
			}
			got, err := devWebhookSecret(state, "knfaas", tc.provider)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil || got != tc.want {
				t.Fatalf("devWebhookSecret = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
