package serving

import (
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// TestFunctionBuildsReuseTheCompileCache: on a first run, `go run ./cmd/knfaas up` compiles the
// CLI, then up builds the functions. The packages both link (the standard library, the SDKs)
// must come from the Go build cache rather than be compiled a second time, so the function
// builds use go run's compile settings. A module of its own (a library, a "CLI" and a
// "function" that both import it) is built with an empty build cache: go run first, then
// Builder, which must compile none of the dependencies again.
func TestFunctionBuildsReuseTheCompileCache(t *testing.T) {
	if testing.Short() {
		t.Skip("compiles the runtime package from an empty build cache")
	}
	tests := []struct {
		name string
		race string // EnvRace
		// goRun is how the CLI is run first, as a user or hack/test.sh does.
		goRun []string
		env   []string
	}{
		{name: "plain, as go run ./cmd/knfaas", race: "", goRun: []string{"run", "./cli"}},
		{name: "race, as CGO_ENABLED=1 go test -race", race: "1", goRun: []string{"run", "-race", "./cli"}, env: []string{"CGO_ENABLED=1"}},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			t.Setenv(EnvRace, tt.race)
			t.Setenv("GOCACHE", t.TempDir())
			t.Setenv("GOWORK", "off")
			dir := t.TempDir()
			files := map[string]string{
				"go.mod":      "module example.com/shared\n\ngo 1.22\n",
				"lib/lib.go":  "// Package lib is shared by the CLI and the function.\npackage lib\n\n// Greeting is a greeting.\nfunc Greeting() string { return \"hello\" }\n",
				"cli/main.go": "package main\n\nimport \"example.com/shared/lib\"\n\nfunc main() { println(lib.Greeting()) }\n",
				"fn/main.go":  "package main\n\nimport \"example.com/shared/lib\"\n\nfunc main() { println(lib.Greeting(), \"function\") }\n",
			}
			for name, content := range files {
				path := filepath.Join(dir, name)
				if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
					t.Fatal(err)
				}
				if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
					t.Fatal(err)
				}
			}
			run := exec.Command("go", tt.goRun...)
			run.Dir = dir
			run.Env = append(os.Environ(), tt.env...)
			if out, err := run.CombinedOutput(); err != nil || !strings.Contains(string(out), "hello") {
				t.Fatalf("go %s: %v: %s", strings.Join(tt.goRun, " "), err, out)
			}

			var depsDone *BuildProgress
			b := &Builder{Dir: dir, CacheDir: t.TempDir(), Progress: func(p BuildProgress) {
				if p.Step == StepDepsDone {
					depsDone = &p
				}
			}}
			built, err := b.Build(context.Background(), []string{"example.com/shared/fn"})
			if err != nil {
				t.Fatal(err)
			}
			if depsDone == nil {
				t.Fatal("the dependencies were not compiled (no deps-done step)")
			}
			if depsDone.Packages != 0 {
				t.Errorf("the function build compiled %d packages that go run had compiled already; want 0 (all from the build cache)", depsDone.Packages)
			}
			out, err := exec.Command(built[0].Binary).CombinedOutput()
			if err != nil || !strings.Contains(string(out), "hello function") {
				t.Errorf("the built function: %v: %s", err, out)
			}
		})
	}
}

// TestBinaryKeyFollowsTheToolchainSettings: plain builds take CGO_ENABLED (and GOFLAGS, …) from
// the environment, so a binary cached under one setting is not reused under another.
func TestBinaryKeyFollowsTheToolchainSettings(t *testing.T) {
	p := &listedPackage{ImportPath: "example.com/fn", Name: "main"}
	pkgs := map[string]*listedPackage{p.ImportPath: p}
	tests := []struct {
		name     string
		env      []string
		sameAs   []string
		wantSame bool
	}{
		{name: "cgo on and off", env: []string{"CGO_ENABLED=1"}, sameAs: []string{"CGO_ENABLED=0"}, wantSame: false},
		{name: "different GOFLAGS", env: []string{"GOFLAGS=-tags=a"}, sameAs: []string{"GOFLAGS=-tags=b"}, wantSame: false},
		{name: "the same settings", env: []string{"CGO_ENABLED=0"}, sameAs: []string{"CGO_ENABLED=0"}, wantSame: true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			key := func(extra []string) string {
				settings, err := toolchain(context.Background(), ".", append(os.Environ(), extra...))
				if err != nil {
					t.Fatal(err)
				}
				k, err := contentKey(settings, []string{"-ldflags=-s -w"}, p, pkgs)
				if err != nil {
					t.Fatal(err)
				}
				return k
			}
			if same := key(tt.env) == key(tt.sameAs); same != tt.wantSame {
				t.Errorf("keys under %q and %q: same = %v, want %v", tt.env, tt.sameAs, same, tt.wantSame)
			}
		})
	}
}
