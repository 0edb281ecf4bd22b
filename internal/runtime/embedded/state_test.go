package embedded

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// crash simulates the death of a run's process: the kernel drops its lock, nothing is removed.
func (d *RunDir) crash() { d.lock.Close() }

func TestRunDirLifecycle(t *testing.T) {
	state := t.TempDir()
	runs := filepath.Join(state, RunsDir)
	persistent := filepath.Join(state, DevSecretsFile)
	if err := os.WriteFile(persistent, []byte(`{"secrets":[]}`), 0o600); err != nil {
		t.Fatal(err)
	}
	project := func(d *RunDir) string {
		p := filepath.Join(d.Path, "ns", "fn", "volumes", "secrets", "token")
		if err := os.MkdirAll(filepath.Dir(p), 0o700); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("s3cret"), 0o600); err != nil {
			t.Fatal(err)
		}
		return p
	}
	exists := func(p string) bool { _, err := os.Stat(p); return err == nil }

	// A run that crashed leaves its projected secrets behind.
	crashed, removed, err := NewRunDir(runs)
	if err != nil || len(removed) != 0 {
		t.Fatalf("first run: %v, removed %v", err, removed)
	}
	crashedSecret := project(crashed)
	crashed.crash()

	// A live run, started after it (and not yet cleaned), must never be removed.
	live, removed, err := NewRunDir(runs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{crashed.Path}) {
		t.Errorf("second start removed %v, want the crashed run %s", removed, crashed.Path)
	}
	liveSecret := project(live)
	if exists(crashedSecret) {
		t.Error("the crashed run's projected secret is still there")
	}

	// A directory without a lock file (its run died mid-cleanup) is stale as well.
	orphan := filepath.Join(runs, "123-0badf00d")
	if err := os.MkdirAll(filepath.Join(orphan, "volumes"), 0o700); err != nil {
		t.Fatal(err)
	}
	// What is not named like a run is never touched (--run-dir may name a shared folder).
	foreign := []string{filepath.Join(runs, "photos"), filepath.Join(runs, "123-notarun")}
	for _, d := range foreign {
		if err := os.Mkdir(d, 0o700); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.WriteFile(filepath.Join(runs, "notes.lock"), nil, 0o600); err != nil {
		t.Fatal(err)
	}

	next, removed, err := NewRunDir(runs)
	if err != nil {
		t.Fatal(err)
	}
	if !slices.Equal(removed, []string{orphan}) {
		t.Errorf("third start removed %v, want only %s", removed, orphan)
	}
	if !exists(liveSecret) {
		t.Error("a start removed the files of a live run")
	}
	if next.Path == live.Path {
		t.Error("two live runs share a directory")
	}

	for _, d := range foreign {
		if !exists(d) {
			t.Errorf("a start removed %s, which is not a run directory", d)
		}
		if err := os.Remove(d); err != nil {
			t.Fatal(err)
		}
	}
	if err := os.Remove(filepath.Join(runs, "notes.lock")); err != nil {
		t.Fatal(err)
	}

	// A normal exit removes the per-run part and keeps the persistent part.
	for _, d := range []*RunDir{live, next} {
		if err := d.Remove(); err != nil {
			t.Fatal(err)
		}
	}
	left, err := os.ReadDir(runs)
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != 0 {
		t.Errorf("after clean exits the runs directory holds %v", left)
	}
	if !exists(persistent) {
		t.Error("the development secrets were removed")
	}
	if fi, err := os.Stat(runs); err != nil || fi.Mode().Perm() != 0o700 {
		t.Errorf("runs directory: %v, %v; want mode 0700", fi.Mode().Perm(), err)
	}
}

func TestDefaultStateDir(t *testing.T) {
	tests := []struct {
		name, xdg, home, want string
	}{
		{name: "XDG_STATE_HOME", xdg: "/x/state", home: "/h", want: "/x/state/knfaas"},
		{name: "relative XDG_STATE_HOME is ignored", xdg: "rel", home: "/h", want: "/h/.local/state/knfaas"},
		{name: "home", home: "/h", want: "/h/.local/state/knfaas"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv("XDG_STATE_HOME", tc.xdg)
			t.Setenv("HOME", tc.home)
			got, err := DefaultStateDir()
			if err != nil || got != tc.want {
				t.Errorf("DefaultStateDir() = %q, %v; want %q", got, err, tc.want)
			}
		})
	}
}
