package embedded

import (
	"bufio"
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/knfaas/knfaas/internal/function/logging"
)

// Function output: every line an instance writes (stdout and stderr) reaches the runtime's own
// stderr tagged with its instance, and the service's log file in the run directory,
//
//	<run dir>/logs/<namespace>/<name>.log   (and .log.1, the previous MaxServiceLogBytes)
//
// which `knfaas logs <service>` reads and follows. Each stored line starts with the time the
// runtime received it (RFC 3339, UTC) and a space.

// LogsDir is the directory of the services' log files in a run directory.
const LogsDir = "logs"

// MaxServiceLogBytes bounds a service's log file: past it the file becomes <name>.log.1 (the
// previous one is dropped), so a service keeps at most twice this much.
const MaxServiceLogBytes = 4 << 20

// ServiceLogFile is the log file of namespace/name under a logs directory.
func ServiceLogFile(logsDir, namespace, name string) string {
	return filepath.Join(logsDir, namespace, name+".log")
}

// ServiceLogs lists the services (namespace/name) that have a log file under logsDir, sorted.
func ServiceLogs(logsDir string) ([]string, error) {
	namespaces, err := os.ReadDir(logsDir)
	if err != nil {
		return nil, fmt.Errorf("reading the run's logs: %w", err)
	}
	var services []string
	for _, ns := range namespaces {
		if !ns.IsDir() {
			continue
		}
		files, err := os.ReadDir(filepath.Join(logsDir, ns.Name()))
		if err != nil {
			return nil, fmt.Errorf("reading the run's logs: %w", err)
		}
		for _, f := range files {
			if name, ok := strings.CutSuffix(f.Name(), ".log"); ok {
				services = append(services, ns.Name()+"/"+name)
			}
		}
	}
	sort.Strings(services)
	return services, nil
}

// serviceLog receives one service's instance output, one line a Write, prefixed
// "[<name>-<instance>] " by serving, and passes each line on: to out, tagged (a JSON line gets
// "service" and "instance" fields first, so it stays one JSON object; any other line keeps its
// prefix), and to the service's log file.
type serviceLog struct {
	service string
	json    bool
	now     func() time.Time

	mu    sync.Mutex
	out   io.Writer
	path  string // "" when there is no run directory
	file  *os.File
	size  int64
	clock []byte
}

// newServiceLog opens (creating) the log file of namespace/name under logsDir ("" for none).
func newServiceLog(out io.Writer, logsDir, namespace, name string, jsonLines bool) (*serviceLog, error) {
	l := &serviceLog{service: name, json: jsonLines, now: time.Now, out: out}
	if logsDir == "" {
		return l, nil
	}
	l.path = ServiceLogFile(logsDir, namespace, name)
	if err := os.MkdirAll(filepath.Dir(l.path), 0o700); err != nil {
		return nil, fmt.Errorf("creating the log directory of %s/%s: %w", namespace, name, err)
	}
	if err := l.open(); err != nil {
		return nil, err
	}
	return l, nil
}

func (l *serviceLog) open() error {
	f, err := os.OpenFile(l.path, os.O_CREATE|os.O_WRONLY|os.O_APPEND, 0o600)
	if err != nil {
		return fmt.Errorf("opening the log file of %s: %w", l.service, err)
	}
	st, err := f.Stat()
	if err != nil {
		_ = f.Close()
		return fmt.Errorf("opening the log file of %s: %w", l.service, err)
	}
	l.file, l.size = f, st.Size()
	return nil
}

// Write implements io.Writer for one or more whole lines.
func (l *serviceLog) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	sc := bufio.NewScanner(bytes.NewReader(p))
	sc.Buffer(nil, len(p)+1)
	for sc.Scan() {
		line := l.tag(sc.Bytes())
		_, _ = l.out.Write(append(line, '\n'))
		l.store(line)
	}
	return len(p), nil
}

// tag returns line as the runtime prints it.
func (l *serviceLog) tag(line []byte) []byte {
	if !l.json {
		return bytes.Clone(line)
	}
	prefix, rest, ok := bytes.Cut(line, []byte("] "))
	if !ok || !bytes.HasPrefix(prefix, []byte("[")) {
		return bytes.Clone(line)
	}
	instance := string(prefix[1:])
	body := bytes.TrimSpace(rest)
	if len(body) < 2 || body[0] != '{' || !json.Valid(body) {
		return bytes.Clone(line)
	}
	head, _ := json.Marshal(map[string]string{"service": l.service})
	inst, _ := json.Marshal(instance)
	out := make([]byte, 0, len(head)+len(inst)+len(body)+16)
	out = append(out, head[:len(head)-1]...) // {"service":"…"
	out = append(out, `,"instance":`...)
	out = append(out, inst...)
	if inner := bytes.TrimSpace(body[1:]); len(inner) > 0 && inner[0] != '}' {
		out = append(out, ',')
	}
	return append(out, body[1:]...)
}

// store appends line to the log file, rotating it past MaxServiceLogBytes. A failing write
// drops the line from the file only: the runtime's stderr has it.
func (l *serviceLog) store(line []byte) {
	if l.file == nil {
		return
	}
	l.clock = l.now().UTC().AppendFormat(l.clock[:0], time.RFC3339Nano)
	rec := make([]byte, 0, len(l.clock)+len(line)+2)
	rec = append(append(append(append(rec, l.clock...), ' '), line...), '\n')
	if l.size > 0 && l.size+int64(len(rec)) > MaxServiceLogBytes {
		_ = l.file.Close()
		l.file = nil
		if err := os.Rename(l.path, l.path+".1"); err != nil {
			return
		}
		if err := l.open(); err != nil {
			return
		}
	}
	n, _ := l.file.Write(rec)
	l.size += int64(n)
}

// Close closes the log file.
func (l *serviceLog) Close() error {
	l.mu.Lock()
	defer l.mu.Unlock()
	if l.file == nil {
		return nil
	}
	err := l.file.Close()
	l.file = nil
	return err
}

// logsDir is this run's logs directory, "" without a run directory.
func (r *Runtime) logsDir() string {
	if r.opts.StateDir == "" {
		return ""
	}
	return filepath.Join(r.opts.StateDir, LogsDir)
}

// withLogging passes the runtime's log format and level to a function, unless its Service
// sets LOG_FORMAT or LOG_LEVEL itself.
func (r *Runtime) withLogging(env []string) []string {
	set := map[string]bool{}
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		set[k] = true
	}
	if r.opts.LogFormat != "" && !set[logging.EnvFormat] {
		env = append(env, logging.EnvFormat+"="+r.opts.LogFormat)
	}
	if r.opts.LogLevel != "" && !set[logging.EnvLevel] {
		env = append(env, logging.EnvLevel+"="+r.opts.LogLevel)
	}
	return env
}
