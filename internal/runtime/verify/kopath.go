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

// checkKoImage checks that importPath (a ko:// image without the scheme) is a package main in
// a function folder of this module or of one of Options.Modules. It does not compile it:
// hack/verify-ko.sh does.
func (c *checker) checkKoImage(importPath string) error {
	root, module := c.opts.ModuleRoot, c.opts.ModulePath
	if !strings.HasPrefix(importPath, module+"/") {
		module = ""
	}
	for m, dir := range c.opts.Modules {
		if strings.HasPrefix(importPath, m+"/") && len(m) > len(module) {
			root, module = dir, m
		}
	}
	rel, ok := strings.CutPrefix(importPath, module+"/")
	if !ok {
		return fmt.Errorf("not a package of module %s", c.opts.ModulePath)
	}
	if !functionPath.MatchString(rel) {
		return fmt.Errorf("%s is not a function folder (functions/<name> or examples/<domain>/functions/<name>)", rel)
	}
	pkg, err := build.Default.ImportDir(filepath.Join(root, filepath.FromSlash(rel)), 0)
	if err != nil {
		return fmt.Errorf("no buildable Go package in %s: %w", rel, err)
	}
	if pkg.Name != "main" {
		return fmt.Errorf("%s is package %s, not package main", rel, pkg.Name)
	}
	return nil
}
