// Package metrics defines the Prometheus metrics of the embedded runtime.
package metrics

import (
	"net/http"
	"strconv"
	"sync"
	"time"
	"unicode/utf8"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/collectors"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Runtime holds every metric the runtime exports on /metrics.
type Runtime struct {
	registry *prometheus.Registry

	EventsAccepted     *prometheus.CounterVec   // broker
	EventsRejected     *prometheus.CounterVec   // broker, reason
	AppendLookups      *prometheus.CounterVec   // result: appends without a reply, looked up
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

	// The RED metrics of every Service, measured by the runtime's proxy in front of its
	// instances; each observation carries the request's trace id as an exemplar when the
	// request came with a sampled trace context.
	Requests        *prometheus.CounterVec   // namespace, service, event_type, code
	RequestErrors   *prometheus.CounterVec   // namespace, service, event_type
	RequestDuration *prometheus.HistogramVec // namespace, service, event_type

	requestSeries sync.Map // requestKey → *requestSeries
	eventTypesMu  sync.Mutex
	eventTypes    map[serviceKey]int // distinct event_type values per Service
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
	r.AppendLookups = counter("broker_append_outcome_lookups_total", "Appends to a broker's stream whose reply from Redis did not come in time, looked up by result: stored (answered 202), not_stored (503), unknown (no answer to the lookup either; 504).", "result")
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
	r.Requests = counter("service_requests_total", "Requests a Service answered (or the runtime answered for it: 502, 503, 504), by CloudEvent type (ce-type; empty for other requests) and HTTP status.", "namespace", "service", "event_type", "code")
	r.RequestErrors = counter("service_request_errors_total", "Requests of a Service answered with a 5xx status, by CloudEvent type.", "namespace", "service", "event_type")
	r.RequestDuration = prometheus.NewHistogramVec(prometheus.HistogramOpts{
		Namespace: "knfaas", Name: "service_request_duration_seconds", Help: "Time from a request's arrival at the runtime to the end of its answer: queueing and cold start included.",
		Buckets: prometheus.ExponentialBuckets(0.001, 2, 15),
	}, []string{"namespace", "service", "event_type"})
	r.registry.MustRegister(r.RequestDuration)
	r.eventTypes = map[serviceKey]int{}
	return r
}

// Handler serves the metrics in the Prometheus text format, or in the OpenMetrics format, which
// carries the exemplars, to a scraper that asks for it (Accept: application/openmetrics-text).
func (r *Runtime) Handler() http.Handler {
	return promhttp.HandlerFor(r.registry, promhttp.HandlerOpts{EnableOpenMetrics: true})
}

// MaxEventTypes bounds the event_type values of one Service's request metrics: the types that
// arrive once that many are counted go under OtherEventType, as do types longer than
// maxEventTypeLength or not valid UTF-8.
const MaxEventTypes = 32

// OtherEventType is the event_type of requests beyond MaxEventTypes.
const OtherEventType = "other"

const maxEventTypeLength = 200

// ExemplarTraceID is the exemplar label that carries a request's trace id.
const ExemplarTraceID = "trace_id"

type serviceKey struct{ namespace, service string }

type requestKey struct {
	serviceKey
	eventType string
}

// requestSeries caches the series of one (Service, event type), so an observation does not hash
// its labels again.
type requestSeries struct {
	eventType string // the label: the request's type, or OtherEventType
	duration  prometheus.Observer
	errors    prometheus.Counter
	byCode    sync.Map // int → prometheus.Counter
}

// ObserveRequest records one request a Service answered (serving.RequestObserver): its
// CloudEvent type ("" for a request that is not a binary-mode CloudEvent), HTTP status,
// duration, and the trace id of a sampled trace it belongs to ("" for none), which becomes the
// exemplar of each series it counts in.
func (r *Runtime) ObserveRequest(namespace, service, eventType string, status int, d time.Duration, traceID string) {
	s := r.series(namespace, service, eventType)
	code, ok := s.byCode.Load(status)
	if !ok {
		code, _ = s.byCode.LoadOrStore(status, r.Requests.WithLabelValues(namespace, service, s.eventType, strconv.Itoa(status)))
	}
	requests := code.(prometheus.Counter)
	if traceID == "" {
		requests.Inc()
		s.duration.Observe(d.Seconds())
		if status >= 500 {
			s.errors.Inc()
		}
		return
	}
	exemplar := prometheus.Labels{ExemplarTraceID: traceID}
	requests.(prometheus.ExemplarAdder).AddWithExemplar(1, exemplar)
	s.duration.(prometheus.ExemplarObserver).ObserveWithExemplar(d.Seconds(), exemplar)
	if status >= 500 {
		s.errors.(prometheus.ExemplarAdder).AddWithExemplar(1, exemplar)
	}
}

// series returns the cached series of a Service's event type, making them the first time, with
// the type bounded to MaxEventTypes per Service.
func (r *Runtime) series(namespace, service, eventType string) *requestSeries {
	key := requestKey{serviceKey{namespace, service}, eventType}
	if s, ok := r.requestSeries.Load(key); ok {
		return s.(*requestSeries)
	}
	r.eventTypesMu.Lock()
	defer r.eventTypesMu.Unlock()
	if s, ok := r.requestSeries.Load(key); ok {
		return s.(*requestSeries)
	}
	if len(eventType) > maxEventTypeLength || !utf8.ValidString(eventType) || r.eventTypes[key.serviceKey] >= MaxEventTypes {
		key.eventType = OtherEventType
		if s, ok := r.requestSeries.Load(key); ok {
			return s.(*requestSeries)
		}
	}
	s := &requestSeries{
		eventType: key.eventType,
		duration:  r.RequestDuration.WithLabelValues(namespace, service, key.eventType),
		errors:    r.RequestErrors.WithLabelValues(namespace, service, key.eventType),
	}
	r.requestSeries.Store(key, s)
	if key.eventType != OtherEventType {
		r.eventTypes[key.serviceKey]++
	}
	return s
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
