package runtimetest

import (
	"fmt"
	"os"
	"os/exec"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
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

// TestInstancePIDsFindsTheServiceChildren stands a shell in for knfaas up: its children are the
// instances, told apart by K_SERVICE; a process of the same service that is not its child (a
// grandchild) is not one.
func TestInstancePIDsFindsTheServiceChildren(t *testing.T) {
	if _, err := os.Stat("/proc/self/stat"); err != nil {
		t.Skip("needs /proc")
	}
	script := `K_SERVICE=thumbnail sleep 60 & echo $!
K_SERVICE=thumbnail sleep 60 & echo $!
K_SERVICE=thumbnail-extra sleep 60 & echo $!
K_SERVICE=recorder sh -c 'K_SERVICE=thumbnail sleep 60 & wait' & echo $!
wait`
	cmd := exec.Command("sh", "-c", script)
	out, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = cmd.Process.Kill(); _ = cmd.Wait() })
	var children []int
	buf := make([]byte, 0, 128)
	for len(children) < 4 {
		chunk := make([]byte, 64)
		n, err := out.Read(chunk)
		if err != nil {
			t.Fatalf("reading the children's pids: %v", err)
		}
		buf = append(buf, chunk[:n]...)
		lines := strings.Split(string(buf), "\n")
		children = children[:0]
		for _, l := range lines[:len(lines)-1] {
			pid, err := strconv.Atoi(l)
			if err != nil {
				t.Fatalf("pid %q: %v", l, err)
			}
			children = append(children, pid)
		}
	}
	t.Cleanup(func() {
		for _, pid := range children {
			if p, err := os.FindProcess(pid); err == nil {
				_ = p.Kill()
			}
		}
	})
	r := &Runtime{t: t, cmd: cmd}
	tests := []struct {
		name    string
		service string
		want    []int
	}{
		{name: "two instances", service: "thumbnail", want: children[:2]},
		{name: "a name that extends another", service: "thumbnail-extra", want: children[2:3]},
		{name: "one instance", service: "recorder", want: children[3:4]},
		{name: "no instance", service: "webhook"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var got []int
			// The shell forks before the child sets its environment: wait for the exec.
			deadline := time.Now().Add(5 * time.Second)
			for {
				got = r.InstancePIDs(tc.service)
				slices.Sort(got)
				if slices.Equal(got, tc.want) || time.Now().After(deadline) {
					break
				}
				time.Sleep(20 * time.Millisecond)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("InstancePIDs(%q) = %v, want %v", tc.service, got, tc.want)
			}
		})
	}
}
