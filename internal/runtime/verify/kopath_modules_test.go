package verify

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// TestKoImageOfAnotherModule: a ko:// path of a module given in Options.Modules is looked up in
// that module's directory; other modules stay refused.
func TestKoImageOfAnotherModule(t *testing.T) {
	app := t.TempDir()
	fn := filepath.Join(app, "functions", "greeter")
	if err := os.MkdirAll(fn, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(fn, "main.go"), []byte("package main\n\nfunc main() {}\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	lib := filepath.Join(app, "functions", "lib")
	if err := os.MkdirAll(lib, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(lib, "lib.go"), []byte("package lib\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	root, err := filepath.Abs("../../..")
	if err != nil {
		t.Fatal(err)
	}
	withApp := Options{ModuleRoot: root, ModulePath: "github.com/knfaas/knfaas", Modules: map[string]string{"example.com/myapp": app}}
	tests := []struct {
		name    string
		opts    Options
		image   string
		wantErr string
	}{
		{"this module", withApp, "github.com/knfaas/knfaas/functions/timer", ""},
		{"the other module", withApp, "example.com/myapp/functions/greeter", ""},
		{"the other module, not main", withApp, "example.com/myapp/functions/lib", "not package main"},
		{"the other module, not a function folder", withApp, "example.com/myapp/cmd/tool", "is not a function folder"},
		{"a module not given", withApp, "example.org/other/functions/x", "not a package of module github.com/knfaas/knfaas"},
		{"other module without Modules", Options{ModuleRoot: root, ModulePath: "github.com/knfaas/knfaas"}, "example.com/myapp/functions/greeter", "not a package of module"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			c := &checker{opts: tc.opts}
			err := c.checkKoImage(tc.image)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("checkKoImage(%s) = %v", tc.image, err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("checkKoImage(%s) = %v, want %q", tc.image, err, tc.wantErr)
			}
		})
	}
}
