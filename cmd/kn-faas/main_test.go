package main

import (
	"bytes"
	"strings"
	"testing"
)

func TestUsageReadsAsKnPlugin(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want string
	}{
		{"root", []string{"--help"}, "kn faas [command]"},
		{"dlq list", []string{"dlq", "list", "--help"}, "kn faas dlq list [letter-id...]"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			root := newRootCommand()
			var out bytes.Buffer
			root.SetOut(&out)
			root.SetArgs(tc.args)
			if err := root.Execute(); err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(out.String(), tc.want) {
				t.Errorf("help does not show %q:\n%s", tc.want, out.String())
			}
		})
	}
}
