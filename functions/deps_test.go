package functions_test

import (
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

const module = "github.com/knfaas/knfaas/"

// forbiddenInFunctions are import path prefixes no function binary may link: the Kubernetes
// and Knative control-plane modules belong to cmd/knfaas and its runtime (internal/runtime),
// the test harnesses to tests. Functions scale to zero, so their cold start and memory count.
var forbiddenInFunctions = []string{
	"k8s.io/",
	"knative.dev/serving",
	"knative.dev/eventing",
	"knative.dev/pkg",
	module + "internal/runtime/",
	module + "internal/harness/",
}

// TestFunctionsLinkOnlyLeanPackages lists the dependencies of every function binary (platform
// functions, examples, test fixtures) and of every package under internal/function, and fails
// on any import the lean-function rule forbids. A function may import the standard library,
// func-go, the CloudEvents SDK, go-redis, their dependencies and internal/function/...
func TestFunctionsLinkOnlyLeanPackages(t *testing.T) {
	var targets []string
	for _, pattern := range []string{"*/main.go", "../examples/*/functions/*/main.go", "../test/functions/*/main.go"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		for _, main := range m {
			targets = append(targets, "./"+filepath.ToSlash(filepath.Dir(main)))
		}
	}
	if len(targets) < 13 {
		t.Fatalf("found only %d function mains: %v", len(targets), targets)
	}
	targets = append(targets, "../internal/function/...")
	for _, target := range targets {
		t.Run(target, func(t *testing.T) {
			deps := goListDeps(t, target)
			if !strings.Contains(target, "internal/function") && !deps["knative.dev/func-go/http"] && !deps["knative.dev/func-go/cloudevents"] {
				t.Errorf("%s does not link func-go; is it a function?", target)
			}
			for dep := range deps {
				for _, bad := range forbiddenInFunctions {
					if strings.HasPrefix(dep, bad) {
						t.Errorf("%s links %s (forbidden prefix %s)", target, dep, bad)
					}
				}
				if strings.HasPrefix(dep, module+"internal/") && !strings.HasPrefix(dep, module+"internal/function/") {
					t.Errorf("%s links %s; functions may import only internal/function/...", target, dep)
				}
			}
		})
	}
}

// TestForbiddenPrefixesCatchTheRuntime shows the check is not vacuous: the runtime's own
// packages link what functions must not.
func TestForbiddenPrefixesCatchTheRuntime(t *testing.T) {
	deps := goListDeps(t, "../internal/runtime/embedded")
	for _, want := range []string{"k8s.io/", "knative.dev/eventing"} {
		found := false
		for dep := range deps {
			if strings.HasPrefix(dep, want) {
				found = true
				break
			}
		}
		if !found {
			t.Errorf("internal/runtime/embedded does not link %s; the forbidden list would not catch it", want)
		}
	}
}

func goListDeps(t *testing.T, target string) map[string]bool {
	t.Helper()
	out, err := exec.Command("go", "list", "-deps", "-f", "{{.ImportPath}}", target).CombinedOutput()
	if err != nil {
		t.Fatalf("go list -deps %s: %v\n%s", target, err, out)
	}
	deps := map[string]bool{}
	for _, line := range strings.Fields(string(out)) {
		deps[line] = true
	}
	return deps
}
