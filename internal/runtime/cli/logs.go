package cli

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

func newLogsCommand() *cobra.Command {
	var rf runFlags
	var opts logsOptions
	cmd := &cobra.Command{
		Use:   "logs <service>",
		Short: "Print (and follow) the lines of one Knative Service's instances under knfaas up",
		Long: `Print the lines the instances of a Knative Service wrote under the running knfaas up (stdout
and stderr, as the runtime received them), oldest first. <service> is name or namespace/name.

knfaas up keeps each service's lines in its run directory, at most ` + fmt.Sprint(2*embedded.MaxServiceLogBytes>>20) + ` MiB a service
(the oldest go first), until it exits. Their format is the run's --log-format (LOG_FORMAT),
unless a Service sets LOG_FORMAT itself.`,
		Example: `  knfaas logs process --tail 20
  knfaas logs knfaas/deadletter -f --since 5m`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if opts.tail < -1 {
				return fmt.Errorf("--tail %d: want a number of lines, or -1 for all", opts.tail)
			}
			if opts.since < 0 {
				return fmt.Errorf("--since %s: want a duration such as 10m", opts.since)
			}
			ep, err := rf.discover()
			if err != nil {
				return fmt.Errorf("%w: start knfaas up (logs are kept by the running knfaas up)", err)
			}
			if ep.Logs == "" {
				return fmt.Errorf("the knfaas up with pid %d keeps no service logs", ep.PID)
			}
			return printServiceLogs(cmd.Context(), cmd.OutOrStdout(), ep.Logs, args[0], opts)
		},
	}
	addRunFlags(cmd, &rf)
	cmd.ValidArgsFunction = completeLogServices(&rf)
	f := cmd.Flags()
	f.BoolVarP(&opts.follow, "follow", "f", false, "keep printing new lines until interrupted or knfaas up exits")
	f.IntVar(&opts.tail, "tail", -1, "print only the last N lines kept (then follow, with -f); -1 prints all")
	f.DurationVar(&opts.since, "since", 0, "print only lines received within this duration (e.g. 10m); 0 prints all")
	return cmd
}

// logsOptions say which lines `knfaas logs` prints.
type logsOptions struct {
	follow bool
	tail   int           // the last this many lines; -1 for all
	since  time.Duration // lines received within it; 0 for all
	now    func() time.Time
	poll   time.Duration // how often -f looks for new lines (default 200ms)
}

// resolveService finds the namespace/name of ref (name or namespace/name) among the services
// with a log file under logsDir. An unknown or ambiguous ref is an error naming the services.
func resolveService(logsDir, ref string) (string, error) {
	services, err := embedded.ServiceLogs(logsDir)
	if err != nil {
		return "", err
	}
	var found []string
	for _, s := range services {
		if s == ref || (!strings.Contains(ref, "/") && strings.HasSuffix(s, "/"+ref)) {
			found = append(found, s)
		}
	}
	known := strings.Join(services, ", ")
	if len(services) == 0 {
		known = "none"
	}
	switch len(found) {
	case 1:
		return found[0], nil
	case 0:
		return "", fmt.Errorf("no service %q in this knfaas up; its services: %s", ref, known)
	default:
		return "", fmt.Errorf("service %q is ambiguous: %s; name it namespace/name", ref, strings.Join(found, ", "))
	}
}

// printServiceLogs writes the kept lines of service ref to out as opts selects them, then,
// with opts.follow, new lines until ctx ends or the run's logs are removed (the run exited).
func printServiceLogs(ctx context.Context, out io.Writer, logsDir, ref string, opts logsOptions) error {
	service, err := resolveService(logsDir, ref)
	if err != nil {
		return err
	}
	if opts.now == nil {
		opts.now = time.Now
	}
	if opts.poll <= 0 {
		opts.poll = 200 * time.Millisecond
	}
	ns, name, _ := strings.Cut(service, "/")
	path := embedded.ServiceLogFile(logsDir, ns, name)
	var cutoff time.Time
	if opts.since > 0 {
		cutoff = opts.now().Add(-opts.since)
	}
	var lines []string
	keep := func(rec []byte) {
		if line, ok := logLine(rec, cutoff); ok {
			lines = append(lines, line)
			if opts.tail >= 0 && len(lines) > opts.tail {
				lines = lines[1:]
			}
		}
	}
	if err := readLines(path+".1", keep); err != nil && !errors.Is(err, os.ErrNotExist) {
		return fmt.Errorf("reading the logs of %s: %w", service, err)
	}
	// The current file stays open: when -f follows, it goes on from where this read stopped.
	f, err := os.Open(path)
	if err != nil {
		return fmt.Errorf("reading the logs of %s: %w", service, err)
	}
	defer func() { _ = f.Close() }()
	r := bufio.NewReader(f)
	var partial []byte
	readAvailable := func(emit func([]byte)) error {
		for {
			chunk, err := r.ReadBytes('\n')
			partial = append(partial, chunk...)
			if err == io.EOF {
				return nil
			}
			if err != nil {
				return err
			}
			emit(bytes.TrimSuffix(partial, []byte("\n")))
			partial = partial[:0]
		}
	}
	if err := readAvailable(keep); err != nil {
		return fmt.Errorf("reading the logs of %s: %w", service, err)
	}
	for _, l := range lines {
		if _, err := fmt.Fprintln(out, l); err != nil {
			return err
		}
	}
	if !opts.follow {
		return nil
	}
	printNew := func(rec []byte) {
		if line, ok := logLine(rec, time.Time{}); ok {
			_, _ = fmt.Fprintln(out, line)
		}
	}
	tick := time.NewTicker(opts.poll)
	defer tick.Stop()
	for {
		select {
		case <-ctx.Done():
			return nil
		case <-tick.C:
		}
		if err := readAvailable(printNew); err != nil {
			return fmt.Errorf("following the logs of %s: %w", service, err)
		}
		cur, err := os.Stat(path)
		if errors.Is(err, os.ErrNotExist) {
			if _, derr := os.Stat(logsDir); errors.Is(derr, os.ErrNotExist) {
				return nil // the run exited and removed its directory
			}
			continue // between the rotation's rename and the new file
		}
		if err != nil {
			return fmt.Errorf("following the logs of %s: %w", service, err)
		}
		if open, err := f.Stat(); err == nil && !os.SameFile(open, cur) {
			// Rotated: read the open file (now .1) to its end, then go on with the new one.
			if err := readAvailable(printNew); err != nil {
				return fmt.Errorf("following the logs of %s: %w", service, err)
			}
			nf, err := os.Open(path)
			if err != nil {
				continue
			}
			_ = f.Close()
			f, partial = nf, partial[:0]
			r.Reset(f)
		}
	}
}

// readLines calls keep with each whole line of the file at path.
func readLines(path string, keep func([]byte)) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer func() { _ = f.Close() }()
	sc := bufio.NewScanner(f)
	sc.Buffer(make([]byte, 64*1024), 4*1024*1024)
	for sc.Scan() {
		keep(sc.Bytes())
	}
	return sc.Err()
}

// logLine reads a stored record, "<RFC 3339 time> <line>": the line, and whether it was
// received at or after cutoff (any time when cutoff is zero).
func logLine(rec []byte, cutoff time.Time) (string, bool) {
	stamp, line, ok := bytes.Cut(rec, []byte(" "))
	if !ok {
		return "", false
	}
	if !cutoff.IsZero() {
		t, err := time.Parse(time.RFC3339Nano, string(stamp))
		if err != nil || t.Before(cutoff) {
			return "", false
		}
	}
	return string(line), true
}

// envOr is the value of the environment variable key, or def when it is unset or empty.
func envOr(key, def string) string {
	if v := os.Getenv(key); v != "" {
		return v
	}
	return def
}
