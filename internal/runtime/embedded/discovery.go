package embedded

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"syscall"
	"time"
)

// Discovery: once a run listens, it writes where it can be reached into its run directory,
//
//	<state dir>/runs/<pid>-<rand>/endpoints.json   (0600, in the 0700 run directory)
//
// so that the CLI (send, dlq, process, events) finds it without an address copied by hand.
// The record lives and dies with the run directory: removed on a clean exit, and judged by the
// run's lock otherwise. A record whose lock is free belongs to a run that is gone (it crashed
// or was killed) and is reported as stale, never used.

// EndpointsFile is the name of the discovery record in a run directory.
const EndpointsFile = "endpoints.json"

// Endpoints is where a running `knfaas up` can be reached.
type Endpoints struct {
	// Addr is the public listener (host:port): ingress, broker ingress, /metrics.
	Addr string `json:"addr"`
	// Internal is the run's capability base on the internal listener,
	// http://127.0.0.1:<port>/_knfaas/<token>: …/services/<ns>/<name>/ and …/brokers/<ns>/<name>.
	Internal string `json:"internal"`
	// RedisURL is the Redis the run uses (the embedded one, or REDIS_URL as given).
	RedisURL string `json:"redisURL"`
	// PID is the process id of the run.
	PID int `json:"pid"`
	// Started is when the run started listening.
	Started time.Time `json:"started"`
	// Logs is the directory of the services' log files (see LogsDir); "" for none.
	Logs string `json:"logs,omitempty"`
}

// endpoints is what this run records once it listens.
func (r *Runtime) endpoints(started time.Time) Endpoints {
	return Endpoints{Addr: r.addr, Internal: r.capabilityBase(), RedisURL: r.redisURL, PID: os.Getpid(), Started: started.UTC(), Logs: r.logsDir()}
}

// WriteEndpoints writes e into the run directory dir, atomically (0600).
func WriteEndpoints(dir string, e Endpoints) error {
	data, err := json.MarshalIndent(e, "", "  ")
	if err != nil {
		return fmt.Errorf("encoding the discovery record: %w", err)
	}
	tmp := filepath.Join(dir, EndpointsFile+".tmp")
	if err := os.WriteFile(tmp, append(data, '\n'), 0o600); err != nil {
		return fmt.Errorf("writing the discovery record: %w", err)
	}
	if err := os.Rename(tmp, filepath.Join(dir, EndpointsFile)); err != nil {
		return fmt.Errorf("writing the discovery record: %w", err)
	}
	return nil
}

// FoundRun is a run directory found under a runs directory.
type FoundRun struct {
	// Dir is the run directory.
	Dir string
	// Live is true while the run holds its lock.
	Live bool
	// Endpoints is the run's record; nil while a live run is still starting (or for a stale
	// run that crashed before it listened).
	Endpoints *Endpoints
}

// FindRuns lists the run directories under runsDir, newest record first, and says for each
// whether its run is alive (holds its lock). A missing runsDir is no run.
func FindRuns(runsDir string) ([]FoundRun, error) {
	entries, err := os.ReadDir(runsDir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading the runs directory: %w", err)
	}
	var runs []FoundRun
	for _, e := range entries {
		if !e.IsDir() || !runName.MatchString(e.Name()) {
			continue
		}
		dir := filepath.Join(runsDir, e.Name())
		live, err := runIsLive(filepath.Join(runsDir, e.Name()+lockSuffix))
		if err != nil {
			return nil, err
		}
		run := FoundRun{Dir: dir, Live: live}
		data, err := os.ReadFile(filepath.Join(dir, EndpointsFile))
		switch {
		case errors.Is(err, os.ErrNotExist):
		case err != nil:
			return nil, fmt.Errorf("reading the discovery record of %s: %w", dir, err)
		default:
			var ep Endpoints
			if err := json.Unmarshal(data, &ep); err != nil {
				return nil, fmt.Errorf("reading the discovery record of %s: %w", dir, err)
			}
			run.Endpoints = &ep
		}
		runs = append(runs, run)
	}
	sort.SliceStable(runs, func(i, j int) bool {
		return started(runs[i]).After(started(runs[j]))
	})
	return runs, nil
}

func started(r FoundRun) time.Time {
	if r.Endpoints == nil {
		return time.Time{}
	}
	return r.Endpoints.Started
}

// runIsLive reports whether a run holds the lock at lockPath: a shared lock that cannot be
// taken without waiting means the owner still holds its exclusive one. A missing lock file is
// a run that is gone.
func runIsLive(lockPath string) (bool, error) {
	f, err := os.Open(lockPath)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, fmt.Errorf("opening %s: %w", filepath.Base(lockPath), err)
	}
	defer f.Close()
	if err := syscall.Flock(int(f.Fd()), syscall.LOCK_SH|syscall.LOCK_NB); err != nil {
		if errors.Is(err, syscall.EWOULDBLOCK) {
			return true, nil
		}
		return false, fmt.Errorf("probing %s: %w", filepath.Base(lockPath), err)
	}
	_ = syscall.Flock(int(f.Fd()), syscall.LOCK_UN)
	return false, nil
}

// ErrNoRun is returned by Discover when no live run has a record.
var ErrNoRun = errors.New("no running knfaas up found")

// Discover returns the record of the one live run under runsDir; with addr set, of the live run
// listening on addr. It fails with ErrNoRun when there is none, naming stale records (runs that
// are gone) and runs still starting, and fails when several runs are live, naming them, since it
// cannot tell which one is meant.
func Discover(runsDir, addr string) (Endpoints, error) {
	runs, err := FindRuns(runsDir)
	if err != nil {
		return Endpoints{}, err
	}
	var live []Endpoints
	var notes []string
	for _, r := range runs {
		switch {
		case r.Live && r.Endpoints != nil && (addr == "" || r.Endpoints.Addr == addr):
			live = append(live, *r.Endpoints)
		case r.Live && r.Endpoints != nil:
			// Another live run: not the one on addr.
		case r.Live:
			notes = append(notes, fmt.Sprintf("a run is still starting (%s)", r.Dir))
		case r.Endpoints != nil:
			notes = append(notes, fmt.Sprintf("stale record %s: pid %d started %s is gone (its lock is free); the next knfaas up removes it",
				filepath.Join(r.Dir, EndpointsFile), r.Endpoints.PID, r.Endpoints.Started.Format(time.RFC3339)))
		}
	}
	switch len(live) {
	case 1:
		return live[0], nil
	case 0:
		where := " in " + runsDir
		if addr != "" {
			where = " on " + addr + where
		}
		if len(notes) > 0 {
			where += " (" + strings.Join(notes, "; ") + ")"
		}
		return Endpoints{}, fmt.Errorf("%w%s", ErrNoRun, where)
	}
	var which []string
	for _, e := range live {
		which = append(which, fmt.Sprintf("pid %d on %s", e.PID, e.Addr))
	}
	return Endpoints{}, fmt.Errorf("%d runs of knfaas up are live in %s (%s): say which one with --addr", len(live), runsDir, strings.Join(which, ", "))
}
