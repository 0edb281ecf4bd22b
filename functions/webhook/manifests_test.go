package main

import (
	"crypto/rand"
	"encoding/base64"
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"sigs.k8s.io/yaml"

	"github.com/knfaas/knfaas/internal/function/webhook/signature"
	"github.com/knfaas/knfaas/internal/function/webhook/source"
)

// TestShippedManifestsStart checks the chain the cluster relies on: every env var a source in
// config/400-webhook-sources.yaml names is set by config/700-webhook.yaml from a key that the
// config/340-webhook-secrets.yaml template holds; the template's placeholders are refused, each
// env var named; and the sources file validates once they are replaced.
func TestShippedManifestsStart(t *testing.T) {
	read := func(name string, into any) {
		t.Helper()
		data, err := os.ReadFile(filepath.Join("..", "..", "config", name))
		if err != nil {
			t.Fatal(err)
		}
		if err := yaml.Unmarshal(data, into); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
	}
	var cm struct {
		Data map[string]string `json:"data"`
	}
	read("400-webhook-sources.yaml", &cm)
	var secret struct {
		StringData map[string]string `json:"stringData"`
	}
	read("340-webhook-secrets.yaml", &secret)
	var ksvc struct {
		Spec struct {
			Template struct {
				Spec struct {
					Containers []struct {
						Env []struct {
							Name      string `json:"name"`
							Value     string `json:"value"`
							ValueFrom *struct {
								SecretKeyRef *struct {
									Name string `json:"name"`
									Key  string `json:"key"`
								} `json:"secretKeyRef"`
							} `json:"valueFrom"`
						} `json:"env"`
						VolumeMounts []struct {
							MountPath string `json:"mountPath"`
						} `json:"volumeMounts"`
					} `json:"containers"`
				} `json:"spec"`
			} `json:"template"`
		} `json:"spec"`
	}
	read("700-webhook.yaml", &ksvc)

	env := map[string]string{}
	fromSecret := map[string]bool{}
	c := ksvc.Spec.Template.Spec.Containers[0]
	for _, e := range c.Env {
		switch {
		case e.ValueFrom != nil && e.ValueFrom.SecretKeyRef != nil && e.ValueFrom.SecretKeyRef.Name == "webhook-secrets":
			v, ok := secret.StringData[e.ValueFrom.SecretKeyRef.Key]
			if !ok {
				t.Errorf("env %s refers to key %q missing from the Secret template", e.Name, e.ValueFrom.SecretKeyRef.Key)
			}
			env[e.Name] = v
			fromSecret[e.Name] = true
		case e.ValueFrom == nil:
			env[e.Name] = e.Value
		}
	}
	if got, want := env["WEBHOOK_SOURCES_FILE"], c.VolumeMounts[0].MountPath+"/sources.yaml"; got != want {
		t.Errorf("WEBHOOK_SOURCES_FILE %q is not the mounted ConfigMap key %q", got, want)
	}
	lookup := func(env map[string]string) source.LookupEnv {
		return func(k string) (string, bool) { v, ok := env[k]; return v, ok }
	}
	sources := []byte(cm.Data["sources.yaml"])

	// As shipped, the template's placeholders must stop the function, each named.
	_, err := source.Parse(sources, lookup(env))
	if err == nil {
		t.Fatal("the shipped Secret template's placeholders were accepted as real secrets")
	}
	real := map[string]string{}
	for name, v := range env {
		real[name] = v
		if v == "" || !fromSecret[name] {
			continue
		}
		if !strings.Contains(err.Error(), name) {
			t.Errorf("start-up error does not name %s, fed from the template: %v", name, err)
		}
		// What an operator puts there instead: a random value of the same shape.
		key := make([]byte, 32)
		_, _ = rand.Read(key)
		real[name] = hex.EncodeToString(key)
		if strings.HasPrefix(v, signature.StandardSecretPrefix) {
			real[name] = signature.StandardSecretPrefix + base64.StdEncoding.EncodeToString(key)
		}
	}

	srcs, err := source.Parse(sources, lookup(real))
	if err != nil {
		t.Fatalf("shipped sources do not start with the Secret template filled in: %v", err)
	}
	for _, name := range []string{"github", "stripe", "slack", "svix"} {
		if srcs[name] == nil {
			t.Errorf("shipped sources lack %q", name)
		}
	}
}
