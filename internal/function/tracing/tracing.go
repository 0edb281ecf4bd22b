// Package tracing sets up OpenTelemetry tracing from the standard OTEL_* environment and carries
// the W3C trace context with events: as the HTTP traceparent header and as the CloudEvents
// distributed-tracing extension.
package tracing

import (
	"context"
	"fmt"
	"os"
	"strings"
	"sync"
	"sync/atomic"

	"go.opentelemetry.io/otel"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/sdk/resource"
	sdktrace "go.opentelemetry.io/otel/sdk/trace"
	"go.opentelemetry.io/otel/trace"
)

// The standard OpenTelemetry variables this package reads (the SDK and the exporter read the
// others themselves: OTEL_TRACES_SAMPLER, OTEL_TRACES_SAMPLER_ARG, OTEL_BSP_*,
// OTEL_EXPORTER_OTLP_HEADERS, OTEL_RESOURCE_ATTRIBUTES, …).
const (
	EnvEndpoint       = "OTEL_EXPORTER_OTLP_ENDPOINT"
	EnvTracesEndpoint = "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
	EnvSampler        = "OTEL_TRACES_SAMPLER"
	EnvSamplerArg     = "OTEL_TRACES_SAMPLER_ARG"
	EnvServiceName    = "OTEL_SERVICE_NAME"
	EnvSDKDisabled    = "OTEL_SDK_DISABLED"
	EnvTracesExporter = "OTEL_TRACES_EXPORTER"
)

// Span attributes knfaas sets beside the semantic-convention ones. AttrEventID is what
// `knfaas trace <event-id>` looks spans up by.
const (
	AttrEventID     = "cloudevents.event_id"
	AttrEventType   = "cloudevents.event_type"
	AttrEventSource = "cloudevents.event_source"
	AttrAttempt     = "knfaas.delivery.attempt"
	AttrTrigger     = "knfaas.trigger"
	AttrBroker      = "knfaas.broker"
)

// tracerName names the tracer of every span knfaas makes itself.
const tracerName = "github.com/knfaas/knfaas"

// Tracer is the tracer knfaas's own spans come from (a no-op until Setup installs a provider).
func Tracer() trace.Tracer { return otel.GetTracerProvider().Tracer(tracerName) }

// Disabled reports whether getenv turns tracing off explicitly: OTEL_SDK_DISABLED=true or
// OTEL_TRACES_EXPORTER=none.
func Disabled(getenv func(string) string) bool {
	return strings.EqualFold(strings.TrimSpace(getenv(EnvSDKDisabled)), "true") ||
		strings.EqualFold(strings.TrimSpace(getenv(EnvTracesExporter)), "none")
}

// Configured reports whether getenv asks for traces: an OTLP endpoint is set and tracing is not
// disabled. Without one, a function keeps the no-op provider (near-zero cost).
func Configured(getenv func(string) string) bool {
	if Disabled(getenv) {
		return false
	}
	return getenv(EnvEndpoint) != "" || getenv(EnvTracesEndpoint) != ""
}

// Options configure Setup.
type Options struct {
	// Service is the service name when OTEL_SERVICE_NAME is unset.
	Service string
	// EndpointURL, when set, is the full OTLP/HTTP traces URL (…/v1/traces) and replaces the
	// environment's endpoint; tracing is then on unless Disabled.
	EndpointURL string
}

var (
	active atomic.Bool
	// provider is the exporting provider Setup installed, for Flush.
	provider atomic.Pointer[sdktrace.TracerProvider]
)

// Active reports whether Setup installed an exporting provider in this process.
func Active() bool { return active.Load() }

// Setup installs the W3C propagator (always: a process that does not trace still passes a
// sender's context on) and, when the environment configures tracing (or opts.EndpointURL is
// set), a tracer provider exporting over OTLP/HTTP in batches, sampled by
// OTEL_TRACES_SAMPLER/_ARG (default parentbased_always_on). The returned function flushes and
// stops the provider.
func Setup(opts Options) (shutdown func(context.Context) error, err error) {
	otel.SetTextMapPropagator(Propagator())
	noop := func(context.Context) error { return nil }
	if Disabled(os.Getenv) || (opts.EndpointURL == "" && !Configured(os.Getenv)) {
		return noop, nil
	}
	exporter, err := NewExporter(opts.EndpointURL)
	if err != nil {
		return noop, fmt.Errorf("tracing: %w", err)
	}
	service := opts.Service
	if service == "" {
		service = "knfaas"
	}
	res, err := resource.Merge(resource.NewSchemaless(attribute.String("service.name", service)), resource.Environment())
	if err != nil {
		return noop, fmt.Errorf("tracing: reading OTEL_RESOURCE_ATTRIBUTES: %w", err)
	}
	tp := sdktrace.NewTracerProvider(sdktrace.WithBatcher(exporter), sdktrace.WithResource(res))
	otel.SetTracerProvider(tp)
	provider.Store(tp)
	active.Store(true)
	return func(ctx context.Context) error {
		active.Store(false)
		provider.CompareAndSwap(tp, nil)
		return tp.Shutdown(ctx)
	}, nil
}

// Flush exports the spans the provider Setup installed still holds in its batch, and waits
// until they are sent or ctx ends; without a provider it does nothing. A process about to exit
// calls it, since the batch is otherwise sent only every OTEL_BSP_SCHEDULE_DELAY. The provider
// keeps working after it.
func Flush(ctx context.Context) error {
	tp := provider.Load()
	if tp == nil {
		return nil
	}
	if err := tp.ForceFlush(ctx); err != nil {
		return fmt.Errorf("tracing: flushing spans: %w", err)
	}
	return nil
}

var (
	functionOnce     sync.Once
	functionShutdown = func(context.Context) error { return nil }
)

// SetupFunction is Setup for a function binary, done once per process whatever the number of
// calls: the service name is OTEL_SERVICE_NAME, else K_SERVICE, else function. An error is
// reported once and leaves tracing off: a function never refuses to start over its traces.
func SetupFunction(function string) error {
	var err error
	functionOnce.Do(func() {
		name := os.Getenv("K_SERVICE")
		if name == "" {
			name = function
		}
		functionShutdown, err = Setup(Options{Service: name})
	})
	return err
}

// ShutdownFunction flushes the spans SetupFunction's provider still holds.
func ShutdownFunction(ctx context.Context) error { return functionShutdown(ctx) }
