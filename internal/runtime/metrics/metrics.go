// Package metrics defines the Prometheus metrics of the embedded runtime.
package metrics

import (
	"net/http"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Runtime holds every metric the runtime exports on /metrics.
type Runtime struct {
	registry *prometheus.Registry

	EventsAccepted     *prometheus.CounterVec   // broker
	EventsRejected     *prometheus.CounterVec   // broker, reason
	EventsDelivered    *prometheus.CounterVec   // broker, trigger
	EventsRetried      *prometheus.CounterVec   // broker, trigger
	EventsDeadLettered *prometheus.CounterVec   // broker, trigger
	EventsFailed       *prometheus.CounterVec   // broker, trigger: neither subscriber nor dead-letter sink took it; redelivered later
	EventsDropped      *prometheus.CounterVec   // broker, trigger: retries exhausted and no dead-letter sink
	EventsFiltered     *prometheus.CounterVec   // broker, trigger
	EventsParked       *prometheus.CounterVec   // broker, trigger, reason: taken off the trigger, never deliverable
	DeadLetterFailures *prometheus.CounterVec   // broker, trigger, code: sends to a dead-letter sink that failed
	DeliveryLatency    *prometheus.HistogramVec // broker, trigger
	ColdStarts         *prometheus.CounterVec   // namespace, service
	ColdStartSeconds   *prometheus.HistogramVec // namespace, service
	Instances          *prometheus.GaugeVec     // namespace, service
	PingsSent          *prometheus.CounterVec   // namespace, pingsource, result
}

// New registers the runtime's metrics, plus Go and process collectors, in a new registry.
func New() *Runtime {
	r := &Runtime{registry: prometheus.NewRegistry()}
	r.registry.MustRegister(collectors.NewGoCollector(), collectors.NewProcessCollector(collectors.ProcessCollectorOpts{}))
	counter := func(name, help string, labels ...string) *prometheus.CounterVec {
		c := prometheus.NewCounterVec(prometheus.CounterOpts{Namespace: "knfaas", Name: name, Help: help}, labels)
		r.registry.MustRegister(c)
		return c
	}
	r.EventsAccepted = counter("broker_events_accepted_total", "Events durably stored by a broker's ingress.", "broker")
	r.EventsRejected = counter("broker_events_rejected_total", "Events a broker's ingress refused.", "broker", "reason")
	r.EventsDelivered = counter("trigger_events_delivered_total", "Events a trigger's subscriber accepted.", "broker", "trigger")
	r.EventsRetried = counter("trigger_events_retried_total", "Deliveries to a trigger's subscriber that needed more than one attempt, counted once per delivery whatever its outcome; retries of replies and dead letters are not counted.", "broker", "trigger")
	r.EventsDeadLettered = counter("trigger_events_dead_lettered_total", "Events sent to a dead-letter sink.", "broker", "trigger")
	r.EventsFailed = counter("trigger_events_failed_total", "Deliveries where neither the subscriber nor a dead-letter sink accepted the event; it stays pending and is redelivered.", "broker", "trigger")
	r.EventsDropped = counter("trigger_events_dropped_total", "Events whose delivery failed after the retries on a trigger without a dead-letter sink: dropped, as Knative does.", "broker", "trigger")
	r.EventsParked = counter("trigger_events_parked_total", "Events taken off a trigger and handed to the parked-event store, by reason: undeliverable (subscriber and dead-letter sink failed every round), undecodable (a stream entry no event could be read from).", "broker", "trigger", "reason")
	r.DeadLetterFailures = counter("trigger_dead_letter_failures_total", "Sends to a trigger's dead-letter sink that failed, by the sink's last HTTP status (503: the dead-letter store is full; -1: no response); the event stays pending.", "broker", "trigger", "code")
	r.EventsFiltered = counter("trigger_events_filtered_total", "Events a trigger's filter did not match.", "broker", "trigger")
	r.DeliveryLatency = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "knfaas", Name: "trigger_delivery_seconds", Help: "Time from ingress acceptance to the subscriber's answer.",
		Buckets: prometheus.ExponentialBuckets(0.0005, 1.5, 26),
	}, []string{"broker", "trigger"})
	r.registry.MustRegister(r.DeliveryLatency)
	r.ColdStarts = counter("service_cold_starts_total", "Function instances started.", "namespace", "service")
	r.ColdStartSeconds = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "knfaas", Name: "service_cold_start_seconds", Help: "Time from exec to readiness of a function instance.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 14),
	}, []string{"namespace", "service"})
	r.registry.MustRegister(r.ColdStartSeconds)
	r.Instances = prometheus.NewGaugeVec(prometheus.GaugeOpts{Namespace: "knfaas", Name: "service_instances", Help: "Function instances running or starting."}, []string{"namespace", "service"})
	r.registry.MustRegister(r.Instances)
	r.PingsSent = counter("pingsource_events_total", "PingSource ticks sent, by result.", "namespace", "pingsource", "result")
	return r
}

// Handler serves the metrics in the Prometheus text format.
func (r *Runtime) Handler() http.Handler {
	return promhttp.HandlerFor(r.registry, promhttp.HandlerOpts{})
}

// ColdStart records a started instance (serving.Observer).
func (r *Runtime) ColdStart(namespace, name string, d time.Duration) {
	r.ColdStarts.WithLabelValues(namespace, name).Inc()
	r.ColdStartSeconds.WithLabelValues(namespace, name).Observe(d.Seconds())
}

// SetInstances records the instance count of a service (serving.Observer).
func (r *Runtime) SetInstances(namespace, name string, n int) {
	r.Instances.WithLabelValues(namespace, name).Set(float64(n))
}
