// Package tracestore keeps the spans `knfaas up` receives over OTLP/HTTP in memory, bounded by
// age and bytes, finds the traces of an event, and optionally forwards what it receives to an
// external OTLP/HTTP collector.
package tracestore

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"mime"
	"net/http"
	"sort"
	"strconv"
	"strings"
	"sync"
	"time"

	coltracepb "go.opentelemetry.io/proto/otlp/collector/trace/v1"
	commonpb "go.opentelemetry.io/proto/otlp/common/v1"
	tracepb "go.opentelemetry.io/proto/otlp/trace/v1"
	"google.golang.org/protobuf/proto"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Environment variables of `knfaas up` that configure the store.
const (
	// EnvMaxAge bounds how long a span is kept (a Go duration; default DefaultMaxAge).
	EnvMaxAge = "KNFAAS_TRACES_MAX_AGE"
	// EnvMaxBytes bounds the memory the spans take (bytes; default DefaultMaxBytes).
	EnvMaxBytes = "KNFAAS_TRACES_MAX_BYTES"
	// EnvForward is an external OTLP/HTTP endpoint (http://host:4318) every received batch is
	// also sent to, at POST <endpoint>/v1/traces.
	EnvForward = "KNFAAS_TRACES_FORWARD"
)

// Defaults and fixed bounds.
const (
	DefaultMaxAge   = 30 * time.Minute
	DefaultMaxBytes = 64 << 20
	// MaxRequestBytes bounds one OTLP request body, after decompression.
	MaxRequestBytes = 4 << 20
	// maxAttributes and maxValueBytes bound what one span keeps.
	maxAttributes = 64
	// maxLinks bounds the links one span keeps.
	maxLinks      = 16
	maxValueBytes = 1024
	// forwardQueue bounds the batches waiting to be forwarded; more are dropped (and counted).
	forwardQueue = 256
)

// Span is one stored span.
type Span struct {
	TraceID       string            `json:"traceId"`
	SpanID        string            `json:"spanId"`
	ParentSpanID  string            `json:"parentSpanId,omitempty"`
	Name          string            `json:"name"`
	Service       string            `json:"service,omitempty"`
	Kind          string            `json:"kind,omitempty"`
	Start         time.Time         `json:"start"`
	End           time.Time         `json:"end"`
	Status        string            `json:"status,omitempty"`
	StatusMessage string            `json:"statusMessage,omitempty"`
	Attributes    map[string]string `json:"attributes,omitempty"`
	// Links are the spans this one links to, outside its parent chain (a fired deadline's link
	// to the process step that scheduled it, in another trace).
	Links []Link `json:"links,omitempty"`
}

// Link names a linked span.
type Link struct {
	TraceID string `json:"traceId"`
	SpanID  string `json:"spanId"`
}

// size is what the span is counted as against the byte bound.
func (s *Span) size() int64 {
	n := 200 + len(s.TraceID) + len(s.SpanID) + len(s.ParentSpanID) + len(s.Name) + len(s.Service) + len(s.Kind) + len(s.Status) + len(s.StatusMessage)
	for k, v := range s.Attributes {
		n += 32 + len(k) + len(v)
	}
	n += len(s.Links) * 64
	return int64(n)
}

// Trace is the spans of one trace, by start time.
type Trace struct {
	TraceID string `json:"traceId"`
	Spans   []Span `json:"spans"`
}

// Options bound a Store.
type Options struct {
	MaxAge   time.Duration
	MaxBytes int64
	// Forward is an external OTLP/HTTP endpoint base; empty forwards nothing.
	Forward string
	Log     *slog.Logger
	// Now is the clock (time.Now when nil).
	Now func() time.Time
}

// OptionsFromEnv reads EnvMaxAge, EnvMaxBytes and EnvForward, refusing a bad value by name.
func OptionsFromEnv(getenv func(string) string) (Options, error) {
	o := Options{MaxAge: DefaultMaxAge, MaxBytes: DefaultMaxBytes, Forward: strings.TrimSuffix(getenv(EnvForward), "/")}
	if v := getenv(EnvMaxAge); v != "" {
		d, err := time.ParseDuration(v)
		if err != nil || d <= 0 {
			return o, fmt.Errorf("%s=%q: want a positive duration (30m)", EnvMaxAge, v)
		}
		o.MaxAge = d
	}
	if v := getenv(EnvMaxBytes); v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil || n <= 0 {
			return o, fmt.Errorf("%s=%q: want a positive number of bytes", EnvMaxBytes, v)
		}
		o.MaxBytes = n
	}
	if o.Forward != "" && !strings.HasPrefix(o.Forward, "http://") && !strings.HasPrefix(o.Forward, "https://") {
		return o, fmt.Errorf("%s=%q: want an http(s) OTLP/HTTP endpoint (http://localhost:4318)", EnvForward, o.Forward)
	}
	return o, nil
}

type entry struct {
	span    Span
	arrived time.Time
	size    int64
}

// Store holds spans, oldest first.
type Store struct {
	opts Options

	mu      sync.Mutex
	queue   []*entry // arrival order; the head is evicted first
	head    int
	byTrace map[string][]*entry
	byEvent map[string]map[string]int // event id → trace id → spans naming the event
	bytes   int64

	forward chan []byte
	client  *http.Client
	dropped int
}

// New returns an empty Store. With opts.Forward set, Run must be running to forward.
func New(opts Options) *Store {
	if opts.MaxAge <= 0 {
		opts.MaxAge = DefaultMaxAge
	}
	if opts.MaxBytes <= 0 {
		opts.MaxBytes = DefaultMaxBytes
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Log == nil {
		opts.Log = slog.New(slog.NewTextHandler(io.Discard, nil))
	}
	s := &Store{opts: opts, byTrace: map[string][]*entry{}, byEvent: map[string]map[string]int{}}
	if opts.Forward != "" {
		s.forward = make(chan []byte, forwardQueue)
		s.client = &http.Client{Timeout: 10 * time.Second}
	}
	return s
}

// Add stores spans, then evicts the oldest until the store is within its bounds.
func (s *Store) Add(spans []Span) {
	now := s.opts.Now()
	s.mu.Lock()
	defer s.mu.Unlock()
	for i := range spans {
		e := &entry{span: spans[i], arrived: now, size: spans[i].size()}
		s.queue = append(s.queue, e)
		s.byTrace[e.span.TraceID] = append(s.byTrace[e.span.TraceID], e)
		if id := e.span.Attributes[tracing.AttrEventID]; id != "" {
			if s.byEvent[id] == nil {
				s.byEvent[id] = map[string]int{}
			}
			s.byEvent[id][e.span.TraceID]++
		}
		s.bytes += e.size
	}
	s.evictLocked(now)
}

func (s *Store) evictLocked(now time.Time) {
	for s.head < len(s.queue) {
		e := s.queue[s.head]
		if s.bytes <= s.opts.MaxBytes && now.Sub(e.arrived) <= s.opts.MaxAge {
			break
		}
		s.queue[s.head] = nil
		s.head++
		s.bytes -= e.size
		tid := e.span.TraceID
		rest := s.byTrace[tid]
		for i, x := range rest {
			if x == e {
				rest = append(rest[:i], rest[i+1:]...)
				break
			}
		}
		if len(rest) == 0 {
			delete(s.byTrace, tid)
		} else {
			s.byTrace[tid] = rest
		}
		if id := e.span.Attributes[tracing.AttrEventID]; id != "" {
			if s.byEvent[id][tid]--; s.byEvent[id][tid] <= 0 {
				delete(s.byEvent[id], tid)
				if len(s.byEvent[id]) == 0 {
					delete(s.byEvent, id)
				}
			}
		}
	}
	// Compact the queue once its evicted head is the larger part.
	if s.head > 1024 && s.head > len(s.queue)/2 {
		s.queue = append([]*entry(nil), s.queue[s.head:]...)
		s.head = 0
	}
}

// Stats are the store's figures.
type Stats struct {
	Spans   int   `json:"spans"`
	Bytes   int64 `json:"bytes"`
	Dropped int   `json:"forwardDropped,omitempty"`
}

// Stats returns the spans held and their bytes.
func (s *Store) Stats() Stats {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evictLocked(s.opts.Now())
	return Stats{Spans: len(s.queue) - s.head, Bytes: s.bytes, Dropped: s.dropped}
}

// Trace returns the spans of one trace by start time; nil when none is held.
func (s *Store) Trace(traceID string) []Span {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evictLocked(s.opts.Now())
	return s.traceLocked(traceID)
}

func (s *Store) traceLocked(traceID string) []Span {
	es := s.byTrace[traceID]
	if len(es) == 0 {
		return nil
	}
	out := make([]Span, 0, len(es))
	for _, e := range es {
		out = append(out, e.span)
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].Start.Before(out[j].Start) })
	return out
}

// ByEvent returns every trace with a span about the event id (attribute
// cloudevents.event_id), oldest first.
func (s *Store) ByEvent(eventID string) []Trace {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evictLocked(s.opts.Now())
	var out []Trace
	for tid := range s.byEvent[eventID] {
		out = append(out, Trace{TraceID: tid, Spans: s.traceLocked(tid)})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Spans[0].Start.Before(out[j].Spans[0].Start) })
	return out
}

// ErrTooLarge is returned by Decode for a body over MaxRequestBytes.
var ErrTooLarge = errors.New("OTLP request larger than the limit")

// ReadRequest reads an OTLP/HTTP protobuf body, gunzipping it when the request says so, never
// more than MaxRequestBytes (decompressed).
func ReadRequest(r *http.Request) ([]byte, error) {
	var body io.Reader = http.MaxBytesReader(nil, r.Body, MaxRequestBytes)
	switch strings.ToLower(r.Header.Get("Content-Encoding")) {
	case "", "identity":
	case "gzip":
		zr, err := gzip.NewReader(body)
		if err != nil {
			return nil, fmt.Errorf("gzip body: %w", err)
		}
		defer zr.Close()
		body = zr
	default:
		return nil, fmt.Errorf("content encoding %q: want gzip or none", r.Header.Get("Content-Encoding"))
	}
	data, err := io.ReadAll(io.LimitReader(body, MaxRequestBytes+1))
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) || len(data) > MaxRequestBytes {
		return nil, ErrTooLarge
	}
	if err != nil {
		return nil, fmt.Errorf("reading the body: %w", err)
	}
	return data, nil
}

// Decode turns an ExportTraceServiceRequest into spans.
func Decode(data []byte) ([]Span, error) {
	var req coltracepb.ExportTraceServiceRequest
	if err := proto.Unmarshal(data, &req); err != nil {
		return nil, fmt.Errorf("not an OTLP ExportTraceServiceRequest: %w", err)
	}
	var out []Span
	for _, rs := range req.ResourceSpans {
		service := ""
		for _, kv := range rs.GetResource().GetAttributes() {
			if kv.Key == "service.name" {
				service = valueString(kv.Value)
			}
		}
		for _, ss := range rs.ScopeSpans {
			for _, sp := range ss.Spans {
				if len(sp.TraceId) != 16 || len(sp.SpanId) != 8 {
					return nil, fmt.Errorf("span %q: trace id of %d bytes and span id of %d bytes, want 16 and 8", sp.Name, len(sp.TraceId), len(sp.SpanId))
				}
				s := Span{
					TraceID: hex.EncodeToString(sp.TraceId), SpanID: hex.EncodeToString(sp.SpanId),
					Name: bounded(sp.Name), Service: bounded(service), Kind: kindName(sp.Kind),
					Start: time.Unix(0, int64(sp.StartTimeUnixNano)).UTC(), End: time.Unix(0, int64(sp.EndTimeUnixNano)).UTC(),
				}
				if len(sp.ParentSpanId) == 8 {
					s.ParentSpanID = hex.EncodeToString(sp.ParentSpanId)
				}
				switch sp.GetStatus().GetCode() {
				case tracepb.Status_STATUS_CODE_OK:
					s.Status = "ok"
				case tracepb.Status_STATUS_CODE_ERROR:
					s.Status = "error"
				}
				s.StatusMessage = bounded(sp.GetStatus().GetMessage())
				for i, kv := range sp.Attributes {
					if i == maxAttributes {
						break
					}
					if s.Attributes == nil {
						s.Attributes = map[string]string{}
					}
					s.Attributes[bounded(kv.Key)] = bounded(valueString(kv.Value))
				}
				for _, l := range sp.Links {
					if len(s.Links) == maxLinks {
						break
					}
					if len(l.TraceId) == 16 && len(l.SpanId) == 8 {
						s.Links = append(s.Links, Link{TraceID: hex.EncodeToString(l.TraceId), SpanID: hex.EncodeToString(l.SpanId)})
					}
				}
				out = append(out, s)
			}
		}
	}
	return out, nil
}

func bounded(s string) string {
	if len(s) > maxValueBytes {
		return s[:maxValueBytes]
	}
	return s
}

func valueString(v *commonpb.AnyValue) string {
	switch x := v.GetValue().(type) {
	case *commonpb.AnyValue_StringValue:
		return x.StringValue
	case *commonpb.AnyValue_IntValue:
		return strconv.FormatInt(x.IntValue, 10)
	case *commonpb.AnyValue_BoolValue:
		return strconv.FormatBool(x.BoolValue)
	case *commonpb.AnyValue_DoubleValue:
		return strconv.FormatFloat(x.DoubleValue, 'g', -1, 64)
	case *commonpb.AnyValue_BytesValue:
		return hex.EncodeToString(x.BytesValue)
	case nil:
		return ""
	}
	b, _ := json.Marshal(v)
	return string(b)
}

func kindName(k tracepb.Span_SpanKind) string {
	switch k {
	case tracepb.Span_SPAN_KIND_INTERNAL:
		return "internal"
	case tracepb.Span_SPAN_KIND_SERVER:
		return "server"
	case tracepb.Span_SPAN_KIND_CLIENT:
		return "client"
	case tracepb.Span_SPAN_KIND_PRODUCER:
		return "producer"
	case tracepb.Span_SPAN_KIND_CONSUMER:
		return "consumer"
	}
	return ""
}

// ReceiverPath is where the store takes OTLP/HTTP, below its mount point.
const ReceiverPath = "/v1/traces"

// ServeHTTP serves POST /v1/traces (OTLP/HTTP protobuf: 200 with an empty
// ExportTraceServiceResponse; 413 over MaxRequestBytes, 415 for another encoding, 400 for a
// body that does not decode) and GET /v1/traces?event_id=<id> or ?trace_id=<id> (JSON
// {"traces": [...]}).
func (s *Store) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	if r.URL.Path != ReceiverPath {
		http.Error(w, "OTLP traces are at "+ReceiverPath, http.StatusNotFound)
		return
	}
	switch r.Method {
	case http.MethodPost:
		s.receive(w, r)
	case http.MethodGet:
		var traces []Trace
		switch q := r.URL.Query(); {
		case q.Get("event_id") != "":
			traces = s.ByEvent(q.Get("event_id"))
		case q.Get("trace_id") != "":
			if spans := s.Trace(q.Get("trace_id")); spans != nil {
				traces = []Trace{{TraceID: q.Get("trace_id"), Spans: spans}}
			}
		default:
			http.Error(w, "want ?event_id=<id> or ?trace_id=<id>", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Type", "application/json")
		_ = json.NewEncoder(w).Encode(struct {
			Traces []Trace `json:"traces"`
		}{traces})
	default:
		w.Header().Set("Allow", "GET, POST")
		http.Error(w, "GET or POST", http.StatusMethodNotAllowed)
	}
}

func (s *Store) receive(w http.ResponseWriter, r *http.Request) {
	if mt, _, _ := mime.ParseMediaType(r.Header.Get("Content-Type")); mt != tracing.ContentTypeProtobuf {
		http.Error(w, "OTLP/HTTP protobuf only: Content-Type "+tracing.ContentTypeProtobuf, http.StatusUnsupportedMediaType)
		return
	}
	data, err := ReadRequest(r)
	if errors.Is(err, ErrTooLarge) {
		w.Header().Set("Connection", "close")
		http.Error(w, fmt.Sprintf("OTLP request larger than %d bytes", MaxRequestBytes), http.StatusRequestEntityTooLarge)
		return
	}
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	spans, err := Decode(data)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	s.Add(spans)
	s.enqueueForward(data)
	w.Header().Set("Content-Type", tracing.ContentTypeProtobuf)
	w.WriteHeader(http.StatusOK) // an empty ExportTraceServiceResponse: full success
}

func (s *Store) enqueueForward(data []byte) {
	if s.forward == nil {
		return
	}
	select {
	case s.forward <- data:
	default:
		s.mu.Lock()
		s.dropped++
		s.mu.Unlock()
	}
}

// Run forwards received batches to Options.Forward until ctx ends; without one it returns at once.
func (s *Store) Run(ctx context.Context) {
	if s.forward == nil {
		return
	}
	url := s.opts.Forward + ReceiverPath
	for {
		select {
		case <-ctx.Done():
			return
		case data := <-s.forward:
			req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(data))
			if err != nil {
				s.opts.Log.Error("forwarding spans", "to", url, "error", err)
				continue
			}
			req.Header.Set("Content-Type", tracing.ContentTypeProtobuf)
			resp, err := s.client.Do(req)
			if err != nil {
				s.opts.Log.Warn("forwarding spans failed; the batch is dropped", "to", url, "error", err)
				continue
			}
			_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
			resp.Body.Close()
			if resp.StatusCode/100 != 2 {
				s.opts.Log.Warn("forwarding spans refused; the batch is dropped", "to", url, "status", resp.Status)
			}
		}
	}
}
