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
