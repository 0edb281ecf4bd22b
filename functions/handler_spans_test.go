package functions_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// innerHandlers are CloudEvents Handle methods that no func-go runtime calls directly: another
// Handle, checked here, runs them inside its span.
var innerHandlers = map[string]string{
	"Payment.Handle": "run by food.Service.Handle",
	"Kitchen.Handle": "run by food.Service.Handle",
	"Courier.Handle": "run by food.Service.Handle",
}

// TestEveryHandlerIsASpan reads the platform functions and the examples: every CloudEvents
// handler (a Handle method taking an event.Event) and every HTTP handler that decodes a
// CloudEvent (cehttp.NewEventFromHTTPRequest) must run the event through tracing.HandleEvent,
// so that each function's handling is the span "handle <type>" in the event's trace.
func TestEveryHandlerIsASpan(t *testing.T) {
	var files []string
	for _, root := range []string{".", "../examples"} {
		err := filepath.WalkDir(root, func(path string, d os.DirEntry, err error) error {
			if err != nil {
				return err
			}
			if !d.IsDir() && strings.HasSuffix(path, ".go") && !strings.HasSuffix(path, "_test.go") {
				files = append(files, path)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}
	checked := 0
	for _, path := range files {
		fset := token.NewFileSet()
		f, err := parser.ParseFile(fset, path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		for _, decl := range f.Decls {
			fn, ok := decl.(*ast.FuncDecl)
			if !ok || fn.Body == nil {
				continue
			}
			name := funcName(fn)
			kind := ""
			switch {
			case fn.Name.Name == "Handle" && fn.Recv != nil && takesEvent(fn):
				kind = "CloudEvents handler"
			case calls(fn.Body, "cehttp", "NewEventFromHTTPRequest"):
				kind = "HTTP handler decoding a CloudEvent"
			default:
				continue
			}
			if why, ok := innerHandlers[name]; ok {
				t.Logf("%s: %s %s: %s", path, kind, name, why)
				continue
			}
			checked++
			t.Run(path+":"+name, func(t *testing.T) {
				if !calls(fn.Body, "tracing", "HandleEvent") {
					t.Errorf("%s %s does not run the event through tracing.HandleEvent", kind, name)
				}
			})
		}
	}
	if checked < 10 {
		t.Fatalf("checked only %d handlers", checked)
	}
}

// funcName is Type.Method for a method, the name for a function.
func funcName(fn *ast.FuncDecl) string {
	if fn.Recv == nil || len(fn.Recv.List) == 0 {
		return fn.Name.Name
	}
	typ := fn.Recv.List[0].Type
	if star, ok := typ.(*ast.StarExpr); ok {
		typ = star.X
	}
	if idx, ok := typ.(*ast.IndexExpr); ok { // a generic receiver: Service[H]
		typ = idx.X
	}
	if id, ok := typ.(*ast.Ident); ok {
		return id.Name + "." + fn.Name.Name
	}
	return fn.Name.Name
}

// takesEvent reports whether fn's last parameter is an event.Event.
func takesEvent(fn *ast.FuncDecl) bool {
	params := fn.Type.Params.List
	if len(params) == 0 {
		return false
	}
	sel, ok := params[len(params)-1].Type.(*ast.SelectorExpr)
	return ok && sel.Sel.Name == "Event" && isIdent(sel.X, "event")
}

// calls reports whether body calls pkg.name.
func calls(body *ast.BlockStmt, pkg, name string) bool {
	found := false
	ast.Inspect(body, func(n ast.Node) bool {
		if call, ok := n.(*ast.CallExpr); ok {
			if sel, ok := call.Fun.(*ast.SelectorExpr); ok && sel.Sel.Name == name && isIdent(sel.X, pkg) {
				found = true
			}
		}
		return !found
	})
	return found
}

func isIdent(e ast.Expr, name string) bool {
	id, ok := e.(*ast.Ident)
	return ok && id.Name == name
}
