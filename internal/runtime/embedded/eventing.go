package embedded

import (
	"context"
	"fmt"

	"go.opentelemetry.io/otel"
	"knative.dev/eventing/pkg/eventingtls"
	"knative.dev/eventing/pkg/kncloudevents"

	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
	"github.com/knfaas/knfaas/internal/runtime/ping"
)

// startEventing sets up the planned Brokers on the store, a consumer group per Trigger and
// the PingSources' schedules; serve starts them.
func (r *Runtime) startEventing(ctx context.Context) error {
	r.store = broker.NewStore(r.rdb, broker.WithAppendTimeout(r.opts.AppendTimeout), broker.WithLogger(r.log))
	r.ingress = broker.NewIngress(r.store, r.log, r.metrics)
	for i := range r.plan.Brokers {
		b := &r.plan.Brokers[i]
		r.ingress.Add(b.Namespace, b.Name, b.MaxEventBytes)
		fmt.Fprintln(r.opts.Out, brokerLine(b, r.addr))
	}
	// parker takes events no Trigger can ever deliver: they are kept in the dead-letter store
	// with reason "parked", never dropped.
	parker := newDeadLetterParker(r.rdb, r.plan.DeadLetters)
	kncloudevents.ConfigureConnectionArgs(&kncloudevents.ConnectionArgs{MaxIdleConns: 2048, MaxIdleConnsPerHost: 512})
	r.routeDeliveriesInProcess()
	if err := r.startTracing(); err != nil {
		return err
	}
	dispatcher := kncloudevents.NewDispatcher(eventingtls.ClientConfig{}, nil, kncloudevents.WithTraceProvider(broker.AttemptNumbering(otel.GetTracerProvider())))

	for i := range r.plan.Triggers {
		t := &r.plan.Triggers[i]
		trig := t.Consumer
		trig.Filter = t.filter()
		if err := broker.EnsureGroup(ctx, r.rdb, broker.StreamKey(trig.Namespace, trig.Broker), trig.Group()); err != nil {
			return fmt.Errorf("%s: %w", t.Where, err)
		}
		c := broker.NewConsumer(&trig, r.rdb, dispatcher, r.log, r.metrics, broker.ConsumerOptions{RedeliverAfter: r.opts.RedeliverAfter, Parallelism: r.opts.Parallelism, Parker: parker, MaxRounds: r.opts.ParkAfter})
		r.consumers = append(r.consumers, c)
		fmt.Fprintln(r.opts.Out, triggerLine(t))
	}

	r.pings = ping.NewScheduler(r.log, pingRecorder{r.metrics})
	for i := range r.plan.Pings {
		p := &r.plan.Pings[i]
		if err := r.pings.Add(ping.Source{PingSource: p.source, SinkURL: r.forFunctions(p.Sink).String()}); err != nil {
			return fmt.Errorf("%s: %w", p.Where, err)
		}
		fmt.Fprintln(r.opts.Out, pingLine(p))
	}
	return nil
}

type pingRecorder struct{ m *metrics.Runtime }

func (p pingRecorder) PingSent(ns, name string, ok bool) {
	result := "ok"
	if !ok {
		result = "failed"
	}
	p.m.PingsSent.WithLabelValues(ns, name, result).Inc()
}
