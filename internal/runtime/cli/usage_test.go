package cli

import (
	"errors"
	"runtime/debug"
	"strings"
	"testing"
)

// TestUsageErrors: a command line that cannot run exits 2 with the closest commands or flags
// named; a command that ran and failed exits 1.
func TestUsageErrors(t *testing.T) {
	tests := []struct {
		name     string
		args     []string
		wantCode int
		wantErr  []string
	}{
		{name: "mistyped subcommand of a group", args: []string{"dlq", "lst"}, wantCode: ExitUsage,
			wantErr: []string{`unknown command "lst" for "knfaas dlq"`, "did you mean list?"}},
		{name: "mistyped top-level command", args: []string{"verfy"}, wantCode: ExitUsage,
			wantErr: []string{`unknown command "verfy"`, "verify"}},
		{name: "mistyped flag", args: []string{"dlq", "list", "--adr", "x"}, wantCode: ExitUsage,
			wantErr: []string{"unknown flag: --adr", "did you mean --addr?"}},
		{name: "flag prefix", args: []string{"send", "--typ", "x"}, wantCode: ExitUsage,
			wantErr: []string{"did you mean --type?"}},
		{name: "nothing close", args: []string{"send", "--zzzzzz"}, wantCode: ExitUsage,
			wantErr: []string{"unknown flag: --zzzzzz"}},
		{name: "flag value does not parse", args: []string{"dlq", "redrive", "--rate", "fast"}, wantCode: ExitUsage,
			wantErr: []string{"--rate"}},
		{name: "missing argument", args: []string{"process", "show"}, wantCode: ExitUsage,
			wantErr: []string{"accepts 1 arg(s), received 0"}},
		{name: "missing required flag", args: []string{"events", "drop", "--model", "m"}, wantCode: ExitUsage,
			wantErr: []string{`required flag(s) "projector" not set`}},
		{name: "ran and failed", args: []string{"process", "list"}, wantCode: ExitFailure,
			wantErr: []string{"no running knfaas up found"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if got := ExitCode(err); got != tc.wantCode {
				t.Fatalf("exit code %d (error %v), want %d", got, err, tc.wantCode)
			}
			for _, w := range tc.wantErr {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q lacks %q", err, w)
				}
			}
			if strings.Contains(out, "Usage:") {
				t.Errorf("printed the usage:\n%s", out)
			}
		})
	}
	if ExitCode(nil) != ExitOK || ExitCode(errors.New("x")) != ExitFailure {
		t.Error("ExitCode of nil or a plain error")
	}
}

// TestGroupWithoutArgumentsPrintsHelp: `knfaas dlq` alone shows its subcommands and succeeds.
func TestGroupWithoutArgumentsPrintsHelp(t *testing.T) {
	out, err := runCLI(t, "dlq")
	if err != nil || !strings.Contains(out, "redrive") {
		t.Fatalf("err %v, output:\n%s", err, out)
	}
}

func TestReadVersion(t *testing.T) {
	deps := []*debug.Module{
		{Path: "knative.dev/serving", Version: "v0.50.0"},
		{Path: "knative.dev/eventing", Version: "v0.50.0", Replace: &debug.Module{Path: "knative.dev/eventing", Version: "v0.50.1"}},
		{Path: "k8s.io/api", Version: "v0.35.7"},
		{Path: "k8s.io/apimachinery", Version: "v0.35.7"},
	}
	tests := []struct {
		name      string
		bi        *debug.BuildInfo
		ok        bool
		want      versionInfo
		wantShort string
	}{
		{name: "release build", ok: true,
			bi: &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "v1.2.3"}, Deps: deps,
				Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "0123456789abcdef0123"}, {Key: "vcs.time", Value: "2026-01-02T03:04:05Z"}, {Key: "vcs.modified", Value: "false"}}},
			want: versionInfo{Version: "v1.2.3", Revision: "0123456789abcdef0123", Time: "2026-01-02T03:04:05Z", Go: "go1.26.8",
				Serving: "v0.50.0", Eventing: "v0.50.1", Kubernetes: "v0.35.7"},
			wantShort: "v1.2.3 (0123456789ab)"},
		{name: "checkout with changes", ok: true,
			bi: &debug.BuildInfo{GoVersion: "go1.26.8", Main: debug.Module{Version: "(devel)"},
				Settings: []debug.BuildSetting{{Key: "vcs.revision", Value: "abc"}, {Key: "vcs.modified", Value: "true"}}},
			want:      versionInfo{Version: "(devel)", Revision: "abc", Modified: true, Go: "go1.26.8"},
			wantShort: "(devel) (abc, modified)"},
		{name: "no build information", want: versionInfo{Version: "unknown (no build information)"}, wantShort: "unknown (no build information)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got := readVersion(tc.bi, tc.ok)
			if got != tc.want {
				t.Errorf("readVersion = %+v, want %+v", got, tc.want)
			}
			if s := got.short(); s != tc.wantShort {
				t.Errorf("short = %q, want %q", s, tc.wantShort)
			}
		})
	}
}

// TestVersionCommand: `version` prints this build's version in each format (a test binary's
// build information lists no dependencies, so TestReadVersion covers the Knative and
// Kubernetes rows); --version prints one line.
func TestVersionCommand(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"table", []string{"version"}, []string{"Version:", "Go:"}},
		{"json", []string{"version", "-o", "json"}, []string{`"version": "`, `"go": "go1.`}},
		{"yaml", []string{"version", "-o", "yaml"}, []string{"version: ", "go: go1."}},
		{"flag", []string{"--version"}, []string{"knfaas "}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
		})
	}
}

// TestCompletion: the shell completion (cobra's completion command) offers the values of -o
// and --webhook, and the subcommands of a group.
func TestCompletion(t *testing.T) {
	tests := []struct {
		name string
		args []string
		want []string
	}{
		{"output formats", []string{"__complete", "dlq", "list", "-o", ""}, []string{"table", "json", "yaml"}},
		{"webhook providers", []string{"__complete", "send", "--webhook", ""}, []string{"github", "stripe", "slack", "svix"}},
		{"subcommands", []string{"__complete", "dlq", ""}, []string{"list", "show", "redrive", "purge"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if err != nil {
				t.Fatal(err)
			}
			for _, w := range tc.want {
				if !strings.Contains(out, w+"\n") && !strings.Contains(out, w+"\t") {
					t.Errorf("completions lack %q:\n%s", w, out)
				}
			}
		})
	}
}
