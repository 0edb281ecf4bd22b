package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/binding"
	"github.com/cloudevents/sdk-go/v2/binding/format"
	"github.com/cloudevents/sdk-go/v2/binding/spec"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/cloudevents/sdk-go/v2/types"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/redis/go-redis/v9"
	"go.uber.org/zap"
	"k8s.io/apimachinery/pkg/api/resource"
	knbroker "knative.dev/eventing/pkg/broker"

	"github.com/knfaas/knfaas/internal/function/eventsize"
	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// DefaultTTL is the number of broker hops an event may make before it is dropped, the value the
// Knative MT broker ingress uses.
const DefaultTTL = 255

// MaxEventBytesAnnotation on a Broker sets the largest event, attributes and data as stored, its
// ingress accepts: a byte count or a Kubernetes quantity ("1Mi"). It may lower the bound, not
// raise it over eventsize.DefaultMaxEventBytes: every store an event reaches downstream (the
// dead-letter store, the parked events) accepts that much and no more.
const MaxEventBytesAnnotation = "knfaas.dev/max-event-bytes"

// MaxEventBytesOf is the maximum event size a Broker with these annotations accepts:
// MaxEventBytesAnnotation, or eventsize.DefaultMaxEventBytes without it.
func MaxEventBytesOf(annotations map[string]string) (int64, error) {
	v, ok := annotations[MaxEventBytesAnnotation]
	if !ok {
		return eventsize.DefaultMaxEventBytes, nil
	}
	n, err := ParseMaxEventBytes(v)
	if err != nil {
		return 0, fmt.Errorf("metadata.annotations[%s]: %w", MaxEventBytesAnnotation, err)
	}
	return n, nil
}

// ParseMaxEventBytes reads a MaxEventBytesAnnotation value.
func ParseMaxEventBytes(v string) (int64, error) {
	q, err := resource.ParseQuantity(strings.TrimSpace(v))
	if err != nil {
		return 0, fmt.Errorf("%q is not a byte count (e.g. 1048576 or 1Mi): %w", v, err)
	}
	n, ok := q.AsInt64()
	if !ok || n <= 0 || n > eventsize.DefaultMaxEventBytes {
		return 0, fmt.Errorf("%q is out of range: 1 to %d bytes", v, eventsize.DefaultMaxEventBytes)
	}
	return n, nil
}

// ReplyTTLParam carries the TTL of the event a reply answers; the reply gets it back, as the
// Knative broker filter reattaches it, so reply loops end.
const ReplyTTLParam = "knfaas-ttl"

// Ingress accepts events for brokers at /<namespace>/<broker>.
type Ingress struct {
	store   *Store
	log     *slog.Logger
	metrics *metrics.Runtime

	mu sync.RWMutex
	// brokers holds the maximum event size of each known broker.
	brokers map[string]int64
	// full marks brokers whose backlog is over the limit: they refuse events with 503 until
	// their triggers catch up.
	full map[string]bool
	// accepted holds each known broker's accepted-events counter, looked up once.
	accepted map[string]prometheus.Counter

	// leaseOwner, when set, makes Maintain trim a stream only while this ingress holds the
	// stream's trim lease (ShareTrims).
	leaseOwner string
	leaseTTL   time.Duration
}

// NewIngress returns an ingress for no brokers; Add registers them.
func NewIngress(store *Store, log *slog.Logger, m *metrics.Runtime) *Ingress {
	if m != nil && store != nil {
		store.CountLookups(m.AppendLookups)
	}
	return &Ingress{store: store, log: log, metrics: m, brokers: map[string]int64{}, full: map[string]bool{}, accepted: map[string]prometheus.Counter{}}
}

// Add makes a broker known. It accepts events of up to maxEventBytes (attributes and data, as
// stored); 0 means eventsize.DefaultMaxEventBytes.
func (in *Ingress) Add(namespace, name string, maxEventBytes int64) {
	if maxEventBytes <= 0 {
		maxEventBytes = eventsize.DefaultMaxEventBytes
	}
	in.mu.Lock()
	in.brokers[namespace+"/"+name] = maxEventBytes
	in.accepted[namespace+"/"+name] = nil // created on the first event
	in.mu.Unlock()
}

// Remove makes a broker unknown: its ingress path answers 404 from now on.
func (in *Ingress) Remove(namespace, name string) {
	in.mu.Lock()
	delete(in.brokers, namespace+"/"+name)
	delete(in.full, namespace+"/"+name)
	delete(in.accepted, namespace+"/"+name)
	in.mu.Unlock()
}

// Brokers lists the known brokers as namespace/name.
func (in *Ingress) Brokers() []string { return in.brokerKeys() }

// Path is the ingress path of a broker.
func Path(namespace, name string) string { return "/" + namespace + "/" + name }

// ServeHTTP stores a binary or structured CloudEvent and answers 202 once it is durable. Redis
// failing to store it answers 503 with Retry-After only when the event was not stored and
// never will be; when Redis answered neither the append nor its lookup (see Store), whether it
// was stored is unknown: 504 with Retry-After and a message naming the event's id.
func (in *Ingress) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	parts := strings.Split(strings.Trim(r.URL.Path, "/"), "/")
	if len(parts) != 2 {
		http.Error(w, "broker ingress paths are /<namespace>/<broker>", http.StatusNotFound)
		return
	}
	key := parts[0] + "/" + parts[1]
	in.mu.RLock()
	maxBytes, full := in.brokers[key], in.full[key]
	in.mu.RUnlock()
	if maxBytes == 0 {
		http.Error(w, fmt.Sprintf("broker %s not found", key), http.StatusNotFound)
		return
	}
	if r.Method != http.MethodPost {
		w.Header().Set("Allow", http.MethodPost)
		http.Error(w, "broker ingress accepts only POST", http.StatusMethodNotAllowed)
		return
	}
	if full {
		in.metrics.EventsRejected.WithLabelValues(key, "503").Inc()
		w.Header().Set("Retry-After", "5")
		http.Error(w, fmt.Sprintf("broker %s has reached its backlog limit; its triggers are behind: retry later", key), http.StatusServiceUnavailable)
		return
	}
	status, err := in.receive(r.Context(), w, r, parts[0], parts[1], maxBytes)
	if err != nil {
		in.metrics.EventsRejected.WithLabelValues(key, strconv.Itoa(status)).Inc()
		switch status {
		case http.StatusServiceUnavailable:
			w.Header().Set("Retry-After", "1")
			in.log.Error("storing event failed", "broker", key, "error", err)
		case http.StatusGatewayTimeout:
			w.Header().Set("Retry-After", "1")
			in.log.Error("whether an event was stored is unknown", "broker", key, "error", err)
		}
		http.Error(w, err.Error(), status)
		return
	}
	in.acceptedCounter(key).Inc()
	w.WriteHeader(http.StatusAccepted)
}

// acceptedCounter is the accepted-events counter of broker key, created on its first event.
func (in *Ingress) acceptedCounter(key string) prometheus.Counter {
	in.mu.RLock()
	c := in.accepted[key]
	in.mu.RUnlock()
	if c != nil {
		return c
	}
	c = in.metrics.EventsAccepted.WithLabelValues(key)
	in.mu.Lock()
	if _, known := in.accepted[key]; known {
		in.accepted[key] = c
	}
	in.mu.Unlock()
	return c
}

// ttlDefaulter sets or decrements an accepted event's broker TTL, as the Knative broker ingress.
var ttlDefaulter = knbroker.TTLDefaulter(zap.NewNop(), DefaultTTL)

func (in *Ingress) receive(ctx context.Context, w http.ResponseWriter, r *http.Request, namespace, name string, maxBytes int64) (int, error) {
	// A binary-mode body is the data; a structured-mode body also holds the attributes and may
	// carry the data base64-encoded or JSON-escaped, so it may be larger than what is stored.
	structured := format.Lookup(r.Header.Get("Content-Type")) != nil
	bodyLimit := maxBytes
	if structured {
		bodyLimit = 2 * maxBytes
	}
	r.Body = http.MaxBytesReader(w, r.Body, bodyLimit)
	msg := cehttp.NewMessageFromHttpRequest(r)
	defer msg.Finish(nil)
	if msg.ReadEncoding() == binding.EncodingUnknown {
		return http.StatusBadRequest, errors.New("not a CloudEvent: send binary mode (ce-* headers) or structured mode (Content-Type: application/cloudevents+json)")
	}
	event, err := binding.ToEvent(ctx, msg)
	if err != nil {
		var mbe *http.MaxBytesError
		if errors.As(err, &mbe) {
			what := "event data (the binary-mode body)"
			if structured {
				what = "structured-mode event (twice the stored maximum: base64 and JSON escaping grow data)"
			}
			return http.StatusRequestEntityTooLarge, fmt.Errorf("%s larger than %d bytes; broker %s/%s accepts events of at most %d bytes (%s)",
				what, bodyLimit, namespace, name, maxBytes, MaxEventBytesAnnotation)
		}
		if isTimeout(err) {
			// The body did not arrive within the server's read timeout: the connection can carry
			// nothing more, so it is closed with the answer.
			w.Header().Set("Connection", "close")
			return http.StatusRequestTimeout, fmt.Errorf("the event's body did not arrive in time: %w", err)
		}
		if errors.Is(err, io.ErrUnexpectedEOF) {
			w.Header().Set("Connection", "close")
		}
		return http.StatusBadRequest, fmt.Errorf("invalid CloudEvent: %w", err)
	}
	if err := event.Validate(); err != nil {
		return http.StatusBadRequest, fmt.Errorf("invalid CloudEvent: %w", err)
	}
	if err := checkAttributeSizes(event); err != nil {
		return http.StatusBadRequest, err
	}
	if structured && !event.DataBase64 && len(event.DataEncoded) > 0 && isJSONMediaType(event.DataMediaType()) {
		// The SDK keeps the whitespace between "data": and the value; it is the envelope's,
		// not the data's.
		event.DataEncoded = bytes.TrimLeft(event.DataEncoded, jsonSpace)
	}
	if v := r.URL.Query().Get(ReplyTTLParam); v != "" {
		if ttl, err := strconv.Atoi(v); err == nil {
			_ = knbroker.SetTTL(event.Context, int32(ttl))
		}
	}
	*event = ttlDefaulter(ctx, *event)
	if ttl, err := knbroker.GetTTL(event.Context); err != nil || ttl <= 0 {
		return http.StatusBadRequest, fmt.Errorf("event %s exhausted its broker TTL (%s): a reply loop?", event.ID(), knbroker.TTLAttribute)
	}
	ctx, span := startIngressSpan(ctx, r, event, namespace+"/"+name)
	defer span.End()
	entry, err := EncodeEntry(event)
	if err != nil {
		return http.StatusBadRequest, err
	}
	if int64(entry.Size()) > maxBytes {
		return http.StatusRequestEntityTooLarge, fmt.Errorf("event %s is %d bytes (attributes and data); broker %s/%s accepts events of at most %d bytes (%s)",
			event.ID(), entry.Size(), namespace, name, maxBytes, MaxEventBytesAnnotation)
	}
	if _, err := in.store.Append(ctx, StreamKey(namespace, name), entry.Fields()...); err != nil {
		tracing.End(span, err)
		if errors.Is(err, ErrAppendOutcomeUnknown) {
			// Not 503, which promises the event was not stored: it may have been, once.
			return http.StatusGatewayTimeout, fmt.Errorf("event %s (source %s): the outcome is unknown, it may or may not have been stored: %w; "+
				"a retry may store it a second time, with the same source and id, which subscribers deduplicate by", event.ID(), event.Source(), err)
		}
		return http.StatusServiceUnavailable, err
	}
	return http.StatusAccepted, nil
}

// checkAttributeSizes refuses an event no subscriber could receive: in binary mode every
// attribute travels as an HTTP header, and servers and proxies bound headers.
func checkAttributeSizes(e *cloudevents.Event) error {
	total := 0
	largest, largestSize := "", 0
	add := func(name string, value any) error {
		s, err := types.Format(value)
		if err != nil {
			return fmt.Errorf("invalid CloudEvent: attribute %q: %w", name, err)
		}
		if len(s) > eventsize.MaxAttributeValueBytes {
			return fmt.Errorf("attribute %q is %d bytes; an attribute value may be at most %d bytes (it travels as an HTTP header)",
				name, len(s), eventsize.MaxAttributeValueBytes)
		}
		total += len(name) + len(s)
		if len(s) > largestSize {
			largest, largestSize = name, len(s)
		}
		return nil
	}
	for _, a := range spec.VS.Version(e.SpecVersion()).Attributes() {
		if v := a.Get(e.Context); v != nil {
			if err := add(a.Name(), v); err != nil {
				return err
			}
		}
	}
	for name, v := range e.Extensions() {
		if err := add(name, v); err != nil {
			return err
		}
	}
	if total > eventsize.MaxAttributesBytes {
		return fmt.Errorf("attributes are %d bytes together (largest: %q, %d bytes); an event's attribute names and values may be at most %d bytes (they travel as HTTP headers)",
			total, largest, largestSize, eventsize.MaxAttributesBytes)
	}
	return nil
}

// Maintain trims every broker's stream of the entries all its triggers have acknowledged and
// marks a broker full while its stream still holds more than maxBacklog entries, every
// interval until ctx ends. Nothing pending is ever trimmed: a full broker pushes back on
// senders instead.
func (in *Ingress) Maintain(ctx context.Context, rdb redis.UniversalClient, interval time.Duration, maxBacklog int64) {
	t := time.NewTicker(interval)
	defer t.Stop()
	for {
		in.maintainOnce(ctx, rdb, maxBacklog)
		select {
		case <-ctx.Done():
			in.releaseTrimLeases(rdb)
			return
		case <-t.C:
		}
	}
}

// TrimLeaseKey is the Redis key whose holder trims a stream when several ingress replicas
// share it (ShareTrims); its value is the holder's name.
func TrimLeaseKey(stream string) string { return "knfaas:broker:trimlease:" + stream }

// ShareTrims makes this ingress one of several replicas serving the same brokers: Maintain
// trims a broker's stream only while this replica holds the stream's lease (TrimLeaseKey),
// taken when free, kept by every Maintain round of its holder and lapsing ttl after the last
// one, so a replica that is gone hands the trims over. owner names this replica (its pod
// name) and must differ between replicas. It must be called before Maintain.
//
// The lease only spares Redis duplicate work: every trim is one atomic script (Trim), safe
// under any interleaving with acknowledgements and with another replica's trim, so a lease
// that lapses during a slow round cannot make a trim remove an unacknowledged entry.
func (in *Ingress) ShareTrims(owner string, ttl time.Duration) {
	in.leaseOwner, in.leaseTTL = owner, ttl
}

// leaseScript takes or renews the lease KEYS[1] for ARGV[1] for ARGV[2] milliseconds and
// answers 1, or answers 0 when another owner holds it.
var leaseScript = redis.NewScript(`
local holder = redis.call('GET', KEYS[1])
if holder and holder ~= ARGV[1] then return 0 end
redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
return 1
`)

// releaseScript deletes the lease KEYS[1] if ARGV[1] holds it.
var releaseScript = redis.NewScript(`
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
`)

// holdsTrimLease takes or renews the trim lease of stream; without ShareTrims every ingress
// trims.
func (in *Ingress) holdsTrimLease(ctx context.Context, rdb redis.UniversalClient, stream string) (bool, error) {
	if in.leaseOwner == "" {
		return true, nil
	}
	n, err := leaseScript.Run(ctx, rdb, []string{TrimLeaseKey(stream)}, in.leaseOwner, in.leaseTTL.Milliseconds()).Int()
	if err != nil {
		return false, fmt.Errorf("taking the trim lease of %s: %w", stream, err)
	}
	return n == 1, nil
}

// releaseTrimLeases hands the leases this ingress holds over at once, instead of after their ttl.
func (in *Ingress) releaseTrimLeases(rdb redis.UniversalClient) {
	if in.leaseOwner == "" {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
	defer cancel()
	for _, key := range in.brokerKeys() {
		ns, name, _ := strings.Cut(key, "/")
		_ = releaseScript.Run(ctx, rdb, []string{TrimLeaseKey(StreamKey(ns, name))}, in.leaseOwner).Err()
	}
}

func (in *Ingress) brokerKeys() []string {
	in.mu.RLock()
	defer in.mu.RUnlock()
	keys := make([]string, 0, len(in.brokers))
	for k := range in.brokers {
		keys = append(keys, k)
	}
	return keys
}

func (in *Ingress) maintainOnce(ctx context.Context, rdb redis.UniversalClient, maxBacklog int64) {
	for _, key := range in.brokerKeys() {
		ns, name, _ := strings.Cut(key, "/")
		stream := StreamKey(ns, name)
		holds, err := in.holdsTrimLease(ctx, rdb, stream)
		if err != nil {
			in.log.Warn("trimming broker stream failed", "broker", key, "error", err)
			continue
		}
		if holds {
			if _, err := Trim(ctx, rdb, stream); err != nil {
				in.log.Warn("trimming broker stream failed", "broker", key, "error", err)
				continue
			}
		}
		n, err := rdb.XLen(ctx, stream).Result()
		if err != nil {
			continue
		}
		full := maxBacklog > 0 && n > maxBacklog
		in.mu.Lock()
		was := in.full[key]
		in.full[key] = full
		in.mu.Unlock()
		if full != was {
			in.log.Warn("broker backlog limit", "broker", key, "entries", n, "limit", maxBacklog, "refusing_events", full)
		}
	}
}

// isTimeout reports a read that hit a deadline (the server's read timeout).
func isTimeout(err error) bool {
	var ne net.Error
	return errors.Is(err, os.ErrDeadlineExceeded) || (errors.As(err, &ne) && ne.Timeout())
}
