package runtimetest

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"syscall"
)

// BinaryDir makes a directory for the binaries one test process builds once and keeps until it
// exits (a t.TempDir would be gone after the first test). Its name carries the process id, and
// it removes the directories of the same prefix whose process has ended, so repeated runs do not
// fill the disk with binaries nobody can remove when the test process exits.
func BinaryDir(prefix string) (string, error) {
	parent := os.TempDir()
	if old, err := filepath.Glob(filepath.Join(parent, prefix+"*")); err == nil {
		for _, dir := range old {
			if pid, ok := binaryDirPID(filepath.Base(dir), prefix); ok && !processAlive(pid) {
				_ = os.RemoveAll(dir)
			}
		}
	}
	dir, err := os.MkdirTemp(parent, fmt.Sprintf("%s%d-", prefix, os.Getpid()))
	if err != nil {
		return "", fmt.Errorf("binary directory: %w", err)
	}
	return dir, nil
}

// binaryDirPID reads the process id from a name BinaryDir made (prefix, pid, "-", random).
func binaryDirPID(name, prefix string) (int, bool) {
	digits, _, ok := strings.Cut(strings.TrimPrefix(name, prefix), "-")
	if !ok {
		return 0, false
	}
	pid, err := strconv.Atoi(digits)
	return pid, err == nil && pid > 0
}

// processAlive reports whether a process with this id exists (signal 0 checks without sending).
func processAlive(pid int) bool {
	err := syscall.Kill(pid, 0)
	return err == nil || errors.Is(err, syscall.EPERM)
}
