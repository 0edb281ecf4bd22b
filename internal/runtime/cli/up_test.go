package cli

import (
	"strings"
	"testing"
)

// TestUpRejectsMalformedFlags: a bad value stops `knfaas up` before it loads or starts anything,
// with an error naming the flag.
func TestUpRejectsMalformedFlags(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantFlag string
	}{
		{name: "no rounds before parking", args: []string{"--park-after", "0"}, wantFlag: "--park-after"},
		{name: "negative rounds", args: []string{"--park-after", "-2"}, wantFlag: "--park-after"},
		{name: "unknown log level", args: []string{"--log-level", "loud"}, wantFlag: "--log-level"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			_, err := runCLI(t, append([]string{"up", "--defaults=false", "-f", "no-such-dir", "--addr", "127.0.0.1:0"}, tc.args...)...)
			if err == nil || !strings.Contains(err.Error(), tc.wantFlag) {
				t.Fatalf("up %v: %v, want an error naming %s", tc.args, err, tc.wantFlag)
			}
		})
	}
}
