// Package embedded runs a set of Knative manifests on one machine: Knative Services as local
// processes, Brokers on Redis Streams, Triggers as consumer groups, PingSources on a cron.
package embedded

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
	"github.com/knfaas/knfaas/internal/runtime/ping"
	"github.com/knfaas/knfaas/internal/runtime/serving"
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
	// Ready, if set, is closed once everything listens.
	Ready chan<- string
}

// Runtime is a running set of manifests.
type Runtime struct {
	opts     Options
	set      *manifest.Set
	log      *slog.Logger
	metrics  *metrics.Runtime
	rdb      *redis.Client
	redisURL string
	mini     *miniredis.Miniredis
	addr     string
	hostPort string

	addrs    *addresses
	services map[string]*serving.Pool
	initial  []warmUp

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
}

// Run loads the manifests, starts everything, and blocks until ctx ends, then shuts down:
// intake stops first, deliveries in flight finish, then functions stop.
func Run(ctx context.Context, opts Options) error {
	r, err := start(ctx, opts)
	if err != nil {
		return err
	}
	return r.serve(ctx)
}

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

	if r.set, err = manifest.Load(opts.Paths...); err != nil {
		return nil, err
	}
	fmt.Fprintf(opts.Out, "loaded %d objects from %s\n", len(r.set.Objects), strings.Join(opts.Paths, ", "))
	if opts.DevSecretsFile != "" {
		applied, err := applyDevSecrets(r.set, opts.DevSecretsFile)
		if err != nil {
			return nil, err
		}
		applied.print(opts.Out)
	}

	// The listener first: a port in use is the most common start-up failure.
	main, err := net.Listen("tcp", opts.Addr)
	if err != nil {
		return nil, fmt.Errorf("listening on %s: %w", opts.Addr, err)
	}
	r.listeners[""] = main
	r.addr = main.Addr().String()
	r.hostPort = r.addr
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

	if err := r.openRedis(ctx); err != nil {
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
}

func (r *Runtime) openRedis(ctx context.Context) error {
	if r.opts.RedisURL == "" {
		m := miniredis.NewMiniRedis()
		if err := m.StartAddr("127.0.0.1:0"); err != nil {
			return fmt.Errorf("starting embedded redis: %w", err)
		}
		r.mini = m
		r.redisURL = "redis://" + m.Addr() + "/0"
		fmt.Fprintf(r.opts.Out, "redis: embedded (miniredis) on %s — set REDIS_URL to use a real server; embedded data is lost on exit\n", m.Addr())
	} else {
		r.redisURL = r.opts.RedisURL
		fmt.Fprintf(r.opts.Out, "redis: %s\n", redactURL(r.redisURL))
	}
	// Every trigger holds a connection in a blocking read; the pool must leave room for the
	// ingress' writes and the acknowledgements beside them.
	pool := 64 + 2*len(r.setTriggersOrNone())
	rdb, err := redisconn.New(r.redisURL, redisconn.Options{CAFile: os.Getenv(redisconn.EnvCAFile), PoolSize: pool})
	if err != nil {
		return err
	}
	r.rdb = rdb
	pctx, cancel := context.WithTimeout(ctx, 5*time.Second)
	defer cancel()
	if err := redisconn.Ping(pctx, rdb); err != nil {
		return fmt.Errorf("redis at %s is not reachable: %w", redactURL(r.redisURL), err)
	}
	return nil
}

// advanceEmbeddedClock moves miniredis' clock with the wall clock: miniredis expires keys only
// when told that time passed.
func (r *Runtime) advanceEmbeddedClock(ctx context.Context) {
	if r.mini == nil {
		return
	}
	last := time.Now()
	t := time.NewTicker(100 * time.Millisecond)
	defer t.Stop()
	for {
		select {
		case <-ctx.Done():
			return
		case now := <-t.C:
			r.mini.FastForward(now.Sub(last))
			r.mini.SetTime(now)
			last = now
		}
	}
}

func (r *Runtime) setTriggersOrNone() []*eventingv1.Trigger {
	if r.set == nil {
		return nil
	}
	return r.set.Triggers()
}

func redactURL(raw string) string {
	if i := strings.Index(raw, "@"); i >= 0 {
		if j := strings.Index(raw, "://"); j >= 0 && j < i {
			return raw[:j+3] + "***" + raw[i:]
		}
	}
	return raw
}

func (r *Runtime) brokerURL(ns, name string) string {
	return "http://" + r.hostPort + broker.Path(ns, name)
}

func (r *Runtime) startServices(ctx context.Context) error {
	svcs := r.set.Services()
	sort.Slice(svcs, func(i, j int) bool { return svcs[i].Namespace+svcs[i].Name < svcs[j].Namespace+svcs[j].Name })
	// Triggers and sinks address Services and Brokers as inside a cluster; the runtime reaches
	// those addresses in process, functions through the internal listener (internal.go).
	addrs := &addresses{set: r.set, brokers: map[string]string{}, services: map[string]string{}}
	for _, b := range r.set.Brokers() {
		addrs.brokers[b.Namespace+"/"+b.Name] = inProcessBrokerURL(b.Namespace, b.Name)
	}
	r.serviceHosts, r.clusterLocal = map[string]string{}, map[string]bool{}
	for _, s := range svcs {
		key := s.Namespace + "/" + s.Name
		addrs.services[key] = inProcessServiceURL(s.Namespace, s.Name)
		r.serviceHosts[serviceHost(s.Namespace, s.Name)] = key
		r.clusterLocal[key] = isClusterLocal(s)
	}
	r.addrs = addrs
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("internal listener: %w", err)
	}
	r.listeners["internal"] = l
	r.internalAddr = l.Addr().String()
	r.token = newToken()

	// Build every ko:// image in one go.
	var paths []string
	pathOf := map[string]string{}
	for _, s := range svcs {
		c := s.Spec.Template.Spec.Containers[0]
		ip, err := serving.ImportPath(c.Image)
		if err != nil {
			return fmt.Errorf("%s: %w", r.where(s), err)
		}
		pathOf[s.Namespace+"/"+s.Name] = ip
		paths = append(paths, ip)
	}
	builder := &serving.Builder{Dir: r.opts.ModuleDir, CacheDir: r.opts.CacheDir}
	started := time.Now()
	built, err := builder.Build(ctx, dedupe(paths))
	if err != nil {
		return err
	}
	binOf := map[string]serving.Built{}
	for _, b := range built {
		binOf[b.ImportPath] = b
	}
	if len(built) > 0 {
		fmt.Fprintf(r.opts.Out, "built %d functions in %s\n", len(built), time.Since(started).Round(time.Millisecond))
	}

	standIn := redisStandIn(r.set)
	for _, s := range svcs {
		key := s.Namespace + "/" + s.Name
		b := binOf[pathOf[key]]
		spec, notes, err := r.serviceSpec(s, b.Binary, addrs, standIn)
		if err != nil {
			return err
		}
		svc := serving.NewPool(spec, r.log, r.metrics)
		r.services[key] = svc
		cached := ""
		if b.Cached {
			cached = ", cached build"
		}
		public := fmt.Sprintf("http://%s.%s.localhost:%s", s.Name, s.Namespace, r.port())
		if r.clusterLocal[key] {
			public = "cluster-local, not public"
		}
		fmt.Fprintf(r.opts.Out, "service %-28s %s  (%s; scale %d..%d, concurrency %s, timeout %s%s)\n",
			key, public, pathOf[key], spec.MinScale, spec.MaxScale, concurrencyText(spec.ContainerConcurrency), spec.Timeout, cached)
		for _, n := range notes {
			fmt.Fprintf(r.opts.Out, "  %s\n", n)
		}
		r.initial = append(r.initial, warmUp{svc: svc, n: spec.InitialScale, where: r.where(s)})
	}
	return r.warmUp()
}

type warmUp struct {
	svc   *serving.Pool
	n     int
	where string
}

// warmUp brings every Service to its initial scale (Knative's default is one instance) and
// fails when one never becomes ready, as a Knative Service whose first revision cannot start
// never becomes Ready.
func (r *Runtime) warmUp() error {
	started := time.Now()
	errs := make([]error, len(r.initial))
	var wg sync.WaitGroup
	for i, w := range r.initial {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.svc.Warm(w.n); err != nil {
				errs[i] = fmt.Errorf("%s: %w", w.where, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(r.opts.Out, "every service became ready (initial scale) in %s\n", time.Since(started).Round(time.Millisecond))
	return nil
}

func concurrencyText(cc int) string {
	if cc == 0 {
		return "unlimited"
	}
	return strconv.Itoa(cc)
}

func (r *Runtime) port() string {
	_, p, _ := net.SplitHostPort(r.hostPort)
	return p
}

func (r *Runtime) where(obj runtime.Object) string {
	if o := r.set.Origin(obj); o != nil {
		return o.Where()
	}
	return fmt.Sprintf("%T", obj)
}

func dedupe(in []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, s := range in {
		if !seen[s] {
			seen[s] = true
			out = append(out, s)
		}
	}
	return out
}

func (r *Runtime) serviceSpec(s *servingv1.Service, binary string, addrs *addresses, standIn []string) (serving.Spec, []string, error) {
	where := r.where(s)
	ps := s.Spec.Template.Spec
	c := ps.Containers[0]
	var notes []string
	env, err := envFor(r.set, s, &c)
	if err != nil {
		return serving.Spec{}, nil, err
	}
	dir := filepath.Join(r.opts.StateDir, s.Namespace, s.Name)
	if err := os.RemoveAll(dir); err != nil {
		return serving.Spec{}, nil, err
	}
	if err := os.MkdirAll(dir, 0o700); err != nil {
		return serving.Spec{}, nil, err
	}
	mounts, err := projectVolumes(r.set, s, &c, dir)
	if err != nil {
		return serving.Spec{}, nil, err
	}
	env = rewriteMountPaths(env, mounts)
	for mp, local := range mounts {
		notes = append(notes, fmt.Sprintf("volume %s → %s", mp, local))
	}
	for i, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if nv, ok := rewriteRedisURL(v, standIn, r.redisURL); ok {
			env[i] = k + "=" + nv
			notes = append(notes, fmt.Sprintf("env %s points at the Redis Service in the manifests; the runtime's Redis stands in", k))
		}
	}
	if sb := sinkBindingFor(r.set, s); sb != nil {
		u, err := addrs.destination(&sb.Spec.Sink, sb.Namespace, fmt.Sprintf("SinkBinding %s/%s: spec.sink", sb.Namespace, sb.Name))
		if err != nil {
			return serving.Spec{}, nil, err
		}
		// The function publishes over the internal listener, which stays open until every
		// function stopped: a shutdown never cuts off its publishes.
		env = append(env, "K_SINK="+r.forFunctions(u).String())
		notes = append(notes, "K_SINK="+u.String()+" (SinkBinding "+sb.Name+"; the function gets its internal address)")
	}
	env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+dir, "TMPDIR="+os.TempDir())
	spec := serving.Spec{
		Namespace: s.Namespace, Name: s.Name, Binary: binary, Env: env, Dir: dir,
		IdleTimeout: r.opts.IdleTimeout, StartTimeout: r.opts.StartTimeout, Logs: r.opts.FunctionLogs,
	}
	if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil {
		spec.ReadinessPath = p.HTTPGet.Path
		if spec.ReadinessPath == "" {
			spec.ReadinessPath = "/"
		}
	}
	if ps.ContainerConcurrency != nil {
		spec.ContainerConcurrency = int(*ps.ContainerConcurrency)
	}
	if ps.TimeoutSeconds != nil {
		spec.Timeout = time.Duration(*ps.TimeoutSeconds) * time.Second
	}
	ann := s.Spec.Template.Annotations
	if v := autoscaling.MinScaleAnnotation.Value(ann); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return serving.Spec{}, nil, fmt.Errorf("%s: annotation %s: %w", where, autoscaling.MinScaleAnnotationKey, err)
		}
		spec.MinScale = n
	}
	if v := autoscaling.MaxScaleAnnotation.Value(ann); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return serving.Spec{}, nil, fmt.Errorf("%s: annotation %s: %w", where, autoscaling.MaxScaleAnnotationKey, err)
		}
		spec.MaxScale = n
	}
	if spec.MaxScale <= 0 {
		spec.MaxScale = spec.EffectiveMaxScale()
	}
	spec.InitialScale = 1
	if v := autoscaling.InitialScaleAnnotation.Value(ann); v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return serving.Spec{}, nil, fmt.Errorf("%s: annotation %s: %w", where, autoscaling.InitialScaleAnnotationKey, err)
		}
		spec.InitialScale = n
	}
	spec.InitialScale = max(spec.InitialScale, spec.MinScale)
	return spec, notes, nil
}

func (r *Runtime) startEventing(ctx context.Context) error {
	r.store = broker.NewStore(r.rdb, broker.WithAppendTimeout(r.opts.AppendTimeout), broker.WithLogger(r.log))
	r.ingress = broker.NewIngress(r.store, r.log, r.metrics)
	brokers := map[string]*eventingv1.Broker{}
	for _, b := range r.set.Brokers() {
		maxBytes, err := broker.MaxEventBytesOf(b.Annotations)
		if err != nil {
			return fmt.Errorf("%s: %w", r.where(b), err)
		}
		r.ingress.Add(b.Namespace, b.Name, maxBytes)
		brokers[b.Namespace+"/"+b.Name] = b
		fmt.Fprintf(r.opts.Out, "broker  %-28s %s (events up to %d bytes)\n", b.Namespace+"/"+b.Name, r.brokerURL(b.Namespace, b.Name), maxBytes)
	}
	// parker takes events no Trigger can ever deliver: they are kept in the dead-letter store
	// with reason "parked", never dropped.
	parker, err := newDeadLetterParker(r.set, r.rdb)
	if err != nil {
		return err
	}
	kncloudevents.ConfigureConnectionArgs(&kncloudevents.ConnectionArgs{MaxIdleConns: 2048, MaxIdleConnsPerHost: 512})
	r.routeDeliveriesInProcess()
	dispatcher := kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil)

	triggers := r.set.Triggers()
	sort.Slice(triggers, func(i, j int) bool {
		return triggers[i].Namespace+triggers[i].Name < triggers[j].Namespace+triggers[j].Name
	})
	for _, t := range triggers {
		where := r.where(t)
		b, ok := brokers[t.Namespace+"/"+t.Spec.Broker]
		if !ok {
			return fmt.Errorf("%s: spec.broker: Broker %s/%s not found in the loaded manifests", where, t.Namespace, t.Spec.Broker)
		}
		sub, err := r.addrs.destination(&t.Spec.Subscriber, t.Namespace, where+": spec.subscriber")
		if err != nil {
			return err
		}
		delivery := t.Spec.Delivery
		if delivery == nil {
			delivery = b.Spec.Delivery
		}
		trig := &broker.Trigger{
			Namespace: t.Namespace, Name: t.Name, Broker: t.Spec.Broker,
			Subscriber: duckv1.Addressable{URL: apis.HTTP("")},
			ReplyURL:   r.addrs.brokers[t.Namespace+"/"+t.Spec.Broker],
			Retry:      kncloudevents.NoRetries(),
		}
		trig.Subscriber.URL = (*apis.URL)(sub)
		if delivery != nil {
			rc, err := kncloudevents.RetryConfigFromDeliverySpec(*delivery)
			if err != nil {
				return fmt.Errorf("%s: spec.delivery: %w", where, err)
			}
			trig.Retry = rc
			if delivery.DeadLetterSink != nil {
				dls, err := r.addrs.destination(delivery.DeadLetterSink, t.Namespace, where+": delivery.deadLetterSink")
				if err != nil {
					return err
				}
				trig.DeadLetter = &duckv1.Addressable{URL: (*apis.URL)(dls)}
			}
		}
		trig.Filter = triggerFilter(t)
		if err := broker.EnsureGroup(ctx, r.rdb, broker.StreamKey(t.Namespace, t.Spec.Broker), trig.Group()); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		c := broker.NewConsumer(trig, r.rdb, dispatcher, r.log, r.metrics, broker.ConsumerOptions{RedeliverAfter: r.opts.RedeliverAfter, Parallelism: r.opts.Parallelism, Parker: parker, MaxRounds: r.opts.ParkAfter})
		r.consumers = append(r.consumers, c)
		dl := "no dead-letter sink: failed events are dropped"
		if trig.DeadLetter != nil {
			dl = "dead letters → " + trig.DeadLetter.URL.String()
		}
		fmt.Fprintf(r.opts.Out, "trigger %-28s %s → %s (%s; retry %d)\n", t.Namespace+"/"+t.Name, describeFilter(t), r.describeDest(&t.Spec.Subscriber, t.Namespace), dl, trig.Retry.RetryMax)
	}

	r.pings = ping.NewScheduler(r.log, pingRecorder{r.metrics})
	for _, ps := range r.set.PingSources() {
		where := r.where(ps)
		u, err := r.addrs.destination(&ps.Spec.Sink, ps.Namespace, where+": spec.sink")
		if err != nil {
			return err
		}
		if err := r.pings.Add(ping.Source{PingSource: ps, SinkURL: r.forFunctions(u).String()}); err != nil {
			return fmt.Errorf("%s: %w", where, err)
		}
		tz := ps.Spec.Timezone
		if tz == "" {
			tz = "local time"
		}
		fmt.Fprintf(r.opts.Out, "ping    %-28s %q (%s) → %s\n", ps.Namespace+"/"+ps.Name, ps.Spec.Schedule, tz, r.describeDest(&ps.Spec.Sink, ps.Namespace))
	}
	return nil
}

func (r *Runtime) describeDest(d *duckv1.Destination, ns string) string {
	if d.Ref != nil {
		return d.Ref.Kind + " " + d.Ref.Name
	}
	if d.URI != nil {
		return d.URI.String()
	}
	return "?"
}

func describeFilter(t *eventingv1.Trigger) string {
	if len(t.Spec.Filters) > 0 {
		return fmt.Sprintf("%d filters", len(t.Spec.Filters))
	}
	if t.Spec.Filter != nil && len(t.Spec.Filter.Attributes) > 0 {
		var parts []string
		for _, k := range sortedKeys(t.Spec.Filter.Attributes) {
			parts = append(parts, k+"="+t.Spec.Filter.Attributes[k])
		}
		return strings.Join(parts, ",")
	}
	return "all events"
}

type pingRecorder struct{ m *metrics.Runtime }

func (p pingRecorder) PingSent(ns, name string, ok bool) {
	result := "ok"
	if !ok {
		result = "failed"
	}
	p.m.PingsSent.WithLabelValues(ns, name, result).Inc()
}

func (r *Runtime) serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { defer bg.Done(); r.advanceEmbeddedClock(ctx) }()

	storeCtx, stopStore := context.WithCancel(context.Background())
	storeDone := make(chan struct{})
	go func() { r.store.Run(storeCtx, 4); close(storeDone) }()

	var servers []*http.Server
	serveOn := func(l net.Listener, h http.Handler) {
		srv := serving.NewServer(h)
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.log.Error("server failed", "addr", l.Addr(), "error", err)
			}
		}()
	}
	serviceCtx, stopServices := context.WithCancel(context.Background())
	var svcWG sync.WaitGroup
	for key, svc := range r.services {
		svcWG.Add(1)
		go func() { defer svcWG.Done(); svc.Run(serviceCtx) }()
		if pl := r.pipes[key]; pl != nil {
			serveOn(pl, svc)
		}
	}
	if r.brokerPipe != nil {
		serveOn(r.brokerPipe, r.ingress)
	}
	serveOn(r.listeners["internal"], r.internalHandler())
	router := r.router()
	r.public.Store(&router)

	consumerCtx, stopConsumers := context.WithCancel(context.Background())
	var consWG sync.WaitGroup
	for _, c := range r.consumers {
		consWG.Add(1)
		go func() {
			defer consWG.Done()
			if err := c.Run(consumerCtx); err != nil {
				r.log.Error("trigger consumer stopped", "error", err)
			}
		}()
	}
	bg.Add(1)
	go func() { defer bg.Done(); r.ingress.Maintain(ctx, r.rdb, 5*time.Second, r.opts.MaxBacklog) }()
	r.pings.Start()
	fmt.Fprintf(r.opts.Out, "listening on http://%s (ingress: Host <service>.<namespace>.localhost; brokers: /<namespace>/<broker>; metrics: /metrics)\n", r.addr)
	fmt.Fprintf(r.opts.Out, "internal: cluster-local services are not served on http://%s; Triggers, replies and dead letters reach every Service and Broker in process (http://<service>.<namespace>.svc.cluster.local, http://%s/<namespace>/<broker>); functions (K_SINK, pings) and operators use %s/services/<namespace>/<service>/ and %s/brokers/<namespace>/<broker> (capability drawn per run; without it: 403)\n",
		r.addr, brokerIngressHost, r.capabilityBase(), r.capabilityBase())
	if r.opts.Ready != nil {
		close(r.opts.Ready)
	}

	<-ctx.Done()
	// Intake stops first: pings and the public listener. The paths deliveries, replies, dead
	// letters and function publishes take stay open until those have finished: an event is
	// never failed (and so dead-lettered) because the runtime is stopping.
	fmt.Fprintln(r.opts.Out, "shutting down: stopping intake")
	r.pings.Stop()
	stage := func(d time.Duration) (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), d)
	}
	publicCtx, cancelPublic := stage(15 * time.Second)
	_ = r.publicServer.Shutdown(publicCtx)
	cancelPublic()
	// Deliveries in flight finish (within the consumers' grace), their replies and dead
	// letters going to the broker ingress and the dead-letter sink in process.
	stopConsumers()
	consWG.Wait()
	fmt.Fprintln(r.opts.Out, "shutting down: deliveries finished; stopping functions")
	// Functions stop while the internal listener still takes their publishes.
	stopServices()
	svcWG.Wait()
	serversCtx, cancelServers := stage(5 * time.Second)
	for _, srv := range servers {
		_ = srv.Shutdown(serversCtx)
	}
	cancelServers()
	// Last, the store: everything accepted until now is written.
	stopStore()
	<-storeDone
	cancel()
	bg.Wait()
	_ = r.rdb.Close()
	if r.mini != nil {
		r.mini.Close()
	}
	fmt.Fprintln(r.opts.Out, "stopped")
	return nil
}

// router sends requests for <service>.<namespace>.localhost to the ksvc, /metrics to the
// metrics, and everything else to the broker ingress.
func (r *Runtime) router() http.Handler {
	metricsHandler := r.metrics.Handler()
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		host := req.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if strings.HasSuffix(host, ".localhost") {
			parts := strings.Split(strings.TrimSuffix(host, ".localhost"), ".")
			if len(parts) == 2 {
				key := parts[1] + "/" + parts[0]
				if r.clusterLocal[key] {
					notPublic(w, key)
					return
				}
				if svc, ok := r.services[key]; ok {
					svc.ServeHTTP(w, req)
					return
				}
			}
			http.Error(w, fmt.Sprintf("no Knative Service for host %s (want <service>.<namespace>.localhost)", req.Host), http.StatusNotFound)
			return
		}
		switch req.URL.Path {
		case "/metrics":
			metricsHandler.ServeHTTP(w, req)
			return
		case "/healthz":
			_, _ = io.WriteString(w, "ok")
			return
		}
		r.ingress.ServeHTTP(w, req)
	})
}

func metav1LabelSelector(s *metav1.LabelSelector) (labels.Selector, error) {
	return metav1.LabelSelectorAsSelector(s)
}
