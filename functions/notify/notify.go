// Package main is the notify function: it delivers the events its Triggers subscribe it to as
// signed Standard Webhooks to the configured endpoints, retrying over hours from Redis, and
// serves the endpoint API and its metrics on the same listener.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"net/netip"
	"net/url"
	"os"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/breaker"
	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/funchealth"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	"github.com/knfaas/knfaas/internal/function/logging"
	"github.com/knfaas/knfaas/internal/function/notify"
	"github.com/knfaas/knfaas/internal/function/placeholder"
	"github.com/knfaas/knfaas/internal/function/process/deadline"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/function/tracing"
)

// TypeEndpointDisabled is the event the function publishes (through K_SINK) when it disables
// an endpoint: it answered 410 Gone, or every attempt failed for NOTIFY_DISABLE_AFTER.
const TypeEndpointDisabled = "dev.knfaas.notify.endpoint.disabled"

// Source is the source of the events the function publishes.
const Source = "/knfaas/notify"

// TypePing is the type of PingSource events; like the timer's fired deadlines
// (deadline.TypeFired with knfaasowner notify), they wake the function for due retries.
const TypePing = "dev.knative.sources.ping"

// Config is read once at start; each default is in its tag, and Check refuses a bad value.
type Config struct {
	// EndpointsFile is the endpoints YAML (the notify-endpoints ConfigMap, mounted).
	EndpointsFile string `envconfig:"NOTIFY_ENDPOINTS_FILE" default:"/etc/knfaas/notify/endpoints.yaml"`
	// Schedule is the wait before each retry, comma-separated Go durations.
	Schedule string `envconfig:"NOTIFY_SCHEDULE" default:"5s,5m,30m,2h,5h,10h,10h"`
	// Retention is how long a message's record (event, state per endpoint, attempts) is kept.
	Retention time.Duration `envconfig:"NOTIFY_RETENTION" default:"336h"`
	// Poll is how often a running instance looks for due retries when nothing wakes it.
	Poll time.Duration `envconfig:"NOTIFY_POLL" default:"1s"`
	// Batch is how many due deliveries one Redis step claims.
	Batch int `envconfig:"NOTIFY_BATCH" default:"256"`
	// DrainTimeout bounds how long a PingSource tick waits for the due deliveries it woke.
	DrainTimeout time.Duration `envconfig:"NOTIFY_DRAIN_TIMEOUT" default:"50s"`
	// DisableAfter disables an endpoint whose attempts have all failed for that long; 0: never.
	DisableAfter time.Duration `envconfig:"NOTIFY_DISABLE_AFTER" default:"120h"`
	// Sink is where TypeEndpointDisabled goes (the Broker, set by the SinkBinding); unset,
	// disabling is only logged.
	Sink string `envconfig:"K_SINK"`
	// AllowNets lists networks (CIDR or single addresses, comma-separated) that deliveries may
	// reach although they are private, link-local or otherwise special.
	AllowNets string `envconfig:"NOTIFY_ALLOW_NETS"`
	// BreakerFailures opens an endpoint's circuit after that many failed attempts in a row.
	BreakerFailures uint32 `envconfig:"NOTIFY_BREAKER_FAILURES" default:"5"`
	// BreakerRatio opens it when that share of the attempts in BreakerWindow failed, once
	// there were BreakerMinRequests of them.
	BreakerRatio       float64       `envconfig:"NOTIFY_BREAKER_RATIO" default:"0.5"`
	BreakerMinRequests uint32        `envconfig:"NOTIFY_BREAKER_MIN_REQUESTS" default:"20"`
	BreakerWindow      time.Duration `envconfig:"NOTIFY_BREAKER_WINDOW" default:"1m"`
	// BreakerOpen is how long an open circuit refuses attempts before a probe.
	BreakerOpen time.Duration `envconfig:"NOTIFY_BREAKER_OPEN" default:"30s"`
	// APIToken is the bearer token of the endpoint API (Secret notify-api, key token); unset,
	// the API is off.
	APIToken string `envconfig:"NOTIFY_API_TOKEN"`

	schedule notify.Schedule
	allow    []netip.Prefix
}

// Check refuses values out of range, naming each variable.
func (c *Config) Check() error {
	var errs []error
	s, err := notify.ParseSchedule(c.Schedule)
	if err != nil {
		errs = append(errs, fmt.Errorf("NOTIFY_SCHEDULE (%q): %w", c.Schedule, err))
	}
	c.schedule = s
	nets, err := notify.ParseNets(c.AllowNets)
	if err != nil {
		errs = append(errs, fmt.Errorf("NOTIFY_ALLOW_NETS: %w", err))
	}
	c.allow = nets
	if c.Retention < s.Horizon()+24*time.Hour {
		errs = append(errs, fmt.Errorf("NOTIFY_RETENTION (%s) must be at least the schedule's horizon (%s) plus 24h: a redrive must still know which endpoints got a message",
			c.Retention, s.Horizon()))
	}
	if c.Poll <= 0 || c.Poll > time.Minute {
		errs = append(errs, fmt.Errorf("NOTIFY_POLL (%s) must be positive and at most 1m", c.Poll))
	}
	if c.Batch < 1 || c.Batch > 10000 {
		errs = append(errs, fmt.Errorf("NOTIFY_BATCH (%d) must be from 1 to 10000", c.Batch))
	}
	if c.BreakerFailures < 1 {
		errs = append(errs, fmt.Errorf("NOTIFY_BREAKER_FAILURES (%d) must be at least 1", c.BreakerFailures))
	}
	if c.BreakerRatio <= 0 || c.BreakerRatio > 1 || c.BreakerMinRequests < 1 {
		errs = append(errs, fmt.Errorf("NOTIFY_BREAKER_RATIO (%g) must be in (0, 1] and NOTIFY_BREAKER_MIN_REQUESTS (%d) at least 1", c.BreakerRatio, c.BreakerMinRequests))
	}
	if c.BreakerWindow <= 0 || c.BreakerOpen <= 0 {
		errs = append(errs, fmt.Errorf("NOTIFY_BREAKER_WINDOW (%s) and NOTIFY_BREAKER_OPEN (%s) must be positive", c.BreakerWindow, c.BreakerOpen))
	}
	if c.DisableAfter < 0 {
		errs = append(errs, fmt.Errorf("NOTIFY_DISABLE_AFTER (%s) must not be negative", c.DisableAfter))
	}
	if err := placeholder.Check("NOTIFY_API_TOKEN (Secret notify-api, key token)", c.APIToken); err != nil {
		errs = append(errs, err)
	} else if c.APIToken != "" && len(c.APIToken) < 16 {
		errs = append(errs, fmt.Errorf("NOTIFY_API_TOKEN is %d characters, at least 16 (openssl rand -hex 24)", len(c.APIToken)))
	}
	if c.DrainTimeout <= 0 {
		errs = append(errs, fmt.Errorf("NOTIFY_DRAIN_TIMEOUT (%s) must be positive", c.DrainTimeout))
	}
	return errors.Join(errs...)
}

// Function fans events out to webhook endpoints.
type Function struct {
	cfg     Config
	publish func(context.Context, event.Event) error
	store   *notify.Store
	d       *notify.Dispatcher
	api     *notify.API
	cancel  context.CancelFunc
	done    sync.WaitGroup
	funchealth.Lifecycle
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration and the endpoints file, refusing any mistake, opens Redis and
// starts the delivery loop.
func (f *Function) Start(ctx context.Context, _ map[string]string) error {
	var cfg Config
	rdb, err := funcstart.Open("notify", &cfg)
	if err != nil {
		return err
	}
	eps, err := notify.Load(cfg.EndpointsFile, os.LookupEnv)
	if err != nil {
		_ = rdb.Close()
		return fmt.Errorf("notify: %w", err)
	}
	var publish func(context.Context, event.Event) error
	if cfg.Sink != "" {
		s, err := sink.New(cfg.Sink, 10*time.Second)
		if err != nil {
			_ = rdb.Close()
			return fmt.Errorf("notify: %w", err)
		}
		publish = s.Send
	}
	f.publish = publish
	g := guard(cfg)
	f.start(cfg, rdb, eps, Client(g), g)
	return nil
}

// DisabledEvent is what the function publishes when it disables an endpoint; its id is stable
// for one disabling.
func DisabledEvent(ep *notify.Endpoint, reason string, at time.Time) event.Event {
	e := event.New()
	e.SetID(fmt.Sprintf("endpoint-disabled:%s:%d", ep.Name, at.UnixMilli()))
	e.SetType(TypeEndpointDisabled)
	e.SetSource(Source)
	e.SetSubject(ep.Name)
	e.SetTime(at.UTC())
	_ = e.SetData("application/json", map[string]string{"endpoint": ep.Name, "url": ep.URL, "reason": reason})
	return e
}

// onDisabled publishes TypeEndpointDisabled, when there is a sink.
func (f *Function) onDisabled(ctx context.Context, ep *notify.Endpoint, reason string, at time.Time) {
	if f.publish == nil {
		return
	}
	if err := f.publish(ctx, DisabledEvent(ep, reason, at)); err != nil {
		slog.ErrorContext(ctx, "notify: publishing that an endpoint was disabled failed", "endpoint", ep.Name, "err", err)
	}
}

// guard is where deliveries may connect. A function that listens on loopback runs under
// knfaas up (on a cluster it must listen on the pod's address to be reached): there loopback
// endpoints are allowed for development, except the ports of the runtime (its ingress, Broker,
// Redis) and of its functions, this one included.
func guard(cfg Config) *notify.Guard {
	g := &notify.Guard{Allow: cfg.allow}
	host, _, _ := net.SplitHostPort(os.Getenv("LISTEN_ADDRESS"))
	if ip, err := netip.ParseAddr(host); err == nil && ip.IsLoopback() {
		var extra []uint16
		for _, v := range []string{os.Getenv("REDIS_URL"), os.Getenv("K_SINK")} {
			if u, err := url.Parse(v); err == nil && u.Host != "" {
				if p := notify.HostPort(u.Host); p != 0 {
					extra = append(extra, p)
				} else if u.Scheme == "redis" || u.Scheme == "rediss" {
					extra = append(extra, 6379)
				}
			}
		}
		g.Loopback, g.Forbidden = true, notify.RuntimePorts(extra...)
		slog.Info("notify: running under knfaas up (LISTEN_ADDRESS on loopback): loopback endpoints are allowed for development, except the runtime's and its functions' own ports")
	}
	return g
}

func (f *Function) start(cfg Config, rdb *redis.Client, eps []*notify.Endpoint, client *http.Client, g *notify.Guard) {
	f.cfg = cfg
	f.store = notify.NewStore(rdb, cfg.Retention)
	f.d = notify.NewDispatcher(f.store, deadletter.NewStore(rdb, deadletter.Options{}), eps, notify.Options{
		Schedule: cfg.schedule, Poll: cfg.Poll, Batch: cfg.Batch, Client: client,
		Breaker: breaker.Settings{ConsecutiveFailures: cfg.BreakerFailures, FailureRatio: cfg.BreakerRatio,
			MinRequests: cfg.BreakerMinRequests, Window: cfg.BreakerWindow, OpenFor: cfg.BreakerOpen},
		DisableAfter: cfg.DisableAfter, OnDisabled: f.onDisabled,
	})
	f.api = &notify.API{Store: f.store, Dispatcher: f.d, Guard: g, Token: cfg.APIToken}
	if err := f.d.Refresh(context.Background(), true); err != nil {
		// Redis may come up after the function; the loop reads them again.
		slog.Warn("notify: reading the API's endpoints failed", "err", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	f.cancel = cancel
	f.done.Add(1)
	go func() {
		defer f.done.Done()
		f.d.Run(ctx)
	}()
	names := make([]string, 0, len(eps))
	for _, ep := range eps {
		names = append(names, ep.Name)
	}
	slog.Info("notify: started", "endpoints", names, "schedule", cfg.Schedule, "api", cfg.APIToken != "")
	f.Started(rdb)
}

// Client is the HTTP client of the deliveries: every connection is checked by g once its
// address is resolved (so a name rebound to a private address is refused), it never follows a
// redirect (a 3xx is a failed attempt: the endpoint's URL is what was configured), uses no
// proxy, and bounds connecting and TLS.
func Client(g *notify.Guard) *http.Client {
	return &http.Client{
		Transport: &http.Transport{
			Proxy:                 nil,
			DialContext:           (&net.Dialer{Timeout: 5 * time.Second, KeepAlive: 30 * time.Second, Control: g.Control}).DialContext,
			TLSHandshakeTimeout:   5 * time.Second,
			MaxIdleConnsPerHost:   notify.MaxConcurrency,
			IdleConnTimeout:       60 * time.Second,
			ResponseHeaderTimeout: notify.MaxTimeout,
			ForceAttemptHTTP2:     true,
		},
		CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
	}
}

// Stop ends the delivery loop (attempts in flight finish) and closes Redis.
func (f *Function) Stop(context.Context) error {
	f.Stopping()
	if f.cancel != nil {
		f.cancel()
		f.done.Wait()
	}
	return f.Close()
}

// Handle serves the function's listener:
//
//	/api/endpoints…   the endpoint API (notify.API), bearer token NOTIFY_API_TOKEN
//	GET /metrics      circuits and delivery counters, Prometheus text format
//	anything else     a CloudEvent from the Broker (binary or structured mode): HandleEvent
func (f *Function) Handle(w http.ResponseWriter, r *http.Request) {
	if f.RefuseWhileStarting(w, "notify") {
		return
	}
	switch {
	case r.URL.Path == notify.APIPrefix || strings.HasPrefix(r.URL.Path, notify.APIPrefix+"/"):
		f.api.ServeHTTP(w, r)
	case r.URL.Path == notify.MetricsPath && r.Method == http.MethodGet:
		w.Header().Set("Content-Type", "text/plain; version=0.0.4; charset=utf-8")
		if err := f.api.WriteMetrics(r.Context(), w); err != nil {
			slog.Error("notify: writing metrics failed", "err", err)
			http.Error(w, err.Error(), http.StatusServiceUnavailable)
		}
	default:
		e, err := cehttp.NewEventFromHTTPRequest(r)
		if err != nil {
			http.Error(w, "not a CloudEvent: "+err.Error(), http.StatusBadRequest)
			return
		}
		if _, err := tracing.HandleEvent(r.Context(), *e, f.HandleEvent); err != nil {
			http.Error(w, err.Error(), http.StatusInternalServerError)
			return
		}
		w.WriteHeader(http.StatusAccepted)
	}
}

// HandleEvent accepts an event for delivery: it stores the event and schedules it for every endpoint
// that wants its type and has not had it, in one Redis step, and answers only then (an error
// answers 5xx and the Broker retries). A fired timer deadline (or a PingSource tick) delivers
// what is due and waits for it; it is never fanned out.
func (f *Function) HandleEvent(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.Running() {
		return nil, errors.New("notify is starting")
	}
	ctx = logging.WithEvent(ctx, e)
	if e.Type() == TypePing || e.Type() == deadline.TypeFired {
		dctx, cancel := context.WithTimeout(ctx, f.cfg.DrainTimeout)
		defer cancel()
		if err := f.d.Drain(dctx); err != nil && !errors.Is(err, context.DeadlineExceeded) {
			return nil, fmt.Errorf("delivering due messages: %w", err)
		}
		return nil, nil
	}
	if err := f.d.Refresh(ctx, false); err != nil {
		return nil, err
	}
	eps := f.d.Match(e.Type())
	redriveTo := ""
	if v, ok := e.Extensions()[notify.ExtEndpoint]; ok {
		redriveTo, _ = types.ToString(v)
		if !slices.Contains(eps, redriveTo) {
			slog.WarnContext(ctx, "notify: redriven message names an endpoint that no longer wants it", "endpoint", redriveTo, "id", e.ID())
			return nil, nil
		}
		eps = []string{redriveTo}
	}
	if len(eps) == 0 {
		return nil, nil
	}
	id, added, err := f.store.Enqueue(ctx, e, eps, redriveTo, time.Now())
	if err != nil {
		return nil, err
	}
	if len(added) > 0 {
		f.d.Wake()
		slog.DebugContext(ctx, "notify: enqueued", "message", id, "endpoints", added)
	}
	return nil, nil
}
