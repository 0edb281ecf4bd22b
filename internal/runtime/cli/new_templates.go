package cli

import "text/template"

// The files `knfaas new` writes. The function uses only func-go, the CloudEvents SDK,
// envconfig and go-redis, and in the platform's module its logging package (in another module
// a logging.go of its own), so it builds in any module.
var (
	tmplMain = template.Must(template.New("main.go").Parse(`package main

import (
	"log"

	"knative.dev/func-go/cloudevents"
{{- if .PlatformModule}}

	"` + platformModule + `/internal/function/logging"
{{- end}}
)

// A non-zero exit when Start fails lets Knative (and knfaas up) report the revision as failed
// instead of serving 503s; func-go returns the error of the function's Start.
func main() {
{{- if .PlatformModule}}
	logging.Setup("{{.Name}}")
{{- else}}
	setupLogging("{{.Name}}")
{{- end}}
	if err := cloudevents.Start(New()); err != nil {
		log.Fatal(err)
	}
}
`))

	// tmplLogging is the logging set-up of a function in a module of its own, which cannot
	// import the platform's internal/function/logging: the same format and level from the same
	// environment, without the bridges for func-go's and go-redis's own lines.
	tmplLogging = template.Must(template.New("logging.go").Parse(`package main

import (
	"log/slog"
	"os"
	"strings"
)

// setupLogging makes the function log as knfaas up and the platform's functions do: one record
// a line on stderr, JSON unless LOG_FORMAT=text, at LOG_LEVEL (debug, info, warn or error;
// default info), each line naming the function. The standard log package's lines come out at
// error level. A bad LOG_FORMAT or LOG_LEVEL is logged and the default used.
func setupLogging(function string) {
	var problems []string
	level := slog.LevelInfo
	if v := strings.TrimSpace(os.Getenv("LOG_LEVEL")); v != "" {
		if err := level.UnmarshalText([]byte(v)); err != nil {
			problems = append(problems, "LOG_LEVEL "+v+": want debug, info, warn or error")
		}
	}
	opts := &slog.HandlerOptions{Level: level}
	var h slog.Handler = slog.NewJSONHandler(os.Stderr, opts)
	switch v := strings.ToLower(strings.TrimSpace(os.Getenv("LOG_FORMAT"))); v {
	case "", "json":
	case "text":
		h = slog.NewTextHandler(os.Stderr, opts)
	default:
		problems = append(problems, "LOG_FORMAT "+v+": want json or text")
	}
	slog.SetDefault(slog.New(h.WithAttrs([]slog.Attr{slog.String("function", function)})))
	slog.SetLogLoggerLevel(slog.LevelError)
	for _, p := range problems {
		slog.Warn("logging: using the default", "problem", p)
	}
}
`))

	tmplFunction = template.Must(template.New("function.go").Parse(`// Package main is the {{.Name}} function: it handles {{.Type}} events, each once per
// (source, id).
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"sync/atomic"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/kelseyhightower/envconfig"
	"github.com/redis/go-redis/v9"
)

// TypeRequested is the event type the function handles; its Trigger routes it here.
const TypeRequested = "{{.Type}}"

// Config is read once at start, from the environment the Knative Service sets.
type Config struct {
	// RedisURL is the Redis the function keeps its state in.
	RedisURL string ` + "`" + `envconfig:"REDIS_URL" required:"true"` + "`" + `
	// SeenTTL is how long an event's (source, id) is remembered, so that a redelivery is
	// acknowledged without being handled again.
	SeenTTL time.Duration ` + "`" + `envconfig:"{{.EnvPrefix}}_SEEN_TTL" default:"168h"` + "`" + `
}

// Function is the {{.Name}} function.
type Function struct {
	rdb     *redis.Client
	seenTTL time.Duration
	running atomic.Bool
}

// New returns an unstarted Function.
func New() *Function { return &Function{} }

// Start reads the configuration and opens Redis.
func (f *Function) Start(_ context.Context, _ map[string]string) error {
	var cfg Config
	if err := envconfig.Process("", &cfg); err != nil {
		return fmt.Errorf("{{.Name}}: %w", err)
	}
	if cfg.SeenTTL <= 0 {
		return errors.New("{{.Name}}: {{.EnvPrefix}}_SEEN_TTL must be positive")
	}
	opts, err := redis.ParseURL(cfg.RedisURL)
	if err != nil {
		return fmt.Errorf("{{.Name}}: REDIS_URL: %w", err)
	}
	f.rdb, f.seenTTL = redis.NewClient(opts), cfg.SeenTTL
	f.running.Store(true)
	return nil
}

// Stop closes Redis.
func (f *Function) Stop(context.Context) error {
	f.running.Store(false)
	if f.rdb == nil {
		return nil
	}
	return f.rdb.Close()
}

// Ready is true once started and while Redis answers.
func (f *Function) Ready(ctx context.Context) (bool, error) {
	if !f.running.Load() {
		return false, nil
	}
	if err := f.rdb.Ping(ctx).Err(); err != nil {
		return false, err
	}
	return true, nil
}

// Alive is true while the process can serve.
func (f *Function) Alive(context.Context) (bool, error) { return true, nil }

// SeenKey is the Redis key that remembers one event (expires after SeenTTL).
func SeenKey(e event.Event) string { return "knfaas:{{.Name}}:seen:" + e.Source() + "\x00" + e.ID() }

// Handle handles each event once per (source, id). An event of another type can never
// succeed: 400, dead-lettered. Redis failing is transient: 5xx, the Broker retries.
func (f *Function) Handle(ctx context.Context, e event.Event) (*event.Event, error) {
	if !f.running.Load() {
		return nil, errors.New("{{.Name}} is starting")
	}
	if e.Type() != TypeRequested {
		return nil, cloudevents.NewHTTPResult(http.StatusBadRequest, "unexpected event type %q", e.Type())
	}
	first, err := f.rdb.SetNX(ctx, SeenKey(e), time.Now().UTC().Format(time.RFC3339), f.seenTTL).Result()
	if err != nil {
		return nil, fmt.Errorf("{{.Name}}: remembering event %s: %w", e.ID(), err)
	}
	if !first {
		return nil, nil // a redelivery: handled before
	}
	// The function's own work goes here; a returned event is a reply into the Broker.
	slog.Info("handled", "type", e.Type(), "id", e.ID(), "subject", e.Subject())
	return nil, nil
}
`))

	tmplTest = template.Must(template.New("function_test.go").Parse(`package main

import (
	"context"
	"net/http"
	"testing"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
)

func TestHandle(t *testing.T) {
	mr := miniredis.RunT(t)
	t.Setenv("REDIS_URL", "redis://"+mr.Addr())
	f := New()
	if err := f.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Stop(context.Background()) })
	if ok, err := f.Ready(context.Background()); !ok || err != nil {
		t.Fatalf("Ready = %v, %v; want true", ok, err)
	}
	newEvent := func(typ string) event.Event {
		e := event.New()
		e.SetID("1")
		e.SetSource("/test")
		e.SetType(typ)
		return e
	}
	tests := []struct {
		name       string
		event      event.Event
		redisDown  bool
		wantStatus int // 0: accepted
		wantErr    bool
	}{
		{name: "first delivery", event: newEvent(TypeRequested)},
		{name: "redelivery is acknowledged", event: newEvent(TypeRequested)},
		{name: "another type is refused", event: newEvent("com.example.other"), wantStatus: http.StatusBadRequest, wantErr: true},
		{name: "redis down is retried", event: newEvent(TypeRequested), redisDown: true, wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			if tc.redisDown {
				mr.Close()
			}
			reply, err := f.Handle(context.Background(), tc.event)
			if reply != nil {
				t.Errorf("reply %v, want none", reply)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("err = %v, want error %v", err, tc.wantErr)
			}
			var result *cehttp.Result
			if tc.wantStatus != 0 && (!cloudevents.ResultAs(err, &result) || result.StatusCode != tc.wantStatus) {
				t.Errorf("err = %v, want HTTP %d", err, tc.wantStatus)
			}
			if !tc.wantErr && !mr.Exists(SeenKey(tc.event)) {
				t.Errorf("event not remembered")
			}
		})
	}
}
`))

	tmplREADME = template.Must(template.New("README.md").Parse(`# {{.Service}}

Handles ` + "`{{.Type}}`" + ` events, routed to it by its Trigger on the ` + "`{{.Broker}}`" + ` Broker, each once
per (source, id): it remembers every event it handled in Redis (` + "`knfaas:{{.Name}}:seen:<source>\\0<id>`" + `,
expiring after ` + "`{{.EnvPrefix}}_SEEN_TTL`" + `), so a redelivery is acknowledged and not handled again.

| env | default | meaning |
|---|---|---|
| ` + "`REDIS_URL`" + ` | — | Redis (from the ` + "`redis`" + ` Secret) |
| ` + "`{{.EnvPrefix}}_SEEN_TTL`" + ` | ` + "`168h`" + ` | how long a handled event is remembered |

Events in: ` + "`{{.Type}}`" + `. Events out: none.

Failures: an event of another type → ` + "`400`" + `, dead-lettered; Redis down → ` + "`5xx`" + `, retried by the Broker.

Try it under ` + "`knfaas up{{if .Domain}} -f examples/{{.Domain}}{{end}}`" + `:

    knfaas send --type {{.Type}} --data '{}'
`))

	tmplService = template.Must(template.New("service.yaml").Parse(`# The {{.Name}} function: handles {{.Type}}, once per (source, id).
# See {{if .Domain}}examples/{{.Domain}}/{{end}}functions/{{.Name}}/README.md.
apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: {{.Service}}
  namespace: {{.Namespace}}
  labels:
    networking.knative.dev/visibility: cluster-local
    app.kubernetes.io/name: {{.Service}}
    app.kubernetes.io/component: {{.Component}}
    app.kubernetes.io/part-of: knfaas
spec:
  template:
    metadata:
      labels:
        app.kubernetes.io/name: {{.Service}}
        app.kubernetes.io/component: {{.Component}}
        app.kubernetes.io/part-of: knfaas
      annotations:
        autoscaling.knative.dev/min-scale: "0"
        autoscaling.knative.dev/max-scale: "2"
    spec:
      containerConcurrency: 50
      timeoutSeconds: 30
      containers:
      - name: {{.Service}}
        image: ko://{{.ImportPath}}
        env:
        - name: LISTEN_ADDRESS
          value: "[::]:8080"
        - name: REDIS_URL
          valueFrom:
            secretKeyRef:
              name: redis
              key: url
        - name: {{.EnvPrefix}}_SEEN_TTL
          value: "168h"
        resources:
          requests:
            cpu: 50m
            memory: 32Mi
          limits:
            memory: 128Mi
        readinessProbe:
          httpGet:
            path: /health/readiness
        livenessProbe:
          httpGet:
            path: /health/liveness
        securityContext:
          runAsNonRoot: true
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities:
            drop: ["ALL"]
          seccompProfile:
            type: RuntimeDefault
`))

	tmplTrigger = template.Must(template.New("trigger.yaml").Parse(`# Routes {{.Type}} from the {{.Broker}} Broker to {{.Service}}.
apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: {{.TriggerName}}
  namespace: {{.Namespace}}
  labels:
    app.kubernetes.io/name: {{.Service}}
    app.kubernetes.io/component: {{.Component}}
    app.kubernetes.io/part-of: knfaas
spec:
  broker: {{.Broker}}
  filter:
    attributes:
      type: {{.Type}}
  subscriber:
    ref:
      apiVersion: serving.knative.dev/v1
      kind: Service
      name: {{.Service}}
      namespace: {{.Namespace}}
`))
)
