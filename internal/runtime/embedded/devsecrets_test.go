package embedded

import (
	"encoding/json"
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/function/placeholder"
	"github.com/knfaas/knfaas/internal/function/webhook/signature"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// devSecretsManifests are template Secrets as in config/3xx-*, a Service that reads them by
// env, envFrom and a volume, and a Redis StatefulSet + Service the runtime stands in for.
var devSecretsManifests = manifesttest.Docs(`apiVersion: v1
kind: Secret
metadata: {name: auth, namespace: ns}
stringData:
  tokens: |
    manager:managers:CHANGE-ME-manager-token-000000
    operator:ops:CHANGE-ME-operator-token-00000
  github: CHANGE-ME-github-webhook-secret
  stripe: whsec_CHANGE-ME-stripe-signing-secret
  svix: whsec_Q0hBTkdFLU1FLWdlbmVyYXRlLWEtcmVhbC1zZWNyZXQ=
  svix-real: whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw
  plain: a-real-value
  empty: ""
data:
  binary: Q0hBTkdFLU1FLWJpbmFyeQ==
`, `apiVersion: v1
kind: Secret
metadata: {name: redis, namespace: ns}
stringData:
  password: CHANGE-ME
  url: redis://:CHANGE-ME@redis.ns.svc.cluster.local:6379/0
`, manifesttest.RedisService("ns"), manifesttest.RedisStatefulSet("ns"), manifesttest.KService("{name: fn, namespace: ns}", "ko://example.com/fn")+`        envFrom:
        - secretRef: {name: auth}
        env:
        - name: REDIS_URL
          valueFrom: {secretKeyRef: {name: redis, key: url}}
        - name: GITHUB_SECRET
          valueFrom: {secretKeyRef: {name: auth, key: github}}
        - name: TOKENS_FILE
          value: /etc/auth/tokens
        volumeMounts:
        - {name: auth, mountPath: /etc/auth}
      volumes:
      - name: auth
        secret: {secretName: auth}
`)

func loadDevSecretsSet(t *testing.T) *manifest.Set {
	t.Helper()
	return decodeSet(t, "secrets.yaml", devSecretsManifests)
}

var hex64 = regexp.MustCompile(`^[0-9a-f]{64}$`)

// resolvedEnv applies the development secrets in file to a fresh set and resolves fn's env and
// volumes the way knfaas up does.
func resolvedEnv(t *testing.T, file string) (map[string]string, devSecretsApplied, string) {
	t.Helper()
	set := loadDevSecretsSet(t)
	applied, err := applyDevSecrets(set, file)
	if err != nil {
		t.Fatal(err)
	}
	svc := set.Services()[0]
	c := svc.Spec.Template.Spec.Containers[0]
	list, err := envFor(set, svc, &c)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	mounts, err := projectVolumes(set, svc, &c, dir)
	if err != nil {
		t.Fatal(err)
	}
	list = rewriteMountPaths(list, mounts)
	standIn := redisStandIn(set)
	env := map[string]string{}
	for _, kv := range list {
		k, v, _ := strings.Cut(kv, "=")
		if nv, ok := rewriteRedisURL(v, standIn, "redis://127.0.0.1:9/0"); ok {
			v = nv
		}
		env[k] = v
	}
	tokens, err := os.ReadFile(env["TOKENS_FILE"])
	if err != nil {
		t.Fatal(err)
	}
	return env, applied, string(tokens)
}

func TestDevSecretsReplacePlaceholders(t *testing.T) {
	file := filepath.Join(t.TempDir(), "state", DevSecretsFile)
	env, applied, tokensFile := resolvedEnv(t, file)
	d, err := ReadDevSecrets(file)
	if err != nil {
		t.Fatal(err)
	}
	gen := func(secret, key, ph string) string {
		v, ok := d.Lookup("ns", secret, key, ph)
		if !ok {
			t.Fatalf("no development secret for ns/%s %s %s in %+v", secret, key, ph, d.Secrets)
		}
		if !hex64.MatchString(v) {
			t.Errorf("ns/%s %s %s = %q, want 64 hex characters", secret, key, ph, v)
		}
		return v
	}
	manager := gen("auth", "tokens", "CHANGE-ME-manager-token-000000")
	operator := gen("auth", "tokens", "CHANGE-ME-operator-token-00000")
	wantTokens := "manager:managers:" + manager + "\noperator:ops:" + operator + "\n"
	tests := []struct {
		name, got, want string
	}{
		{name: "whole value by secretKeyRef", got: env["GITHUB_SECRET"], want: gen("auth", "github", "CHANGE-ME-github-webhook-secret")},
		{name: "whole value by envFrom", got: env["github"], want: gen("auth", "github", "CHANGE-ME-github-webhook-secret")},
		{name: "placeholders inside a value by envFrom", got: env["tokens"], want: wantTokens},
		{name: "placeholders inside a value in a volume", got: tokensFile, want: wantTokens},
		{name: "whsec_ prefix kept", got: env["stripe"], want: "whsec_" + gen("auth", "stripe", "CHANGE-ME-stripe-signing-secret")},
		{name: "whsec_ base64 of a placeholder", got: env["svix"], want: "whsec_" + gen("auth", "svix", "Q0hBTkdFLU1FLWdlbmVyYXRlLWEtcmVhbC1zZWNyZXQ=")},
		{name: "real whsec_ value unchanged", got: env["svix-real"], want: "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
		{name: "binary data", got: env["binary"], want: gen("auth", "binary", "CHANGE-ME-binary")},
		{name: "value without placeholder unchanged", got: env["plain"], want: "a-real-value"},
		{name: "empty value unchanged", got: env["empty"], want: ""},
		{name: "redis URL still stood in for", got: env["REDIS_URL"], want: "redis://127.0.0.1:9/0"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.got != tc.want {
				t.Errorf("got %q, want %q", tc.got, tc.want)
			}
		})
	}
	for k, v := range env {
		if placeholder.Contains(v) {
			t.Errorf("env %s = %q still holds a placeholder", k, v)
		}
	}
	// A whsec_ value stays a valid Standard Webhooks secret.
	for _, k := range []string{"stripe", "svix"} {
		if _, err := signature.DecodeStandardSecret(env[k]); err != nil {
			t.Errorf("%s: whsec_ + development secret is not a valid Standard Webhooks secret: %v", k, err)
		}
	}
	// manager, operator, github, stripe, svix, binary, redis password, redis url.
	if applied.Replaced != 8 || applied.Generated != 8 {
		t.Errorf("applied = %+v, want 8 replaced, 8 generated", applied)
	}
	if manager == operator {
		t.Error("two placeholders got the same value")
	}
}

func TestDevSecretsAreKeptAcrossRuns(t *testing.T) {
	state := filepath.Join(t.TempDir(), "state")
	file := filepath.Join(state, DevSecretsFile)
	first, _, _ := resolvedEnv(t, file)
	// An entry of another project (not in the loaded manifests) must survive.
	d, err := ReadDevSecrets(file)
	if err != nil {
		t.Fatal(err)
	}
	d.Secrets = append(d.Secrets, DevSecret{Namespace: "other", Secret: "s", Key: "k", Placeholder: "CHANGE-ME", Value: "kept"})
	if err := writeDevSecrets(file, d); err != nil {
		t.Fatal(err)
	}
	second, applied, _ := resolvedEnv(t, file)
	for _, k := range []string{"GITHUB_SECRET", "tokens", "stripe", "svix"} {
		if first[k] != second[k] {
			t.Errorf("%s changed between runs: %q, then %q", k, first[k], second[k])
		}
	}
	if applied.Generated != 0 || applied.Replaced != 8 {
		t.Errorf("second run: %+v, want 8 replaced, 0 generated", applied)
	}
	d, err = ReadDevSecrets(file)
	if err != nil {
		t.Fatal(err)
	}
	if v, ok := d.Lookup("other", "s", "k", "CHANGE-ME"); !ok || v != "kept" {
		t.Errorf("another project's entry was lost: %q, %v", v, ok)
	}
	other, _, _ := resolvedEnv(t, filepath.Join(t.TempDir(), DevSecretsFile))
	if other["GITHUB_SECRET"] == first["GITHUB_SECRET"] {
		t.Error("another state directory got the same development secret")
	}
	for path, want := range map[string]os.FileMode{state: 0o700, file: 0o600} {
		fi, err := os.Stat(path)
		if err != nil {
			t.Fatal(err)
		}
		if fi.Mode().Perm() != want {
			t.Errorf("%s: mode %v, want %v", filepath.Base(path), fi.Mode().Perm(), want)
		}
	}
	var raw map[string]json.RawMessage
	b, _ := os.ReadFile(file)
	if err := json.Unmarshal(b, &raw); err != nil || raw["secrets"] == nil {
		t.Errorf("file is not {note, secrets}: %v\n%s", err, b)
	}
}

func TestDevSecretsWithoutPlaceholdersWriteNothing(t *testing.T) {
	set := decodeSet(t, "s.yaml", "apiVersion: v1\nkind: Secret\nmetadata: {name: s, namespace: ns}\nstringData: {k: real}\n")
	file := filepath.Join(t.TempDir(), "state", DevSecretsFile)
	applied, err := applyDevSecrets(set, file)
	if err != nil {
		t.Fatal(err)
	}
	if applied.Replaced != 0 {
		t.Errorf("replaced %d", applied.Replaced)
	}
	if _, err := os.Stat(filepath.Dir(file)); !os.IsNotExist(err) {
		t.Errorf("state directory created without placeholders: %v", err)
	}
}

func TestDevSecretsRefuseACorruptFile(t *testing.T) {
	file := filepath.Join(t.TempDir(), DevSecretsFile)
	if err := os.WriteFile(file, []byte("{not json"), 0o600); err != nil {
		t.Fatal(err)
	}
	_, err := applyDevSecrets(loadDevSecretsSet(t), file)
	if err == nil || !strings.Contains(err.Error(), "delete the file") {
		t.Fatalf("err = %v, want one that says how to recover", err)
	}
}
