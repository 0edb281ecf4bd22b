package embedded

import (
	"context"
	"fmt"
	"os"
	"strings"

	"go.opentelemetry.io/otel"

	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

// otlpPath is where the internal listener takes OTLP/HTTP, below the capability.
const otlpPath = "/otlp"

// openTraces makes the run's span store (see tracestore for its bounds and forwarding), unless
// tracing is disabled (OTEL_SDK_DISABLED=true or OTEL_TRACES_EXPORTER=none). Functions and the
// runtime send their spans to it over OTLP/HTTP on the internal listener.
func (r *Runtime) openTraces() error {
	otel.SetTextMapPropagator(tracing.Propagator())
	if tracing.Disabled(os.Getenv) {
		return nil
	}
	opts, err := tracestore.OptionsFromEnv(os.Getenv)
	if err != nil {
		return err
	}
	opts.Log = r.log
	r.traces = tracestore.New(opts)
	return nil
}

// tracesURL is the OTLP/HTTP traces URL of the run's store, for functions and the runtime.
func (r *Runtime) tracesURL() string {
	return r.capabilityBase() + otlpPath + tracestore.ReceiverPath
}

// startTracing installs the runtime's own tracer provider (sampled by OTEL_TRACES_SAMPLER, by
// default every event), exporting to the run's store; the internal listener must be known.
func (r *Runtime) startTracing() error {
	if r.traces == nil {
		return nil
	}
	shutdown, err := tracing.Setup(tracing.Options{Service: "knfaas-up", EndpointURL: r.tracesURL()})
	if err != nil {
		return err
	}
	r.stopTracing = shutdown
	sampler := os.Getenv(tracing.EnvSampler)
	if sampler == "" {
		sampler = "parentbased_always_on"
	} else if arg := os.Getenv(tracing.EnvSamplerArg); arg != "" {
		sampler += " " + arg
	}
	forward := ""
	if f := os.Getenv(tracestore.EnvForward); f != "" {
		forward = "; forwarded to " + f
	}
	fmt.Fprintf(r.opts.Out, "traces: sampler %s, kept in memory (%s, %s)%s; `knfaas trace <event-id>` prints an event's journey\n",
		sampler, tracestore.EnvMaxAge, tracestore.EnvMaxBytes, forward)
	return nil
}

// flushTraces exports the runtime's last spans while the internal listener still takes them.
func (r *Runtime) flushTraces(ctx context.Context) {
	if r.stopTracing != nil {
		if err := r.stopTracing(ctx); err != nil {
			r.log.Warn("flushing the runtime's spans", "error", err)
		}
	}
}

// tracingEnvPassed are the runtime's OTEL_* variables a function inherits unless its manifest
// sets them: the sampler, so a run is sampled the same way end to end, and the batching.
var tracingEnvPassed = []string{tracing.EnvSampler, tracing.EnvSamplerArg, "OTEL_BSP_SCHEDULE_DELAY", "OTEL_BSP_MAX_QUEUE_SIZE", "OTEL_BSP_MAX_EXPORT_BATCH_SIZE"}

// withTracing points a function's spans at the run's store: the manifest's OTLP endpoint (a
// collector in the cluster) is replaced, the sampler and batching are passed on, and spans are
// sent within half a second (OTEL_BSP_SCHEDULE_DELAY) unless set otherwise.
func (r *Runtime) withTracing(env []string) []string {
	if r.traces == nil {
		return env
	}
	set := map[string]bool{}
	out := env[:0:0]
	for _, kv := range env {
		k, _, _ := strings.Cut(kv, "=")
		if k == tracing.EnvEndpoint || k == tracing.EnvTracesEndpoint {
			continue
		}
		set[k] = true
		out = append(out, kv)
	}
	out = append(out, tracing.EnvTracesEndpoint+"="+r.tracesURL())
	for _, k := range tracingEnvPassed {
		if v := os.Getenv(k); v != "" && !set[k] {
			out = append(out, k+"="+v)
			set[k] = true
		}
	}
	if !set["OTEL_BSP_SCHEDULE_DELAY"] {
		out = append(out, "OTEL_BSP_SCHEDULE_DELAY=500")
	}
	return out
}
