package verify

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestCheckKustomization(t *testing.T) {
	const head = "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
	tests := map[string]struct {
		kustomization string
		files         []string
		sub           map[string]string // files of the sub-folder "broker": name → content
		file          string            // the kustomization the problem names: the top one when empty
		field         string
		msg           string // empty: no problems
	}{
		"every file listed":   {kustomization: head + "resources: [a.yaml, b.yaml]\n", files: []string{"a.yaml", "b.yaml"}},
		"file not listed":     {kustomization: head + "resources: [a.yaml]\n", files: []string{"a.yaml", "b.yaml"}, field: "resources", msg: "b.yaml is in"},
		"listed file missing": {kustomization: head + "resources: [a.yaml, c.yaml]\n", files: []string{"a.yaml"}, field: "resources[1]", msg: "c.yaml is not a file"},
		"listed twice":        {kustomization: head + "resources: [a.yaml, a.yaml]\n", files: []string{"a.yaml"}, field: "resources[1]", msg: "listed twice"},
		"patches not allowed": {kustomization: head + "resources: [a.yaml]\npatches: []\n", files: []string{"a.yaml"}, msg: `unknown field "patches"`},
		"sub-folder with its own list": {kustomization: head + "resources: [a.yaml, broker]\n", files: []string{"a.yaml"},
			sub: map[string]string{"kustomization.yaml": head + "resources: [b.yaml]\n", "b.yaml": "kind: x\n"}},
		"sub-folder without a kustomization": {kustomization: head + "resources: [a.yaml, ./broker]\n", files: []string{"a.yaml"},
			sub: map[string]string{"b.yaml": "kind: x\n"}, field: "resources[1]", msg: "nor a sub-folder with a kustomization.yaml"},
		"sub-folder's list is checked too": {kustomization: head + "resources: [a.yaml, broker]\n", files: []string{"a.yaml"},
			sub:  map[string]string{"kustomization.yaml": head + "resources: [b.yaml]\n", "b.yaml": "kind: x\n", "c.yaml": "kind: x\n"},
			file: filepath.Join("broker", "kustomization.yaml"), field: "resources", msg: "c.yaml is in"},
		"the folder itself is no sub-folder": {kustomization: head + "resources: [a.yaml, .]\n", files: []string{"a.yaml"}, field: "resources[1]", msg: "nor a sub-folder"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			dir := t.TempDir()
			for _, f := range tc.files {
				if err := os.WriteFile(filepath.Join(dir, f), []byte("kind: x\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			if err := os.WriteFile(filepath.Join(dir, "kustomization.yaml"), []byte(tc.kustomization), 0o644); err != nil {
				t.Fatal(err)
			}
			if tc.sub != nil {
				if err := os.Mkdir(filepath.Join(dir, "broker"), 0o755); err != nil {
					t.Fatal(err)
				}
				for name, content := range tc.sub {
					if err := os.WriteFile(filepath.Join(dir, "broker", name), []byte(content), 0o644); err != nil {
						t.Fatal(err)
					}
				}
			}
			wantFile := filepath.Join(dir, "kustomization.yaml")
			if tc.file != "" {
				wantFile = filepath.Join(dir, tc.file)
			}
			problems := CheckKustomization(dir)
			if tc.msg == "" {
				if len(problems) != 0 {
					t.Fatalf("want no problems, got %v", problems)
				}
				return
			}
			if len(problems) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(problems), problems)
			}
			p := problems[0]
			if p.File != wantFile || p.Field != tc.field || !strings.Contains(p.Msg, tc.msg) {
				t.Errorf("got %s, want file %s, field %q, message containing %q", p, wantFile, tc.field, tc.msg)
			}
		})
	}
}

// FuzzCheckKustomization feeds arbitrary kustomization.yaml content: the check must never panic,
// and every problem it reports must name the kustomization file.
func FuzzCheckKustomization(f *testing.F) {
	f.Add("apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources: [a.yaml]\n")
	f.Add("resources:\n- ../x\n- a.yaml\n- a.yaml\n")
	f.Add("resources: 7\n")
	f.Fuzz(func(t *testing.T, content string) {
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "a.yaml"), []byte("kind: x\n"), 0o644); err != nil {
			t.Fatal(err)
		}
		file := filepath.Join(dir, "kustomization.yaml")
		if err := os.WriteFile(file, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
		for _, p := range CheckKustomization(dir) {
			if p.File != file || p.Msg == "" {
				t.Fatalf("problem does not name the file or says nothing: %+v", p)
			}
		}
	})
}
