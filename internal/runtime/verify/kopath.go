package verify

import (
	"fmt"
	"go/build"
	"path/filepath"
	"regexp"
	"strings"
)

// functionPath is where a function's package main lives, relative to the module root: the
// platform's functions/<name>, or an example's examples/<domain>/functions/<name>.
var functionPath = regexp.MustCompile(`^(functions|examples/[a-z0-9][a-z0-9-]*/functions)/[a-z0-9][a-z0-9-]*$`)

// checkKoImage checks that importPath (a ko:// image without the scheme) is a package main of
// this module in a function folder. It does not compile it: hack/verify-ko.sh does.
func (c *checker) checkKoImage(importPath string) error {
	rel, ok := strings.CutPrefix(importPath, c.opts.ModulePath+"/")
	if !ok {
		return fmt.Errorf("not a package of module %s", c.opts.ModulePath)
	}
	if !functionPath.MatchString(rel) {
		return fmt.Errorf("%s is not a function folder (functions/<name> or examples/<domain>/functions/<name>)", rel)
	}
	pkg, err := build.Default.ImportDir(filepath.Join(c.opts.ModuleRoot, filepath.FromSlash(rel)), 0)
	if err != nil {
		return fmt.Errorf("no buildable Go package in %s: %w", rel, err)
	}
	if pkg.Name != "main" {
		return fmt.Errorf("%s is package %s, not package main", rel, pkg.Name)
	}
	return nil
}
