package cli

import (
	"errors"
	"go/ast"
	"go/parser"
	"go/token"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// scaffoldModule makes a module with the platform's namespace and redis Secret and a Broker
// (all a scaffolded function needs to verify) and changes into it.
func scaffoldModule(t *testing.T) string {
	t.Helper()
	repo, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module github.com/knfaas/knfaas\n\ngo 1.26.0\n"), 0o644))
	must(os.MkdirAll(filepath.Join(dir, "config"), 0o755))
	must(os.MkdirAll(filepath.Join(dir, "triggers"), 0o755))
	files := []string{"100-namespace.yaml", "300-redis-secret.yaml", "600-broker.yaml"}
	// The platform's Broker dead-letters to the deadletter function; this one is plain.
	must(os.WriteFile(filepath.Join(dir, "config", "600-broker.yaml"),
		[]byte("apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata:\n  name: default\n  namespace: knfaas\n"), 0o644))
	for _, f := range files[:2] {
		data, err := os.ReadFile(filepath.Join(repo, "config", f))
		must(err)
		must(os.WriteFile(filepath.Join(dir, "config", f), data, 0o644))
	}
	must(os.WriteFile(filepath.Join(dir, "config", "kustomization.yaml"),
		[]byte("# listed\napiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n- "+strings.Join(files, "\n- ")+"\n"), 0o644))
	t.Chdir(dir)
	return dir
}

// TestNewScaffoldsWhatVerifyAccepts: each scaffold passes knfaas verify as written, lists its
// manifests in the kustomization that must list them, and never overwrites a file.
func TestNewScaffoldsWhatVerifyAccepts(t *testing.T) {
	dir := scaffoldModule(t)
	steps := []struct {
		name      string
		args      []string
		wantFiles []string
		wantErr   string
		wantCode  int
		verify    []string // verify these paths afterwards
		wantKust  map[string][]string
	}{
		{name: "platform function", args: []string{"new", "function", "greeter"},
			wantFiles: []string{"functions/greeter/main.go", "functions/greeter/greeter.go", "functions/greeter/greeter_test.go",
				"functions/greeter/README.md", "config/700-greeter.yaml", "triggers/greeter-greeter-requested.yaml"},
			verify:   []string{"config", "triggers"},
			wantKust: map[string][]string{"config/kustomization.yaml": {"- 100-namespace.yaml", "- 300-redis-secret.yaml", "- 600-broker.yaml", "- 700-greeter.yaml"}}},
		{name: "example function with its own type", args: []string{"new", "function", "notifier", "--example", "shop", "--type", "dev.knfaas.example.shop.order.placed"},
			wantFiles: []string{"examples/shop/functions/notifier/notifier.go", "examples/shop/config/700-shop-notifier.yaml", "examples/shop/triggers/shop-notifier-order-placed.yaml"},
			verify:    []string{"config", "triggers", "examples/shop"},
			wantKust:  map[string][]string{"examples/shop/kustomization.yaml": {"- config/700-shop-notifier.yaml", "- triggers/shop-notifier-order-placed.yaml"}}},
		{name: "trigger", args: []string{"new", "trigger", "greeter", "--type", "dev.knfaas.tasks.completed"},
			wantFiles: []string{"triggers/greeter-tasks-completed.yaml"}, verify: []string{"config", "triggers"}},
		{name: "example trigger", args: []string{"new", "trigger", "shop-notifier", "--example", "shop", "--type", "dev.knfaas.example.shop.order.paid"},
			wantFiles: []string{"examples/shop/triggers/shop-notifier-order-paid.yaml"}, verify: []string{"config", "triggers", "examples/shop"},
			wantKust: map[string][]string{"examples/shop/kustomization.yaml": {"- config/700-shop-notifier.yaml", "- triggers/shop-notifier-order-paid.yaml", "- triggers/shop-notifier-order-placed.yaml"}}},
		{name: "never overwrites", args: []string{"new", "function", "greeter"}, wantErr: "functions/greeter/main.go exists", wantCode: ExitFailure},
		{name: "name not a DNS label", args: []string{"new", "function", "Greeter"}, wantErr: "want a DNS label", wantCode: ExitUsage},
		{name: "trigger needs a type", args: []string{"new", "trigger", "greeter"}, wantErr: "--type is required", wantCode: ExitUsage},
	}
	for _, st := range steps {
		t.Run(st.name, func(t *testing.T) {
			out, err := runCLI(t, st.args...)
			if st.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), st.wantErr) || ExitCode(err) != st.wantCode {
					t.Fatalf("err = %v (exit %d), want %q (exit %d)", err, ExitCode(err), st.wantErr, st.wantCode)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, f := range st.wantFiles {
				if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
					t.Errorf("%s not written: %v", f, err)
				}
			}
			for kust, want := range st.wantKust {
				data, err := os.ReadFile(filepath.Join(dir, kust))
				if err != nil {
					t.Fatal(err)
				}
				_, list, _ := strings.Cut(string(data), "resources:\n")
				if got := strings.Split(strings.TrimSpace(list), "\n"); strings.Join(got, "|") != strings.Join(want, "|") {
					t.Errorf("%s resources %q, want %q", kust, got, want)
				}
			}
			var args []string
			for _, p := range st.verify {
				args = append(args, "-f", p)
			}
			if out, err := runCLI(t, append([]string{"verify"}, args...)...); err != nil {
				t.Fatalf("verify %v: %v\n%s", st.verify, err, out)
			}
		})
	}
}

func TestTriggerName(t *testing.T) {
	tests := []struct{ service, domain, typ, want string }{
		{"greeter", "", "dev.knfaas.greeter.requested", "greeter-greeter-requested"},
		{"process", "", "dev.knfaas.timer.fired", "process-timer-fired"},
		{"pos-stock", "pos", "dev.knfaas.example.pos.sale.recorded", "pos-stock-sale-recorded"},
		{"hook", "", "com.github.push", "hook-com-github-push"},
		{"shop-x", "shop", "dev.knfaas.example.other.thing", "shop-x-example-other-thing"},
	}
	for _, tc := range tests {
		t.Run(tc.want, func(t *testing.T) {
			if got := triggerName(tc.service, tc.domain, tc.typ); got != tc.want {
				t.Errorf("triggerName(%q, %q, %q) = %q, want %q", tc.service, tc.domain, tc.typ, got, tc.want)
			}
		})
	}
}

// TestNewFunctionMainSetsUpLogging: a scaffolded main sets up logging first, as every
// function's main does (functions/mains_logging_test.go): with the platform's logging package
// in its module, with a logging.go of its own in another module (which cannot import it).
func TestNewFunctionMainSetsUpLogging(t *testing.T) {
	tests := []struct {
		name        string
		module      string
		wantCall    string // package.Func, or Func for a call in the function's own package
		wantImport  string
		wantLogging bool // a logging.go beside main.go
	}{
		{name: "platform module", module: platformModule, wantCall: "logging.Setup", wantImport: platformModule + "/internal/function/logging"},
		{name: "own module", module: "example.com/myapp", wantCall: "setupLogging", wantLogging: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			if err := os.WriteFile(filepath.Join(dir, "go.mod"), []byte("module "+tc.module+"\n\ngo 1.26.0\n"), 0o644); err != nil {
				t.Fatal(err)
			}
			if out, err := runCLI(t, "new", "function", "greeter", "--dir", dir); err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			fset := token.NewFileSet()
			f, err := parser.ParseFile(fset, filepath.Join(dir, "functions", "greeter", "main.go"), nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			var imports []string
			for _, imp := range f.Imports {
				imports = append(imports, strings.Trim(imp.Path.Value, `"`))
			}
			if tc.wantImport != "" && !slices.Contains(imports, tc.wantImport) {
				t.Errorf("main.go imports %q, want %s", imports, tc.wantImport)
			}
			if got := firstCallOfMain(f); got != tc.wantCall+`("greeter")` {
				t.Errorf("main's first statement is %q, want %s(\"greeter\")", got, tc.wantCall)
			}
			own := filepath.Join(dir, "functions", "greeter", "logging.go")
			_, err = parser.ParseFile(fset, own, nil, 0)
			if tc.wantLogging && err != nil {
				t.Errorf("logging.go: %v", err)
			}
			if !tc.wantLogging && !errors.Is(err, fs.ErrNotExist) {
				t.Errorf("logging.go written in the platform's module (%v); its logging package is the one to use", err)
			}
		})
	}
}

// firstCallOfMain renders main's first statement when it is a call with literal arguments,
// e.g. logging.Setup("greeter").
func firstCallOfMain(f *ast.File) string {
	for _, d := range f.Decls {
		fd, ok := d.(*ast.FuncDecl)
		if !ok || fd.Name.Name != "main" || len(fd.Body.List) == 0 {
			continue
		}
		st, ok := fd.Body.List[0].(*ast.ExprStmt)
		if !ok {
			return ""
		}
		call, ok := st.X.(*ast.CallExpr)
		if !ok {
			return ""
		}
		var fun string
		switch fn := call.Fun.(type) {
		case *ast.Ident:
			fun = fn.Name
		case *ast.SelectorExpr:
			if x, ok := fn.X.(*ast.Ident); ok {
				fun = x.Name + "." + fn.Sel.Name
			}
		}
		var args []string
		for _, a := range call.Args {
			if lit, ok := a.(*ast.BasicLit); ok {
				args = append(args, lit.Value)
			}
		}
		return fun + "(" + strings.Join(args, ", ") + ")"
	}
	return ""
}
