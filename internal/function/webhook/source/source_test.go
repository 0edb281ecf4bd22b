package source

import (
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/webhook/signature"
)

func env(vars map[string]string) LookupEnv {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

var secrets = env(map[string]string{
	"GH":      "It's a Secret to Everybody",
	"GH_PREV": "old",
	"STRIPE":  "whsec_abc",
	"SLACK":   "8f742231b10e8888abcd99yyyzzz85a5",
	"STD":     "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
	"STD_BAD": "not-a-whsec",
	"GENERIC": "generic",
	"EMPTY":   "",
	"TOKEN":   "minio-token-0123456789abcdef",
	"SHORT":   "short",
	// The values of config/340-webhook-secrets.yaml as shipped.
	"TEMPLATE_GH":     "CHANGE-ME-github-webhook-secret",
	"TEMPLATE_STRIPE": "whsec_CHANGE-ME-stripe-signing-secret",
	"TEMPLATE_SVIX":   "whsec_Q0hBTkdFLU1FLWdlbmVyYXRlLWEtcmVhbC1zZWNyZXQ=",
})

func TestParseValid(t *testing.T) {
	doc := `
sources:
- name: github
  provider: github
  secretEnv: [GH, GH_PREV, UNSET]
- name: stripe
  provider: stripe
  secretEnv: [STRIPE]
- name: slack
  provider: slack
  secretEnv: [SLACK]
  tolerance: 2m
  dedupTTL: 2h
- name: svix
  provider: standardwebhooks
  secretEnv: [STD]
  type: com.example.invoice
  maxBodyBytes: 4096
- name: shop
  provider: hmac
  secretEnv: [GENERIC]
  type: com.example.shop.order
  header: X-Shop-Signature
  algorithm: sha512
  encoding: base64
  prefix: "sha512="
  timestampHeader: X-Shop-Timestamp
  idHeader: X-Shop-Delivery
- name: minio
  provider: s3
  secretEnv: [TOKEN]
- name: aws
  provider: s3
  secretEnv: [TOKEN]
  header: X-Api-Key
  dedupTTL: 24h
`
	srcs, err := Parse([]byte(doc), secrets)
	if err != nil {
		t.Fatalf("Parse: %v", err)
	}
	tests := map[string]struct {
		provider string
		dedupTTL time.Duration
		maxBody  int64
	}{
		"github": {ProviderGitHub, 72 * time.Hour, DefaultMaxBodyBytes},
		"stripe": {ProviderStripe, 96 * time.Hour, DefaultMaxBodyBytes},
		"slack":  {ProviderSlack, 2 * time.Hour, DefaultMaxBodyBytes},
		"svix":   {ProviderStandardWebhooks, 72 * time.Hour, 4096},
		"shop":   {ProviderHMAC, 96 * time.Hour, DefaultMaxBodyBytes},
		"minio":  {ProviderS3, 48 * time.Hour, DefaultMaxBodyBytes},
		"aws":    {ProviderS3, 24 * time.Hour, DefaultMaxBodyBytes},
	}
	if len(srcs) != len(tests) {
		t.Fatalf("got %d sources, want %d", len(srcs), len(tests))
	}
	for name, want := range tests {
		t.Run(name, func(t *testing.T) {
			s := srcs[name]
			if s == nil {
				t.Fatalf("source %q missing", name)
			}
			if s.Provider != want.provider || s.DedupTTL != want.dedupTTL || s.MaxBodyBytes != want.maxBody {
				t.Fatalf("got provider %s ttl %s max %d, want %+v", s.Provider, s.DedupTTL, s.MaxBodyBytes, want)
			}
		})
	}
	if gh := srcs["github"].Verifier.(*signature.GitHub); len(gh.Secrets) != 2 {
		t.Fatalf("github has %d secrets, want 2 (rotation: current and previous; unset skipped)", len(gh.Secrets))
	}
	if tok := srcs["aws"].Verifier.(*signature.Token); tok.Header != "X-Api-Key" || len(tok.Secrets) != 1 {
		t.Fatalf("aws token verifier %+v, want header X-Api-Key and one secret", tok)
	}
	minio := http.Header{}
	minio.Set("Authorization", "Bearer minio-token-0123456789abcdef")
	if err := srcs["minio"].Verifier.Verify(minio, nil, time.Now()); err != nil {
		t.Fatalf("minio source refuses its bearer token: %v", err)
	}
	body := []byte(`{"Records":[{"eventSource":"minio:s3","eventTime":"2026-11-29T13:40:01Z","eventName":"s3:ObjectCreated:Put","s3":{"bucket":{"name":"b"},"object":{"key":"k","size":1}}}]}`)
	if d, err := srcs["minio"].Describe(minio, body); err != nil || len(d.Parts) != 1 || d.Parts[0].Type != "com.amazonaws.s3.ObjectCreated:Put" {
		t.Fatalf("minio Describe = %+v, %v", d, err)
	}
	if sl := srcs["slack"].Verifier.(*signature.Slack); sl.Tolerance != 2*time.Minute {
		t.Fatalf("slack tolerance %s, want 2m", sl.Tolerance)
	}
	// The standardwebhooks key must be the decoded secret: the published example verifies.
	h := http.Header{}
	h.Set("webhook-id", "msg_p5jXN8AQM9LWM0D4loKWxJek")
	h.Set("webhook-timestamp", "1614265330")
	h.Set("webhook-signature", "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE=")
	if err := srcs["svix"].Verifier.Verify(h, []byte(`{"test": 2432232314}`), time.Unix(1614265330, 0)); err != nil {
		t.Fatalf("svix source refuses the published example: %v", err)
	}
	d, err := srcs["svix"].Describe(h, []byte(`{"test": 2432232314}`))
	if err != nil || d.ID != "msg_p5jXN8AQM9LWM0D4loKWxJek" || d.Type != "com.example.invoice" {
		t.Fatalf("svix Describe = %+v, %v", d, err)
	}
}

func TestParseInvalid(t *testing.T) {
	tests := []struct {
		name string
		doc  string
		want []string // every fragment must appear in the error
	}{
		{"no sources", `sources: []`, []string{"none configured"}},
		{"unknown field (typo)", "sources:\n- name: a\n  provider: github\n  secretEnvs: [GH]", []string{"secretEnvs"}},
		{"unknown provider", "sources:\n- name: a\n  provider: gitlab\n  secretEnv: [GH]", []string{`source "a" (sources[0])`, "provider", "gitlab"}},
		{"bad name", "sources:\n- name: Bad_Name\n  provider: github\n  secretEnv: [GH]", []string{"name", "DNS label"}},
		{"reserved name", "sources:\n- name: health\n  provider: github\n  secretEnv: [GH]", []string{"name"}},
		{"duplicate name", "sources:\n- name: a\n  provider: github\n  secretEnv: [GH]\n- name: a\n  provider: github\n  secretEnv: [GH]", []string{"sources[1]", "used by an earlier source"}},
		{"no secretEnv", "sources:\n- name: a\n  provider: github", []string{`source "a"`, "secretEnv", "required"}},
		{"secrets unset or empty", "sources:\n- name: a\n  provider: github\n  secretEnv: [UNSET, EMPTY]", []string{"secretEnv", "none of [UNSET EMPTY] is set"}},
		{"bad standard secret", "sources:\n- name: a\n  provider: standardwebhooks\n  type: t\n  secretEnv: [STD_BAD]", []string{`source "a"`, "secretEnv", "whsec_"}},
		{"hmac without header", "sources:\n- name: a\n  provider: hmac\n  type: t\n  secretEnv: [GENERIC]", []string{"header", "required"}},
		{"hmac bad algorithm and encoding", "sources:\n- name: a\n  provider: hmac\n  type: t\n  header: X\n  algorithm: md5\n  encoding: base32\n  secretEnv: [GENERIC]", []string{"algorithm", "md5", "encoding", "base32"}},
		{"hmac without type", "sources:\n- name: a\n  provider: hmac\n  header: X\n  secretEnv: [GENERIC]", []string{"type", "required"}},
		{"type on github", "sources:\n- name: a\n  provider: github\n  type: x\n  secretEnv: [GH]", []string{"type", "from the delivery"}},
		{"hmac field on stripe", "sources:\n- name: a\n  provider: stripe\n  header: X\n  secretEnv: [STRIPE]", []string{"header", "only hmac"}},
		{"bad durations and size", "sources:\n- name: a\n  provider: stripe\n  tolerance: 5 minutes\n  dedupTTL: 3d\n  maxBodyBytes: -1\n  secretEnv: [STRIPE]", []string{"tolerance", "dedupTTL", "maxBodyBytes"}},
		{"template github secret", "sources:\n- name: a\n  provider: github\n  secretEnv: [TEMPLATE_GH]", []string{`source "a"`, "secretEnv", "TEMPLATE_GH", `"CHANGE-ME-github-webhook-secret"`}},
		{"template secret beside a real one", "sources:\n- name: a\n  provider: github\n  secretEnv: [GH, TEMPLATE_GH]", []string{`source "a"`, "TEMPLATE_GH", "template placeholder"}},
		{"template stripe secret after whsec_", "sources:\n- name: a\n  provider: stripe\n  secretEnv: [TEMPLATE_STRIPE]", []string{"TEMPLATE_STRIPE", `"CHANGE-ME-stripe-signing-secret"`}},
		{"template standard secret inside its base64", "sources:\n- name: a\n  provider: standardwebhooks\n  type: t\n  secretEnv: [TEMPLATE_SVIX]", []string{"TEMPLATE_SVIX (base64-decoded after whsec_)", `"CHANGE-ME-generate-a-real-secret"`}},
		{"s3 token too short", "sources:\n- name: a\n  provider: s3\n  secretEnv: [SHORT]", []string{`source "a"`, "secretEnv", "fewer than 16"}},
		{"s3 bad header name", "sources:\n- name: a\n  provider: s3\n  header: \"X Api\"\n  secretEnv: [TOKEN]", []string{"header", "not a header name"}},
		{"s3 with a tolerance", "sources:\n- name: a\n  provider: s3\n  tolerance: 5m\n  secretEnv: [TOKEN]", []string{"tolerance", "no timestamp"}},
		{"s3 with a type", "sources:\n- name: a\n  provider: s3\n  type: x\n  secretEnv: [TOKEN]", []string{"type", "from the delivery"}},
		{"s3 with an hmac field", "sources:\n- name: a\n  provider: s3\n  algorithm: sha256\n  secretEnv: [TOKEN]", []string{"algorithm", "only hmac"}},
		{"every source reported", "sources:\n- name: a\n  provider: nope\n  secretEnv: [GH]\n- name: b\n  provider: github", []string{`source "a"`, `source "b"`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse([]byte(tc.doc), secrets)
			if err == nil {
				t.Fatal("Parse accepted an invalid document")
			}
			for _, frag := range tc.want {
				if !strings.Contains(err.Error(), frag) {
					t.Errorf("error %q does not mention %q", err, frag)
				}
			}
		})
	}
}

func TestLoadNamesThePath(t *testing.T) {
	path := filepath.Join(t.TempDir(), "sources.yaml")
	if err := os.WriteFile(path, []byte("sources:\n- name: a\n  provider: nope\n  secretEnv: [GH]\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := Load(path, secrets)
	if err == nil || !strings.Contains(err.Error(), path) {
		t.Fatalf("Load error %v does not name the file", err)
	}
	if _, err := Load(filepath.Join(t.TempDir(), "missing.yaml"), secrets); err == nil {
		t.Fatal("Load of a missing file succeeded")
	}
}
