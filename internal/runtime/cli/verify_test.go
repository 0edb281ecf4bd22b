package cli

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestRunVerify(t *testing.T) {
	const broker = `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: knfaas}
`
	tests := map[string]struct {
		files map[string]string
		want  []string // substrings of the output
		fail  bool
	}{
		"clean": {
			files: map[string]string{"config/600-broker.yaml": broker},
			want:  []string{"1 objects in", "OK"},
		},
		"unknown field names file, object and field": {
			files: map[string]string{"config/600-broker.yaml": broker + "spec:\n  deliveryy: {}\n"},
			want:  []string{"600-broker.yaml (document 1)", "Broker knfaas/default", `unknown field "spec.deliveryy"`},
			fail:  true,
		},
		"cross-check names file, object and field": {
			files: map[string]string{
				"config/600-broker.yaml": broker,
				"triggers/x-y.yaml": `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: x-y, namespace: knfaas}
spec:
  broker: other
  subscriber: {uri: "http://example.com/"}
`,
			},
			want: []string{"x-y.yaml: Trigger knfaas/x-y: spec.broker: Broker knfaas/other is not defined"},
			fail: true,
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			var paths []string
			for f, content := range tc.files {
				p := filepath.Join(dir, f)
				if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(p, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
				paths = append(paths, p)
			}
			var out bytes.Buffer
			err := runVerify(&out, paths)
			if tc.fail != (err != nil) {
				t.Fatalf("err = %v, want failure %v; output:\n%s", err, tc.fail, out.String())
			}
			if tc.fail && !errors.Is(err, errVerifyFailed) {
				t.Errorf("err = %v, want errVerifyFailed", err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out.String(), w) {
					t.Errorf("output lacks %q:\n%s", w, out.String())
				}
			}
		})
	}
}

// TestManifestFlagsAreAligned: up and verify read -f the same way: added to config/ and
// triggers/, --defaults=false for only the -f paths, --file as another name of --filename, a
// path given twice read once.
func TestManifestFlagsAreAligned(t *testing.T) {
	dir := scaffoldModule(t)
	if err := os.MkdirAll(filepath.Join(dir, "examples", "x"), 0o755); err != nil {
		t.Fatal(err)
	}
	const trigger = `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: x, namespace: knfaas}
spec:
  broker: default
  subscriber: {uri: "http://example.com/"}
`
	if err := os.WriteFile(filepath.Join(dir, "examples", "x", "x.yaml"), []byte(trigger), 0o644); err != nil {
		t.Fatal(err)
	}
	const noBroker = "Broker knfaas/default is not defined"
	tests := []struct {
		name    string
		args    []string
		wantErr string
		wantOut string
	}{
		{name: "verify -f adds to the defaults", args: []string{"verify", "-f", "examples/x"}, wantOut: "in config, triggers, examples/x: OK"},
		{name: "verify --defaults=false", args: []string{"verify", "--defaults=false", "-f", "examples/x"}, wantErr: noBroker},
		{name: "verify reads a path once", args: []string{"verify", "-f", "config", "-f", "./triggers", "-f", "examples/x"}, wantOut: "in config, triggers, examples/x: OK"},
		{name: "verify --file", args: []string{"verify", "--file", "examples/x"}, wantOut: "examples/x: OK"},
		{name: "up -f adds to the defaults", args: []string{"up", "--dry-run", "-f", "examples/x"}, wantOut: "trigger knfaas/x"},
		{name: "up --filename", args: []string{"up", "--dry-run", "--filename", "examples/x", "-f", "config"}, wantOut: "loaded 4 objects from config, triggers, examples/x"},
		{name: "up --defaults=false", args: []string{"up", "--dry-run", "--defaults=false", "--file", "examples/x"}, wantErr: noBroker},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error()+out, tc.wantErr) {
					t.Fatalf("err = %v, want %q; output:\n%s", err, tc.wantErr, out)
				}
				return
			}
			if err != nil || !strings.Contains(out, tc.wantOut) {
				t.Fatalf("err = %v, want output with %q:\n%s", err, tc.wantOut, out)
			}
		})
	}
}
