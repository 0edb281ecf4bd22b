package cli

import (
	"fmt"
	"io"
	"log/slog"
	"net/http"
	_ "net/http/pprof" // profiles for --pprof-addr
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"time"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/knfaas/knfaas/internal/function/logging"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// defaultPaths are the platform's own manifests, loaded unless --defaults=false.
var defaultPaths = []string{"config", "triggers"}

func newUpCommand() *cobra.Command {
	var (
		paths          []string
		defaults       bool
		addr           string
		idle           time.Duration
		redeliverAfter time.Duration
		parallelism    int
		logLevel       string
		logFormat      string
		cacheDir       string
		stateDir       string
		runDir         string
		pprofAddr      string
		startTimeout   time.Duration
		maxBacklog     int64
		appendTimeout  time.Duration
		parkAfter      int
		dryRun         bool
		strict         bool
	)
	cmd := &cobra.Command{
		Use:   "up [-f PATH]...",
		Short: "Run the manifests on this machine: functions as processes, brokers on Redis Streams",
		Long: `Runs config/ and triggers/ (plus every -f file or folder) on this machine, with no Kubernetes:
Knative Services become processes built from their ko:// import paths, started on the first
request and stopped after the idle window; Brokers are durable on Redis Streams; each Trigger
is a consumer group delivering with Knative's filters, retries and dead-letter semantics;
PingSources fire on their schedules.

Secrets: every CHANGE-ME placeholder of a loaded Secret is replaced by a random development
secret, generated on first start and kept in <state-dir>/dev-secrets.json (0600).

Discovery: once it listens, the run records its address, internal capability base, Redis URL,
PID and start time in <run-dir>/<run>/endpoints.json (0600), so send, dlq, process and events
find it with no address copied by hand. The record goes with the run directory; a record left
by a run that died (its lock is free) is reported as stale and never used.

Redis: REDIS_URL selects a server (redis:// or rediss://); without it an embedded Redis
(miniredis) runs in-process and its data is lost on exit.

Run it from the module root (ko:// paths are built with go build there). Your own functions can
live in a Go module of their own: with -f ../my-app, where ../my-app (or a folder above it)
holds a go.mod, the ko:// paths of that module are built in its directory with its go.mod
(knfaas new function NAME --dir ../my-app scaffolds there; knfaas verify -f ../my-app accepts
them).

--dry-run prints the plan instead: what each Service, Broker, Trigger and PingSource would
run with, and the objects loaded but not run.

Objects that are loaded but not run (kinds other than Knative Services, Brokers, Triggers,
PingSources, SinkBindings, and the ConfigMaps, Secrets and Namespaces they read) are listed at
start, each with the reason ("not run: …"); --strict refuses them instead. It builds, listens and writes nothing; a
manifest that cannot run is an error naming its file, object and field.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all := paths
			if defaults {
				all = append(append([]string{}, defaultPaths...), paths...)
			}
			all = uniquePaths(all)
			if len(all) == 0 {
				return fmt.Errorf("no manifests: pass -f PATH or leave --defaults on")
			}
			if parkAfter < 1 {
				return fmt.Errorf("--park-after: %d is not a number of rounds (1 or more)", parkAfter)
			}
			level, err := logging.ParseLevel(logLevel)
			if err != nil {
				return fmt.Errorf("--log-level: %w", err)
			}
			format, err := logging.ParseFormat(logFormat)
			if err != nil {
				return fmt.Errorf("--log-format: %w", err)
			}
			if dryRun {
				return embedded.DryRun(embedded.Options{
					Paths: all, Addr: addr, IdleTimeout: idle, StartTimeout: startTimeout,
					RedisURL: os.Getenv(redisconn.EnvURL), Out: cmd.OutOrStdout(), Strict: strict,
				})
			}
			log := slog.New(logging.NewHandler(cmd.ErrOrStderr(), logging.Config{Format: format, Level: level}))
			slog.SetDefault(log) // the lines of shared packages that log through slog's default
			if cacheDir == "" {
				base, err := os.UserCacheDir()
				if err != nil {
					base = os.TempDir()
				}
				cacheDir = filepath.Join(base, "knfaas", "bin")
			}
			if stateDir == "" {
				d, err := embedded.DefaultStateDir()
				if err != nil {
					return err
				}
				stateDir = d
			}
			if runDir == "" {
				runDir = filepath.Join(stateDir, embedded.RunsDir)
			}
			run, stale, err := embedded.NewRunDir(runDir)
			for _, d := range stale {
				fmt.Fprintf(cmd.OutOrStdout(), "removed %s: left by a run that did not exit cleanly\n", d)
			}
			if err != nil {
				return err
			}
			defer func() {
				if err := run.Remove(); err != nil {
					log.Error("removing the per-run state", "error", err)
				}
			}()
			fmt.Fprintf(cmd.OutOrStdout(), "state: %s (kept); this run: %s (removed on exit)\n", stateDir, run.Path)
			if os.Getenv("GOGC") == "" {
				// The runtime allocates per event and has memory to spare: collecting less often
				// buys delivery throughput. GOGC in the environment wins.
				debug.SetGCPercent(400)
			}
			if pprofAddr != "" {
				go func() {
					// net/http/pprof registers on the default mux; serve it on its own address only.
					srv := serving.NewServer(http.DefaultServeMux)
					srv.Addr = pprofAddr
					if err := srv.ListenAndServe(); err != nil {
						log.Error("pprof listener failed", "error", err)
					}
				}()
			}
			wd, err := os.Getwd()
			if err != nil {
				return err
			}
			modules, err := otherModules(all, wd)
			if err != nil {
				return err
			}
			for module, dir := range modules {
				fmt.Fprintf(cmd.OutOrStdout(), "module %s: its ko:// paths are built in %s\n", module, dir)
			}
			return embedded.Run(cmd.Context(), embedded.Options{
				Paths: all, Addr: addr, IdleTimeout: idle, RedisURL: os.Getenv(redisconn.EnvURL),
				ModuleDir: wd, Modules: modules, LiveProgress: isTerminal(cmd.OutOrStdout()), CacheDir: cacheDir, StateDir: run.Path, DevSecretsFile: filepath.Join(stateDir, embedded.DevSecretsFile),
				RedeliverAfter: redeliverAfter, StartTimeout: startTimeout, MaxBacklog: maxBacklog, AppendTimeout: appendTimeout, ParkAfter: parkAfter,
				Parallelism: parallelism, Out: cmd.OutOrStdout(), Log: log, FunctionLogs: cmd.ErrOrStderr(), Strict: strict,
				LogFormat: format, LogLevel: strings.ToLower(level.String()),
			})
		},
	}
	f := cmd.Flags()
	addManifestFlags(cmd, &paths, &defaults)
	f.StringVar(&addr, "addr", "127.0.0.1:8080", "address of the ingress, broker ingress and /metrics")
	f.DurationVar(&idle, "idle", 30*time.Second, "scale-to-zero window: an instance idle this long is stopped (min-scale permitting)")
	f.DurationVar(&startTimeout, "start-timeout", 30*time.Second, "how long a function instance may take to become ready; a Service whose first instance does not is a start-up error")
	f.DurationVar(&redeliverAfter, "redeliver-after", broker.DefaultRedeliverAfter, "a delivery pending this long (both subscriber and dead-letter sink failed, or a crash) is attempted again")
	f.DurationVar(&appendTimeout, "append-timeout", broker.DefaultAppendTimeout, "how long a broker ingress waits for redis to store an event: 503 when it was not stored (and never will be), 504 when neither the append nor its lookup was answered")
	f.IntVar(&parkAfter, "park-after", broker.DefaultMaxRounds, "an event whose subscriber and dead-letter sink both failed this many rounds (one every --redeliver-after) is parked in the dead-letter store, so it never blocks its trigger")
	f.Int64Var(&maxBacklog, "max-backlog", 1_000_000, "a broker whose stream holds more events than this (not yet acknowledged by every trigger) answers 503 until its triggers catch up; 0 is no limit")
	f.IntVar(&parallelism, "parallelism", broker.DefaultParallelism, "deliveries in flight per trigger")
	f.StringVar(&logLevel, "log-level", envOr(logging.EnvLevel, "info"), "debug, info, warn or error, for the runtime and (as LOG_LEVEL, unless a Service sets it) its functions ($LOG_LEVEL sets the default)")
	f.StringVar(&logFormat, "log-format", envOr(logging.EnvFormat, logging.FormatText), "json or text, for the runtime and (as LOG_FORMAT, unless a Service sets it) its functions; with json, each function line gets its service and instance ($LOG_FORMAT sets the default)")
	_ = cmd.RegisterFlagCompletionFunc("log-level", cobra.FixedCompletions([]string{"debug", "info", "warn", "error"}, cobra.ShellCompDirectiveNoFileComp))
	_ = cmd.RegisterFlagCompletionFunc("log-format", cobra.FixedCompletions([]string{logging.FormatJSON, logging.FormatText}, cobra.ShellCompDirectiveNoFileComp))
	f.StringVar(&cacheDir, "cache-dir", "", "where built function binaries are cached (default: the user cache dir)")
	f.StringVar(&stateDir, "state-dir", "", "persistent local state: the development secrets that replace CHANGE-ME placeholders, kept across runs (default $XDG_STATE_HOME/knfaas or ~/.local/state/knfaas)")
	f.StringVar(&runDir, "run-dir", "", "where each run keeps its projected volumes and instance files, removed on exit and, after a crash, at the next start (default <state-dir>/runs)")
	f.StringVar(&pprofAddr, "pprof-addr", "", "serve Go's pprof profiles of the runtime on this address (debugging)")
	f.BoolVar(&strict, "strict", false, "refuse manifests with objects that are loaded but not run (e.g. a Deployment, an ApiServerSource) instead of listing them")
	f.BoolVar(&dryRun, "dry-run", false, "print the plan (services, brokers, triggers, pings, notes) and exit without building, listening or writing state")
	return cmd
}

// isTerminal says whether w is a terminal that understands cursor movement: live progress is
// drawn there, and a line per step everywhere else (pipes, files, logs, TERM=dumb).
func isTerminal(w io.Writer) bool {
	f, ok := w.(*os.File)
	if !ok || os.Getenv("TERM") == "dumb" {
		return false
	}
	return term.IsTerminal(int(f.Fd()))
}
