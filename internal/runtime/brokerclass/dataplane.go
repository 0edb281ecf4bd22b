package brokerclass

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"log/slog"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"knative.dev/eventing/pkg/auth"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"
	kubeclient "knative.dev/pkg/client/injection/kube/client"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// ContractWatcher reads the contract file whenever it changes. A file that does not exist is an
// empty contract (the controller has written none yet); a file that does not parse leaves the
// last good contract in force.
type ContractWatcher struct {
	Path string
	// Every is how often the file is read again: 2s when zero.
	Every time.Duration
	Log   *slog.Logger

	mu     sync.Mutex
	last   []byte
	loaded bool
}

// Loaded reports whether a contract (possibly empty) was applied.
func (w *ContractWatcher) Loaded() bool {
	w.mu.Lock()
	defer w.mu.Unlock()
	return w.loaded
}

// Run applies the contract now and after every change until ctx ends.
func (w *ContractWatcher) Run(ctx context.Context, apply func(*Contract)) {
	every := w.Every
	if every <= 0 {
		every = 2 * time.Second
	}
	t := time.NewTicker(every)
	defer t.Stop()
	for {
		w.poll(apply)
		select {
		case <-ctx.Done():
			return
		case <-t.C:
		}
	}
}

func (w *ContractWatcher) poll(apply func(*Contract)) {
	b, err := os.ReadFile(w.Path)
	if errors.Is(err, fs.ErrNotExist) {
		b, err = nil, nil
	}
	if err != nil {
		w.Log.Error("reading the broker contract failed; the last one stays in force", "path", w.Path, "error", err)
		return
	}
	w.mu.Lock()
	same := w.loaded && bytes.Equal(b, w.last)
	w.mu.Unlock()
	if same {
		return
	}
	c, err := ParseContract(b)
	if err != nil {
		w.Log.Error("the broker contract does not parse; the last one stays in force", "path", w.Path, "error", err)
		w.mu.Lock()
		w.last = b // reported once per change
		w.mu.Unlock()
		return
	}
	apply(c)
	w.Log.Info("broker contract applied", "generation", c.Generation, "brokers", len(c.Brokers), "triggers", len(c.Triggers))
	w.mu.Lock()
	w.last, w.loaded = b, true
	w.mu.Unlock()
}

// Health paths of the data plane. They are one segment long, so they never shadow a
// /<namespace>/<broker> ingress path.
const (
	LivenessPath  = "/healthz"
	ReadinessPath = "/readyz"
	MetricsPath   = "/metrics"
)

// healthMux answers liveness, readiness (the contract is loaded and Redis answers) and metrics,
// and hands every other path to next.
func healthMux(rdb redis.UniversalClient, w *ContractWatcher, m *metrics.Runtime, next http.Handler, ready ...func() error) http.Handler {
	mux := http.NewServeMux()
	mux.HandleFunc(LivenessPath, func(rw http.ResponseWriter, _ *http.Request) { rw.WriteHeader(http.StatusOK) })
	mux.HandleFunc(ReadinessPath, func(rw http.ResponseWriter, r *http.Request) {
		if !w.Loaded() {
			http.Error(rw, "the broker contract is not loaded yet", http.StatusServiceUnavailable)
			return
		}
		ctx, cancel := context.WithTimeout(r.Context(), 2*time.Second)
		defer cancel()
		if err := redisconn.Ping(ctx, rdb); err != nil {
			http.Error(rw, "redis does not answer: "+err.Error(), http.StatusServiceUnavailable)
			return
		}
		for _, check := range ready {
			if err := check(); err != nil {
				http.Error(rw, err.Error(), http.StatusServiceUnavailable)
				return
			}
		}
		rw.WriteHeader(http.StatusOK)
	})
	mux.Handle(MetricsPath, m.Handler())
	if next != nil {
		mux.Handle("/", next)
	}
	return mux
}

// IngressOptions configure RunIngress.
type IngressOptions struct {
	// Listen is the address the ingress serves on.
	Listen string
	// Replica names this replica (its pod name) for the trim lease.
	Replica string
	// MaintainEvery is how often streams are trimmed and backlogs checked: 5s when zero.
	MaintainEvery time.Duration
	// MaxBacklog is the number of entries a broker's stream may hold before the ingress answers
	// 503 (0: no limit).
	MaxBacklog int64
	// AppendTimeout bounds storing one event (broker.DefaultAppendTimeout when zero).
	AppendTimeout time.Duration
	// Writers is the number of concurrent pipelines to Redis: 4 when zero.
	Writers int
	// Kube reaches the Kubernetes API for the OIDC issuer's discovery (the pod's in-cluster
	// configuration), used when the contract enables OIDC authentication; nil: none.
	Kube *rest.Config
}

// RunIngress serves the Brokers of the contract until ctx ends: 202 once an event is stored in
// its Broker's stream. Replicas share the trims through a lease; each of them refuses events
// with 503 while a Broker's backlog is over MaxBacklog.
func RunIngress(ctx context.Context, rdb redis.UniversalClient, w *ContractWatcher, opts IngressOptions, log *slog.Logger) error {
	if opts.MaintainEvery <= 0 {
		opts.MaintainEvery = 5 * time.Second
	}
	if opts.Writers <= 0 {
		opts.Writers = 4
	}
	m := metrics.New()
	store := broker.NewStore(rdb, broker.WithAppendTimeout(opts.AppendTimeout), broker.WithLogger(log))
	in := broker.NewIngress(store, log, m)
	in.ShareTrims(opts.Replica, 3*opts.MaintainEvery)
	authz := NewAuthorizer(ctx, opts.Kube, rdb, in, log)
	var bg sync.WaitGroup
	storeCtx, stopStore := context.WithCancel(context.WithoutCancel(ctx))
	defer stopStore()
	bg.Add(4)
	go func() { defer bg.Done(); store.Run(storeCtx, opts.Writers) }()
	go func() {
		defer bg.Done()
		// The authorizer takes a contract before the ingress serves its Brokers.
		w.Run(ctx, func(c *Contract) { authz.Apply(c); applyBrokers(in, c) })
	}()
	go func() { defer bg.Done(); in.Maintain(ctx, rdb, opts.MaintainEvery, opts.MaxBacklog) }()
	go func() {
		defer bg.Done()
		t := time.NewTicker(5 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-ctx.Done():
				return
			case <-t.C:
				authz.Retry()
			}
		}
	}()
	authzReady := func() error {
		if !authz.Ready() {
			return errors.New("OIDC authentication is enabled and the OIDC issuer's discovery is not loaded yet")
		}
		return nil
	}
	err := serve(ctx, opts.Listen, healthMux(rdb, w, m, authz, authzReady), log)
	// The server has answered every request it took: nothing waits on the store any more.
	stopStore()
	bg.Wait()
	return err
}

// applyBrokers makes the ingress serve exactly the contract's brokers.
func applyBrokers(in *broker.Ingress, c *Contract) {
	want := map[string]bool{}
	for _, b := range c.Brokers {
		want[b.Key()] = true
		in.Add(b.Namespace, b.Name, b.MaxEventBytes)
	}
	for _, key := range in.Brokers() {
		if !want[key] {
			ns, name, _ := strings.Cut(key, "/")
			in.Remove(ns, name)
		}
	}
}

// serve runs an HTTP server on addr until ctx ends, then shuts it down gracefully.
func serve(ctx context.Context, addr string, h http.Handler, log *slog.Logger) error {
	srv := &http.Server{Addr: addr, Handler: h, ReadHeaderTimeout: 10 * time.Second, ReadTimeout: 30 * time.Second, IdleTimeout: 90 * time.Second}
	errc := make(chan error, 1)
	go func() { errc <- srv.ListenAndServe() }()
	log.Info("listening", "address", addr)
	select {
	case err := <-errc:
		return fmt.Errorf("serving on %s: %w", addr, err)
	case <-ctx.Done():
	}
	shutdownCtx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.Shutdown(shutdownCtx); err != nil {
		return fmt.Errorf("shutting down %s: %w", addr, err)
	}
	return nil
}

// DispatcherOptions configure RunDispatcher.
type DispatcherOptions struct {
	// Listen is the address health and metrics are served on.
	Listen string
	// Consumer tunes delivery; Consumer.Name must name this replica (its pod name).
	Consumer broker.ConsumerOptions
	// Kube reaches the Kubernetes API for the Triggers' OIDC tokens (TokenRequest), used when a
	// Trigger of the contract has an OIDC identity; nil: deliveries carry no token.
	Kube *rest.Config
}

// RunDispatcher delivers the events of every Trigger of the contract until ctx ends. Replicas
// share each Trigger's consumer group, each under its own name; what one of them read and never
// acknowledged is claimed by the others after Consumer.RedeliverAfter.
func RunDispatcher(ctx context.Context, rdb redis.UniversalClient, w *ContractWatcher, opts DispatcherOptions, log *slog.Logger) error {
	if opts.Consumer.Name == "" {
		return errors.New("the dispatcher needs a consumer name (its pod name) for the consumer groups it shares")
	}
	m := metrics.New()
	// Knative's token provider: tokens of a Trigger's identity for its subscriber's audience,
	// cached until shortly before they expire, as Knative's broker filter sends them.
	var tokens *auth.OIDCTokenProvider
	if opts.Kube != nil {
		kube, err := kubernetes.NewForConfig(opts.Kube)
		if err != nil {
			return fmt.Errorf("the Kubernetes API for OIDC tokens: %w", err)
		}
		tokens = auth.NewOIDCTokenProvider(context.WithValue(ctx, kubeclient.Key{}, kube))
	}
	d := &dispatcher{
		rdb: rdb, log: log, metrics: m, opts: opts.Consumer,
		dispatcher: kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, tokens),
		tokens:     tokens != nil,
		running:    map[string]*runningConsumer{},
	}
	var bg sync.WaitGroup
	bg.Add(1)
	go func() {
		defer bg.Done()
		// Every reply carries the credential the ingress checks when OIDC authentication is on.
		backoff := time.Second
		for {
			key, err := (&replyKeys{rdb: rdb}).get(ctx)
			if err == nil {
				d.replyKey = key
				break
			}
			log.Error("the reply key cannot be read; retrying", "error", err, "in", backoff)
			select {
			case <-ctx.Done():
				return
			case <-time.After(backoff):
			}
			backoff = min(2*backoff, 30*time.Second)
		}
		w.Run(ctx, func(c *Contract) { d.apply(ctx, c) })
	}()
	err := serve(ctx, opts.Listen, healthMux(rdb, w, m, nil), log)
	bg.Wait()
	d.stopAll()
	return err
}

type dispatcher struct {
	rdb        redis.UniversalClient
	log        *slog.Logger
	metrics    *metrics.Runtime
	opts       broker.ConsumerOptions
	dispatcher *kncloudevents.Dispatcher
	// tokens: the dispatcher can request the Triggers' OIDC tokens.
	tokens   bool
	running  map[string]*runningConsumer
	replyKey []byte
}

type runningConsumer struct {
	spec []byte // the contract's trigger as JSON: a change restarts the consumer
	stop context.CancelFunc
	done chan struct{}
}

// apply runs a consumer per trigger of c: new triggers start, changed ones restart (their
// deliveries in flight finish within the shutdown grace), removed ones stop.
func (d *dispatcher) apply(ctx context.Context, c *Contract) {
	want := map[string]bool{}
	var stopping []*runningConsumer
	type start struct {
		key  string
		spec []byte
		trig broker.Trigger
	}
	var starts []start
	for _, t := range c.Triggers {
		key := t.Key()
		want[key] = true
		spec, _ := json.Marshal(t)
		if r, ok := d.running[key]; ok && bytes.Equal(r.spec, spec) {
			continue
		}
		trig, err := t.Consumer()
		if err == nil {
			trig.ReplyURL, err = withReplyCredential(trig.ReplyURL, d.replyKey, t.Namespace, t.Broker)
		}
		if err != nil {
			d.log.Error("trigger not delivered", "trigger", key, "error", err) // ParseContract refuses this first
			continue
		}
		if trig.OIDCServiceAccount != nil && !d.tokens {
			d.log.Error("the trigger has an OIDC identity, but this dispatcher cannot reach the Kubernetes API for its tokens: deliveries carry none",
				"trigger", key, "service_account", trig.OIDCServiceAccount.String())
			trig.OIDCServiceAccount = nil
		}
		if r, ok := d.running[key]; ok {
			stopping = append(stopping, r)
			delete(d.running, key)
		}
		starts = append(starts, start{key: key, spec: spec, trig: trig})
	}
	for key, r := range d.running {
		if !want[key] {
			stopping = append(stopping, r)
			delete(d.running, key)
		}
	}
	for _, r := range stopping {
		r.stop()
	}
	for _, r := range stopping {
		<-r.done
	}
	for _, s := range starts {
		consumer := broker.NewConsumer(&s.trig, d.rdb, d.dispatcher, d.log, d.metrics, d.opts)
		cctx, stop := context.WithCancel(ctx)
		r := &runningConsumer{spec: s.spec, stop: stop, done: make(chan struct{})}
		d.running[s.key] = r
		go func() {
			defer close(r.done)
			// Run fails only when it cannot create the consumer group (Redis unreachable): it
			// is tried again until Redis answers.
			backoff := time.Second
			for cctx.Err() == nil {
				err := consumer.Run(cctx)
				if err == nil || cctx.Err() != nil {
					return
				}
				d.log.Error("trigger consumer cannot start; retrying", "trigger", s.key, "error", err, "in", backoff)
				select {
				case <-cctx.Done():
				case <-time.After(backoff):
				}
				backoff = min(2*backoff, 30*time.Second)
			}
		}()
	}
}

func (d *dispatcher) stopAll() {
	for _, r := range d.running {
		r.stop()
	}
	for key, r := range d.running {
		<-r.done
		delete(d.running, key)
	}
}
