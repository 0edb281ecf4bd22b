package runtimetest

import (
	"fmt"
	"strings"
	"testing"
)

// recordingTB records the errors a check reports instead of failing the test.
type recordingTB struct {
	testing.TB
	errors []string
}

func (r *recordingTB) Helper() {}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// raceIn is a race detector report as a function's output reaches the runtime's log: each line
// prefixed with the instance.
func raceIn(prefix, where string) string {
	lines := []string{"==================", "WARNING: DATA RACE", "Write at 0x00c000012345 by goroutine 7:", "  " + where, "", "Previous read at 0x00c000012345 by goroutine 6:", "  main.read()", "=================="}
	return prefix + strings.Join(lines, "\n"+prefix) + "\n"
}

func TestCheckRacesFailsOnAReport(t *testing.T) {
	tests := []struct {
		name      string
		output    string
		wantError string
	}{
		{name: "clean output", output: "listening on http://127.0.0.1:8080\n[e2e/echo-1] ready\n"},
		{name: "race in the runtime", output: "starting\n" + raceIn("", "github.com/knfaas/knfaas/internal/runtime/serving.(*Pool).launch()"), wantError: "1 data race(s)"},
		{name: "races in a function", output: raceIn("[e2e/echo-1] ", "main.handle()") + raceIn("[e2e/echo-1] ", "main.other()"), wantError: "2 data race(s)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tb := &recordingTB{}
			r := &Runtime{t: tb, out: &syncBuffer{}}
			_, _ = r.out.Write([]byte(tc.output))

			r.checkRaces()

			if tc.wantError == "" {
				if len(tb.errors) != 0 {
					t.Fatalf("clean output reported %q", tb.errors)
				}
				return
			}
			if len(tb.errors) != 1 || !strings.Contains(tb.errors[0], tc.wantError) || !strings.Contains(tb.errors[0], "Previous read at") {
				t.Fatalf("errors %q, want one naming %q with the first report", tb.errors, tc.wantError)
			}
		})
	}
}
