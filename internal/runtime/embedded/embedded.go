// Package embedded runs a set of Knative manifests on one machine: Knative Services as local
// processes, Brokers on Redis Streams, Triggers as consumer groups, PingSources on a cron.
//
// A run has two steps. NewPlan (plan.go) turns the loaded manifests into a Plan without any
// side effect: what each Service, Broker, Trigger and PingSource is configured to do, or the
// file, object and field that cannot run. Run then only performs side effects from the plan:
// it listens, dials Redis, builds the functions (services.go), starts the brokers, consumers
// and schedules (eventing.go), and serves until it is stopped (serve.go). DryRun prints the
// plan (describe.go) instead.
package embedded

import (
	"context"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
	"github.com/knfaas/knfaas/internal/runtime/ping"
	"github.com/knfaas/knfaas/internal/runtime/serving"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

// Options configure a run.
type Options struct {
	// Paths are manifest files or folders.
	Paths []string
	// Addr is where ingress, broker ingress and /metrics listen.
	Addr string
	// IdleTimeout is the scale-to-zero window.
	IdleTimeout time.Duration
	// RedisURL selects an external Redis; empty runs an embedded one.
	RedisURL string
	// ModuleDir is where ko:// import paths are built.
	ModuleDir string
	// LiveProgress redraws the build progress in place (Out is a terminal) instead of writing a
	// line per step.
	LiveProgress bool
	// Modules are further Go modules (module path -> directory) whose ko:// import paths are
	// built in their own directory: users' functions outside this module.
	Modules map[string]string
	// CacheDir holds built binaries; StateDir is the per-run directory: projected volumes and
	// the instances' files (see NewRunDir).
	CacheDir, StateDir string
	// DevSecretsFile, if set, is the persistent file of development secrets: every template
	// placeholder (CHANGE-ME…) in a loaded Secret is replaced by a random value kept there.
	DevSecretsFile string
	// StartTimeout bounds how long a function instance may take to become ready.
	StartTimeout time.Duration
	// RedeliverAfter is how long a pending event waits before it is delivered again.
	RedeliverAfter time.Duration
	// ParkAfter is how many rounds in which both the subscriber and the dead-letter sink failed
	// an event may take before it is parked (broker.DefaultMaxRounds when 0).
	ParkAfter int
	// Parallelism bounds deliveries in flight per trigger.
	Parallelism int
	// MaxBacklog bounds the entries a broker's stream may hold before its ingress answers 503.
	MaxBacklog int64
	// AppendTimeout bounds how long a broker ingress waits for Redis to store an event.
	AppendTimeout time.Duration
	// Out receives the start-up summary; Log the structured logs; FunctionLogs the functions' output.
	Out          io.Writer
	Log          *slog.Logger
	FunctionLogs io.Writer
	// Strict refuses manifests with objects that are loaded but not run (Plan.NotRun).
	Strict bool
	// Ready, if set, is closed once everything listens.
	Ready chan<- string
}

// Runtime is a running set of manifests.
type Runtime struct {
	opts     Options
	plan     *Plan
	log      *slog.Logger
	metrics  *metrics.Runtime
	rdb      *redis.Client
	redisURL string
	mini     *miniredis.Miniredis
	objects  *objectStore
	mail     *mailServer
	// addr is where the public listener listens.
	addr string

	services map[string]*serving.Pool

	// token is the per-run capability of the internal listener at internalAddr (see internal.go).
	token        string
	internalAddr string
	serviceHosts map[string]string // <name>.<namespace>.svc.cluster.local → namespace/name
	clusterLocal map[string]bool   // namespace/name of the cluster-local ksvcs
	pipes        map[string]*serving.PipeListener
	brokerPipe   *serving.PipeListener
	public       atomic.Pointer[http.Handler]
	publicServer *http.Server
	listeners    map[string]net.Listener
	ingress      *broker.Ingress
	store        *broker.Store
	consumers    []*broker.Consumer
	pings        *ping.Scheduler
	// traces keeps the run's spans (nil when tracing is disabled); stopTracing flushes the
	// runtime's own (tracing.go).
	traces      *tracestore.Store
	stopTracing func(context.Context) error
}

// Run loads the manifests, plans the run, starts everything the plan says, and blocks until
// ctx ends, then shuts down: intake stops first, deliveries in flight finish, then functions
// stop. A manifest that cannot run stops it before anything listens or is built.
func Run(ctx context.Context, opts Options) error {
	r, err := start(ctx, opts)
	if err != nil {
		return err
	}
	return r.serve(ctx)
}

// start makes the plan, then performs its side effects: the public listener, Redis, the
// functions, the brokers, consumers and schedules.
func start(ctx context.Context, opts Options) (_ *Runtime, err error) {
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(os.Stderr, nil))
	}
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	if opts.FunctionLogs == nil {
		opts.FunctionLogs = os.Stderr
	}
	// Knative's dispatcher looks up the system namespace when it builds dead-letter extensions.
	if os.Getenv("SYSTEM_NAMESPACE") == "" {
		_ = os.Setenv("SYSTEM_NAMESPACE", "knative-eventing")
	}
	r := &Runtime{opts: opts, log: opts.Log, metrics: metrics.New(), services: map[string]*serving.Pool{}, listeners: map[string]net.Listener{}}
	defer func() {
		if err != nil {
			r.closeEarly()
		}
	}()

	set, err := load(opts)
	if err != nil {
		return nil, err
	}
	if opts.DevSecretsFile != "" {
		applied, err := applyDevSecrets(set, opts.DevSecretsFile)
		if err != nil {
			return nil, err
		}
		applied.print(opts.Out)
	}
	if r.plan, err = NewPlan(set, opts.planOptions()); err != nil {
		return nil, err
	}
	if err := r.plan.admit(opts); err != nil {
		return nil, err
	}

	// The listener first: a port in use is the most common start-up failure.
	main, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", opts.Addr, err)
	}
	r.listeners[""] = main
	r.addr = main.Addr().String()
	// Answer at once while functions build and start, rather than leaving connections waiting
	// in the listen backlog.
	starting := http.Handler(http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
		w.Header().Set("Retry-After", "2")
		http.Error(w, "knfaas up is starting", http.StatusServiceUnavailable)
	}))
	r.public.Store(&starting)
	r.publicServer = serving.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		(*r.public.Load()).ServeHTTP(w, req)
	}))
	go func() { _ = r.publicServer.Serve(main) }()

	if err := r.openRedis(ctx, len(r.plan.Triggers)); err != nil {
		return nil, err
	}
	if err := r.openObjectStore(); err != nil {
		return nil, err
	}
	if err := r.openTraces(); err != nil {
		return nil, err
	}
	if err := r.startServices(ctx); err != nil {
		return nil, err
	}
	if err := r.startEventing(ctx); err != nil {
		return nil, err
	}
	return r, nil
}

func (r *Runtime) closeEarly() {
	for _, l := range r.listeners {
		_ = l.Close()
	}
	if r.rdb != nil {
		_ = r.rdb.Close()
	}
	if r.mini != nil {
		r.mini.Close()
	}
	r.closeObjectStore()
	r.closeMailServer()
}

// DryRun loads the manifests and prints the plan of a run to opts.Out, as the run would start
// on opts.Addr, without building, listening, dialling Redis or touching the development
// secrets. A manifest that cannot run is an error naming its file, object and field.
func DryRun(opts Options) error {
	if opts.Out == nil {
		opts.Out = io.Discard
	}
	set, err := load(opts)
	if err != nil {
		return err
	}
	plan, err := NewPlan(set, opts.planOptions())
	if err != nil {
		return err
	}
	plan.Describe(opts.Out, opts.Addr)
	if opts.Strict {
		return plan.RefuseNotRun()
	}
	return nil
}

// load loads the manifests of opts.Paths and says how many objects it found.
func load(opts Options) (*manifest.Set, error) {
	set, err := manifest.Load(opts.Paths...)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Out, "loaded %d objects from %s\n", len(set.Objects), strings.Join(opts.Paths, ", "))
	return set, nil
}

// admit says which loaded objects will not run, and refuses them under opts.Strict.
func (p *Plan) admit(opts Options) error {
	if opts.Strict {
		return p.RefuseNotRun()
	}
	for _, n := range p.NotRun {
		fmt.Fprintf(opts.Out, "not run: %s\n", n)
	}
	return nil
}

func (o Options) planOptions() PlanOptions {
	return PlanOptions{IdleTimeout: o.IdleTimeout, StartTimeout: o.StartTimeout, RedisURL: o.RedisURL}
}
