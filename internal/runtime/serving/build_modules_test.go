package serving

import "testing"

func TestBuilderModuleDir(t *testing.T) {
	b := &Builder{Dir: "/platform", Modules: map[string]string{"example.com/app": "/app", "example.com/app/sub": "/sub"}}
	tests := []struct {
		importPath, want string
	}{
		{"github.com/knfaas/knfaas/functions/timer", "/platform"},
		{"example.com/app/functions/greeter", "/app"},
		{"example.com/app/sub/functions/x", "/sub"},
		{"example.com/application/functions/x", "/platform"},
	}
	for _, tc := range tests {
		t.Run(tc.importPath, func(t *testing.T) {
			if got := b.ModuleDir(tc.importPath); got != tc.want {
				t.Errorf("ModuleDir(%s) = %s, want %s", tc.importPath, got, tc.want)
			}
		})
	}
}
