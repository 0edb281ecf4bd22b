// Package functions_test checks what the main of every function binary must do.
package functions_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"strconv"
	"testing"
)

// funcGoRuntimes are the func-go packages whose Start runs a function; it returns the error
// of the function's own Start.
var funcGoRuntimes = map[string]bool{"knative.dev/func-go/http": true, "knative.dev/func-go/cloudevents": true}

// TestEveryMainExitsNonZeroWhenStartFails reads every function's main (platform functions,
// examples, test fixtures): each must check the error func-go's Start returns and exit with
// log.Fatal or os.Exit, so that a function whose configuration is wrong fails its revision
// instead of exiting 0. functions/query and functions/webhook run their real main to show it.
func TestEveryMainExitsNonZeroWhenStartFails(t *testing.T) {
	var mains []string
	for _, pattern := range []string{"*/main.go", "../examples/*/functions/*/main.go", "../test/functions/*/main.go"} {
		m, err := filepath.Glob(pattern)
		if err != nil {
			t.Fatal(err)
		}
		mains = append(mains, m...)
	}
	if len(mains) < 13 {
		t.Fatalf("found only %d function mains: %v", len(mains), mains)
	}
	for _, path := range mains {
		t.Run(path, func(t *testing.T) {
			problem := checkMain(t, path)
			if problem != "" {
				t.Errorf("%s: %s", path, problem)
			}
		})
	}
}

// checkMain returns what is wrong with the main function in path, or "".
func checkMain(t *testing.T, path string) string {
	fset := token.NewFileSet()
	f, err := parser.ParseFile(fset, path, nil, 0)
	if err != nil {
		t.Fatal(err)
	}
	runtime := ""
	for _, imp := range f.Imports {
		p, _ := strconv.Unquote(imp.Path.Value)
		if funcGoRuntimes[p] {
			runtime = filepath.Base(p)
			if imp.Name != nil {
				runtime = imp.Name.Name
			}
		}
	}
	if runtime == "" {
		return "imports no func-go runtime"
	}
	var main *ast.FuncDecl
	for _, d := range f.Decls {
		if fd, ok := d.(*ast.FuncDecl); ok && fd.Name.Name == "main" && fd.Recv == nil {
			main = fd
		}
	}
	if main == nil {
		return "no func main"
	}
	checked, ignored := false, false
	ast.Inspect(main.Body, func(n ast.Node) bool {
		switch n := n.(type) {
		case *ast.ExprStmt:
			if isCall(n.X, runtime, "Start") {
				ignored = true
			}
		case *ast.IfStmt:
			init, ok := n.Init.(*ast.AssignStmt)
			if ok && len(init.Rhs) == 1 && isCall(init.Rhs[0], runtime, "Start") && exits(n.Body) {
				checked = true
			}
		}
		return true
	})
	switch {
	case ignored:
		return runtime + ".Start's error is ignored, so a failed Start exits 0"
	case !checked:
		return "want: if err := " + runtime + ".Start(New()); err != nil { log.Fatal(err) }"
	}
	return ""
}

// isCall reports whether e calls pkg.name.
func isCall(e ast.Expr, pkg, name string) bool {
	call, ok := e.(*ast.CallExpr)
	if !ok {
		return false
	}
	sel, ok := call.Fun.(*ast.SelectorExpr)
	if !ok {
		return false
	}
	id, ok := sel.X.(*ast.Ident)
	return ok && id.Name == pkg && sel.Sel.Name == name
}

// exits reports whether the block calls log.Fatal, log.Fatalf, log.Fatalln or os.Exit.
func exits(b *ast.BlockStmt) bool {
	found := false
	ast.Inspect(b, func(n ast.Node) bool {
		if e, ok := n.(ast.Expr); ok {
			for _, fn := range []string{"Fatal", "Fatalf", "Fatalln"} {
				found = found || isCall(e, "log", fn)
			}
			found = found || isCall(e, "os", "Exit")
		}
		return !found
	})
	return found
}
