package functions_test

import (
	"go/ast"
	"go/parser"
	"go/token"
	"os"
	"path/filepath"
	"reflect"
	"strconv"
	"strings"
	"testing"
)

// TestREADMEsListEveryVariable reads each function's Config (the envconfig tags) and its
// README's configuration table: every variable must have a row, and a default stated in a tag
// must be the one the row gives, so that the default is stated once in code and the README
// cannot drift from it. Platform functions must have a Config; examples may do without.
func TestREADMEsListEveryVariable(t *testing.T) {
	platform, err := filepath.Glob("*/README.md")
	if err != nil {
		t.Fatal(err)
	}
	if len(platform) < 7 {
		t.Fatalf("found only %d function READMEs", len(platform))
	}
	examples, err := filepath.Glob("../examples/*/functions/*/README.md")
	if err != nil {
		t.Fatal(err)
	}
	for i, readme := range append(platform, examples...) {
		dir := filepath.Dir(readme)
		vars := configVariables(t, dir)
		if len(vars) == 0 && i < len(platform) {
			t.Errorf("%s: no Config with envconfig tags", dir)
		}
		rows := tableRows(t, readme)
		for name, def := range vars {
			t.Run(dir+"/"+name, func(t *testing.T) {
				row, ok := rowNaming(rows, name)
				if !ok {
					t.Fatalf("%s has no table row for %s", readme, name)
				}
				if def != "" && !strings.Contains(row[1], "`"+def+"`") {
					t.Errorf("%s gives %s the default %q, the tag %q", readme, name, row[1], def)
				}
			})
		}
	}
}

// configVariables returns the envconfig variables of the Config struct in dir, each with its
// tag default ("" when none).
func configVariables(t *testing.T, dir string) map[string]string {
	t.Helper()
	files, err := filepath.Glob(filepath.Join(dir, "*.go"))
	if err != nil {
		t.Fatal(err)
	}
	vars := map[string]string{}
	for _, path := range files {
		if strings.HasSuffix(path, "_test.go") {
			continue
		}
		f, err := parser.ParseFile(token.NewFileSet(), path, nil, 0)
		if err != nil {
			t.Fatal(err)
		}
		ast.Inspect(f, func(n ast.Node) bool {
			ts, ok := n.(*ast.TypeSpec)
			if !ok || ts.Name.Name != "Config" {
				return true
			}
			st, ok := ts.Type.(*ast.StructType)
			if !ok {
				return false
			}
			for _, field := range st.Fields.List {
				if field.Tag == nil {
					continue
				}
				tag, err := strconv.Unquote(field.Tag.Value)
				if err != nil {
					t.Fatal(err)
				}
				if name := reflect.StructTag(tag).Get("envconfig"); name != "" {
					vars[name] = reflect.StructTag(tag).Get("default")
				}
			}
			return false
		})
	}
	return vars
}

// tableRows returns the cells of every Markdown table row in path.
func tableRows(t *testing.T, path string) [][]string {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var rows [][]string
	for _, line := range strings.Split(string(b), "\n") {
		if strings.HasPrefix(line, "|") {
			rows = append(rows, strings.Split(strings.Trim(line, "|"), "|"))
		}
	}
	return rows
}

// rowNaming returns the row whose first cell names the variable in backquotes.
func rowNaming(rows [][]string, name string) ([]string, bool) {
	for _, r := range rows {
		if len(r) >= 3 && strings.Contains(r[0], "`"+name+"`") {
			return r, true
		}
	}
	return nil, false
}
