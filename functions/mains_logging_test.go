package functions_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"path/filepath"
	"testing"
)

// TestEveryMainSetsUpLogging reads every function's main (platform functions, examples, test
// fixtures): its first statement must be logging.Setup(<name>), so that the function logs in
// the one format LOG_FORMAT/LOG_LEVEL choose, func-go's and the log package's lines included,
// from its first line on.
func TestEveryMainSetsUpLogging(t *testing.T) {
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
			f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
			if err != nil {
				t.Fatal(err)
			}
			for _, d := range f.Decls {
				fd, ok := d.(*ast.FuncDecl)
				if !ok || fd.Name.Name != "main" || fd.Recv != nil {
					continue
				}
				if len(fd.Body.List) > 0 {
					if st, ok := fd.Body.List[0].(*ast.ExprStmt); ok && isCall(st.X, "logging", "Setup") {
						return
					}
				}
				t.Errorf("%s: want logging.Setup(\"<name>\") as the first statement of main", path)
				return
			}
			t.Errorf("%s: no func main", path)
		})
	}
}
