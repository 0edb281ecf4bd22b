package embedded

import (
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
)

// The local state of `knfaas up` has two parts:
//
//	<state dir>/dev-secrets.json      persistent: development secrets, kept across runs (0600)
//	<state dir>/runs/<pid>-<rand>/    per run: projected volumes, instance files (HOME)
//	<state dir>/runs/<pid>-<rand>.lock
//
// A run holds an exclusive flock on its .lock file for its whole life. The kernel drops the
// lock when the process dies, however it dies, so a run directory whose lock can be taken
// belongs to a run that is gone: the next start removes it. A live run's lock cannot be
// taken, so its directory is never removed by another start.

// DevSecretsFile is the name of the development secrets file in the state directory.
const DevSecretsFile = "dev-secrets.json"

// RunsDir is the name of the folder under the state directory that holds per-run directories.
const RunsDir = "runs"

const lockSuffix = ".lock"

// runName is the name of a per-run directory: the pid and 8 random hex digits. Nothing else
// under the runs directory is ever removed, even when --run-dir points at a shared folder.
var runName = regexp.MustCompile(`^[0-9]+-[0-9a-f]{8}$`)

// DefaultStateDir is $XDG_STATE_HOME/knfaas, or ~/.local/state/knfaas.
func DefaultStateDir() (string, error) {
	if d := os.Getenv("XDG_STATE_HOME"); d != "" && filepath.IsAbs(d) {
		return filepath.Join(d, "knfaas"), nil
	}
	home, err := os.UserHomeDir()
	if err != nil {
		return "", fmt.Errorf("no state directory (set --state-dir): %w", err)
	}
	return filepath.Join(home, ".local", "state", "knfaas"), nil
}

// RunDir is the per-run directory of one `knfaas up`: projected volumes and instance files.
// It is removed by Remove and, after a crash, by the next NewRunDir under the same parent.
type RunDir struct {
	// Path is the directory.
	Path     string
	lockPath string
	lock     *os.File
}

// NewRunDir first removes the per-run directories under parent whose runs are gone (see
// RemoveStaleRuns), then creates and locks a new one. removed lists what was cleaned.
func NewRunDir(parent string) (run *RunDir, removed []string, err error) {
	if err := os.MkdirAll(parent, 0o700); err != nil {
		return nil, nil, fmt.Errorf("creating the runs directory: %w", err)
	}
	if removed, err = RemoveStaleRuns(parent); err != nil {
		return nil, removed, err
	}
	for attempt := 0; attempt < 10; attempt++ {
		name := strconv.Itoa(os.Getpid()) + "-" + randomHex(4)
		lockPath := filepath.Join(parent, name+lockSuffix)
		f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE|os.O_EXCL, 0o600)
		if errors.Is(err, os.ErrExist) {
			continue
		}
		if err != nil {
			return nil, removed, fmt.Errorf("creating the run lock: %w", err)
		}
		// A concurrent start may have judged the fresh lock file stale and taken it first; then
		// it is (being) removed and another name is tried.
		if ok, err := lockIfStillAt(f, lockPath); err != nil || !ok {
			f.Close()
			if err != nil {
				return nil, removed, err
			}
			continue
		}
		_, _ = fmt.Fprintf(f, "%d\n", os.Getpid())
		dir := filepath.Join(parent, name)
		if err := os.Mkdir(dir, 0o700); err != nil {
			f.Close()
			_ = os.Remove(lockPath)
			return nil, removed, fmt.Errorf("creating the run directory: %w", err)
		}
		return &RunDir{Path: dir, lockPath: lockPath, lock: f}, removed, nil
	}
	return nil, removed, fmt.Errorf("creating a run directory under %s: no free name after 10 attempts", parent)
}

// Remove deletes the run directory, then its lock.
func (d *RunDir) Remove() error {
	err := os.RemoveAll(d.Path)
	if err == nil {
		err = os.Remove(d.lockPath)
	}
	d.lock.Close()
	if err != nil {
		return fmt.Errorf("removing the run directory: %w", err)
	}
	return nil
}

// RemoveStaleRuns removes the per-run directories under parent whose owning run is gone (its
// lock is free) and returns their paths. Directories of live runs are left alone.
func RemoveStaleRuns(parent string) ([]string, error) {
	entries, err := os.ReadDir(parent)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the runs directory: %w", err)
	}
	names := map[string]bool{}
	for _, e := range entries {
		n := e.Name()
		switch {
		case strings.HasSuffix(n, lockSuffix) && runName.MatchString(strings.TrimSuffix(n, lockSuffix)):
			names[strings.TrimSuffix(n, lockSuffix)] = true
		case e.IsDir() && runName.MatchString(n):
			names[n] = true
		}
	}
	var removed []string
	var errs []error
	for name := range names {
		ok, err := removeIfStale(parent, name)
		if err != nil {
			errs = append(errs, err)
		}
		if ok {
			removed = append(removed, filepath.Join(parent, name))
		}
	}
	return removed, errors.Join(errs...)
}

// removeIfStale removes parent/name and its lock when no live run holds the lock. A directory
// without a lock file is stale too: a run creates its lock before its directory and removes
// its directory before its lock.
func removeIfStale(parent, name string) (bool, error) {
	lockPath := filepath.Join(parent, name+lockSuffix)
	f, err := os.OpenFile(lockPath, os.O_RDWR|os.O_CREATE, 0o600)
	if err != nil {
		return false, fmt.Errorf("opening the lock of run %s: %w", name, err)
	}
	defer f.Close()
	ok, err := lockIfStillAt(f, lockPath)
	if err != nil || !ok {
		return false, err
	}
	if err := os.RemoveAll(filepath.Join(parent, name)); err != nil {
		return false, fmt.Errorf("removing stale run %s: %w", name, err)
	}
	if err := os.Remove(lockPath); err != nil && !errors.Is(err, os.ErrNotExist) {
		return false, fmt.Errorf("removing the lock of stale run %s: %w", name, err)
	}
	return true, nil
}

// lockIfStillAt takes f's lock without waiting and checks that f is still the file at path.
func lockIfStillAt(f *os.File, path string) (bool, error) {
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return false, nil
		}
		return false, fmt.Errorf("locking %s: %w", filepath.Base(path), err)
	}
	held, err1 := f.Stat()
	atPath, err2 := os.Stat(path)
	if err1 != nil || err2 != nil || !os.SameFile(held, atPath) {
		// Removed (or replaced) by whoever held the lock before us.
		_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
		return false, nil
	}
	return true, nil
}

func randomHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b) // never fails (crypto/rand crashes the program instead)
	return hex.EncodeToString(b)
}
