package runtimetest

import (
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
)

func TestBinaryDirRemovesOnlyDirectoriesOfEndedProcesses(t *testing.T) {
	t.Setenv("TMPDIR", t.TempDir())
	prefix := "knfaas-bindir-test-"
	// A process that has ended: run one and wait for it.
	done := exec.Command("true")
	if err := done.Run(); err != nil {
		t.Fatal(err)
	}
	ended := filepath.Join(os.TempDir(), prefix+strconv.Itoa(done.Process.Pid)+"-x")
	alive := filepath.Join(os.TempDir(), prefix+strconv.Itoa(os.Getppid())+"-y")
	other := filepath.Join(os.TempDir(), prefix+"not-a-pid")
	for _, d := range []string{ended, alive, other} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	dir, err := BinaryDir(prefix)
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		dir  string
		want bool
	}{
		{"an ended process's directory is removed", ended, false},
		{"a running process's directory is kept", alive, true},
		{"a name without a process id is kept", other, true},
		{"the new directory exists", dir, true},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			_, err := os.Stat(tt.dir)
			if exists := err == nil; exists != tt.want {
				t.Fatalf("%s exists = %v, want %v", tt.dir, exists, tt.want)
			}
		})
	}
	if pid, ok := binaryDirPID(filepath.Base(dir), prefix); !ok || pid != os.Getpid() {
		t.Fatalf("new directory %s names pid %d (%v), want %d", dir, pid, ok, os.Getpid())
	}
}
