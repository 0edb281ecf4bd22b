package dashboard

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"html/template"
	"net/http"
	"net/url"
	"regexp"
	"strconv"
	"strings"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	dto "github.com/prometheus/client_model/go"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

var templateFuncs = template.FuncMap{
	// pathEscape makes an id one path segment, whatever it holds ("/", "?", "#").
	"pathEscape": url.PathEscape,
	"time": func(t time.Time) string {
		if t.IsZero() {
			return "-"
		}
		return t.UTC().Format("2006-01-02 15:04:05.000")
	},
	"dash": func(s string) string {
		if s == "" {
			return "-"
		}
		return s
	},
}

// limitParam reads ?limit= within 1..MaxLimit (DefaultLimit when absent).
func limitParam(r *http.Request) (int, error) {
	v := r.URL.Query().Get("limit")
	if v == "" {
		return DefaultLimit, nil
	}
	n, err := strconv.Atoi(v)
	if err != nil || n < 1 || n > MaxLimit {
		return 0, fmt.Errorf("%w: limit %q: want 1 to %d", errBadParam, truncate(v, 20), MaxLimit)
	}
	return n, nil
}

// idParam reads the path's {id}, at most maxIDLength bytes.
func idParam(r *http.Request) (string, error) {
	id := r.PathValue("id")
	if id == "" || len(id) > maxIDLength {
		return "", fmt.Errorf("%w: id: want 1 to %d bytes", errBadParam, maxIDLength)
	}
	return id, nil
}

// counters sums the values of a metric vector by the values of labels, joined by "|".
func counters(c prometheus.Collector, labels ...string) map[string]float64 {
	out := map[string]float64{}
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil {
			continue
		}
		values := make([]string, len(labels))
		for i, name := range labels {
			for _, lp := range d.GetLabel() {
				if lp.GetName() == name {
					values[i] = lp.GetValue()
				}
			}
		}
		v := d.GetCounter().GetValue() + d.GetGauge().GetValue()
		out[strings.Join(values, "|")] += v
	}
	return out
}

type serviceRow struct {
	Key                   string
	Instances, ColdStarts int
	ColdStartAvg          string
}

func (h *Handler) services(w http.ResponseWriter, r *http.Request) {
	var cold, coldSum, coldCount map[string]float64
	if m := h.opts.Metrics; m != nil {
		cold = counters(m.ColdStarts, "namespace", "service")
		coldSum, coldCount = histogram(m.ColdStartSeconds, "namespace", "service")
	}
	rows := make([]serviceRow, 0, len(h.opts.Services))
	for _, s := range h.opts.Services {
		k := strings.Replace(s.Key, "/", "|", 1)
		row := serviceRow{Key: s.Key, ColdStarts: int(cold[k]), ColdStartAvg: "-"}
		if s.Instances != nil {
			row.Instances = s.Instances()
		}
		if n := coldCount[k]; n > 0 {
			row.ColdStartAvg = tracestore.RoundDuration(time.Duration(coldSum[k] / n * float64(time.Second)))
		}
		rows = append(rows, row)
	}
	h.render(w, r, http.StatusOK, "services", rows)
}

// histogram returns the sums and counts of a histogram vector by labels.
func histogram(c prometheus.Collector, labels ...string) (sum, count map[string]float64) {
	sum, count = map[string]float64{}, map[string]float64{}
	ch := make(chan prometheus.Metric, 64)
	go func() { c.Collect(ch); close(ch) }()
	for m := range ch {
		var d dto.Metric
		if m.Write(&d) != nil || d.GetHistogram() == nil {
			continue
		}
		values := make([]string, len(labels))
		for i, name := range labels {
			for _, lp := range d.GetLabel() {
				if lp.GetName() == name {
					values[i] = lp.GetValue()
				}
			}
		}
		k := strings.Join(values, "|")
		sum[k] += d.GetHistogram().GetSampleSum()
		count[k] += float64(d.GetHistogram().GetSampleCount())
	}
	return sum, count
}

type triggerRow struct {
	Trigger
	Delivered, Retried, DeadLettered, Failed, Dropped, Parked, Filtered int
}

func (h *Handler) triggers(w http.ResponseWriter, r *http.Request) {
	rows := make([]triggerRow, 0, len(h.opts.Triggers))
	var delivered, retried, dead, failed, dropped, parked, filtered map[string]float64
	if m := h.opts.Metrics; m != nil {
		delivered = counters(m.EventsDelivered, "broker", "trigger")
		retried = counters(m.EventsRetried, "broker", "trigger")
		dead = counters(m.EventsDeadLettered, "broker", "trigger")
		failed = counters(m.EventsFailed, "broker", "trigger")
		dropped = counters(m.EventsDropped, "broker", "trigger")
		parked = counters(m.EventsParked, "broker", "trigger")
		filtered = counters(m.EventsFiltered, "broker", "trigger")
	}
	for _, t := range h.opts.Triggers {
		k := t.Broker + "|" + t.Key
		rows = append(rows, triggerRow{Trigger: t, Delivered: int(delivered[k]), Retried: int(retried[k]), DeadLettered: int(dead[k]),
			Failed: int(failed[k]), Dropped: int(dropped[k]), Parked: int(parked[k]), Filtered: int(filtered[k])})
	}
	h.render(w, r, http.StatusOK, "triggers", rows)
}

type eventsPage struct {
	TracingOff bool
	Events     []tracestore.RecentEvent
}

func (h *Handler) events(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err)
		return
	}
	if h.opts.Traces == nil {
		h.render(w, r, http.StatusOK, "events", eventsPage{TracingOff: true})
		return
	}
	h.render(w, r, http.StatusOK, "events", eventsPage{Events: h.opts.Traces.RecentEvents(limit)})
}

// waterfallRow is one span of a journey: its depth in the tree, and its bar on a 0..1000 scale
// of the trace's length.
type waterfallRow struct {
	*tracestore.TreeSpan
	Depth   int
	X, W    int
	Details string
}

type journeyTrace struct {
	tracestore.Tree
	Rows      []waterfallRow
	Truncated bool
}

type journeyPage struct {
	EventID    string
	TracingOff bool
	Traces     []journeyTrace
	Truncated  bool
}

// spanDetails are the attributes a waterfall row shows after a span's name, as `knfaas trace`.
var spanDetails = []struct{ key, label string }{
	{tracing.AttrAttempt, "attempt"},
	{"http.response.status_code", "status"},
	{"knfaas.delivery.outcome", "outcome"},
	{"knfaas.reply.id", "reply"},
}

// maxDepth bounds the indentation of a waterfall row.
const maxDepth = 15

func (h *Handler) journey(w http.ResponseWriter, r *http.Request) {
	id, err := idParam(r)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err)
		return
	}
	page := journeyPage{EventID: id, TracingOff: h.opts.Traces == nil}
	if h.opts.Traces == nil {
		h.render(w, r, http.StatusOK, "journey", page)
		return
	}
	traces := h.opts.Traces.ByEvent(id)
	if len(traces) > maxTraces {
		traces, page.Truncated = traces[len(traces)-maxTraces:], true
	}
	budget := maxSpans
	for _, t := range traces {
		tree := tracestore.BuildTree(t)
		jt := journeyTrace{Tree: tree}
		var walk func(ns []*tracestore.TreeSpan, depth int)
		walk = func(ns []*tracestore.TreeSpan, depth int) {
			for _, n := range ns {
				if budget == 0 {
					jt.Truncated = true
					return
				}
				budget--
				row := waterfallRow{TreeSpan: n, Depth: min(depth, maxDepth), X: 0, W: 1000}
				if tree.Length > 0 {
					row.X = int(n.Begin * 1000 / tree.Length)
					row.W = int(n.Length * 1000 / tree.Length)
				}
				row.W = max(row.W, 2)
				row.X = min(row.X, 998)
				var details []string
				for _, d := range spanDetails {
					if v := n.Attributes[d.key]; v != "" {
						details = append(details, d.label+"="+v)
					}
				}
				if n.Status == "error" {
					details = append(details, strings.TrimSpace("error "+truncate(n.Message, 200)))
				}
				row.Details = strings.Join(details, ", ")
				jt.Rows = append(jt.Rows, row)
				walk(n.Children, depth+1)
			}
		}
		walk(tree.Spans, 0)
		page.Traces = append(page.Traces, jt)
	}
	h.render(w, r, http.StatusOK, "journey", page)
}

type lettersPage struct {
	Letters []deadletter.Letter
	Limit   int
	More    bool
}

func (h *Handler) deadLetters(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err)
		return
	}
	if h.opts.DeadLetters == nil {
		h.fail(w, r, http.StatusServiceUnavailable, errNoRedis)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	letters, err := h.opts.DeadLetters.List(ctx, deadletter.Filter{Limit: limit + 1, OmitEvent: true})
	if err != nil {
		h.fail(w, r, http.StatusBadGateway, fmt.Errorf("reading the dead letters: %w", err))
		return
	}
	page := lettersPage{Letters: letters, Limit: limit}
	if len(letters) > limit {
		page.Letters, page.More = letters[:limit], true
	}
	h.render(w, r, http.StatusOK, "deadletters", page)
}

// errNoRedis is the error of pages that read Redis when the run has none.
var errNoRedis = errors.New("no Redis in this run: dead letters, processes and tasks are not available")

// letterID is the form of a letter id: a Redis stream entry id.
var letterID = regexp.MustCompile(`^[0-9]{1,20}-[0-9]{1,20}$`)

type letterPage struct {
	deadletter.Letter
	Event          string
	Truncated      bool
	Brokers        []string
	DefaultBroker  string
	ErrorData      string
	Detail         string
	RedriveAllowed bool
}

func (h *Handler) readLetter(w http.ResponseWriter, r *http.Request) (deadletter.Letter, bool) {
	id, err := idParam(r)
	if err == nil && !letterID.MatchString(id) {
		err = fmt.Errorf("%w: letter id %q: want a stream entry id such as 1700000000000-0", errBadParam, truncate(id, 50))
	}
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err)
		return deadletter.Letter{}, false
	}
	if h.opts.DeadLetters == nil {
		h.fail(w, r, http.StatusServiceUnavailable, errNoRedis)
		return deadletter.Letter{}, false
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	l, err := h.opts.DeadLetters.Get(ctx, id)
	if errors.Is(err, deadletter.ErrNotFound) {
		h.fail(w, r, http.StatusNotFound, fmt.Errorf("no dead letter %s (redriven, purged or expired)", id))
		return l, false
	}
	if err != nil {
		h.fail(w, r, http.StatusBadGateway, fmt.Errorf("reading dead letter %s: %w", id, err))
		return l, false
	}
	return l, true
}

func (h *Handler) letter(w http.ResponseWriter, r *http.Request) {
	l, ok := h.readLetter(w, r)
	if !ok {
		return
	}
	page := letterPage{Letter: l, Brokers: h.opts.Brokers, DefaultBroker: h.brokerOf(l), RedriveAllowed: h.opts.Publisher != nil && len(h.opts.Brokers) > 0,
		ErrorData: truncate(l.ErrorData, maxShownBytes), Detail: truncate(l.Detail, maxShownBytes)}
	// Indented byte for byte (numbers and key order as stored); the page escapes it.
	var indented bytes.Buffer
	if json.Indent(&indented, l.Event, "", "  ") == nil {
		page.Event = indented.String()
	} else {
		page.Event = string(l.Event)
	}
	if len(page.Event) > maxShownBytes {
		page.Event, page.Truncated = page.Event[:maxShownBytes], true
	}
	h.render(w, r, http.StatusOK, "letter", page)
}

// brokerOf is the broker of the letter's Trigger, or the first broker of the run.
func (h *Handler) brokerOf(l deadletter.Letter) string {
	for _, t := range h.opts.Triggers {
		if t.Key == l.Trigger && h.brokers[t.Broker] {
			return t.Broker
		}
	}
	if h.brokers["knfaas/default"] {
		return "knfaas/default"
	}
	if len(h.opts.Brokers) > 0 {
		return h.opts.Brokers[0]
	}
	return ""
}

type redrivenPage struct {
	Letter, EventID, Broker string
	Outcome                 deadletter.Outcome
	Attempt                 int
	Error                   string
}

// redrive publishes one letter's original event to the broker the form names, as
// `knfaas dlq redrive <letter>` does.
func (h *Handler) redrive(w http.ResponseWriter, r *http.Request) {
	broker := r.PostFormValue("broker")
	if !h.brokers[broker] || h.opts.Publisher == nil {
		h.fail(w, r, http.StatusBadRequest, fmt.Errorf("%w: broker %q is not a broker of this run", errBadParam, truncate(broker, 100)))
		return
	}
	l, ok := h.readLetter(w, r)
	if !ok {
		return
	}
	pub, err := h.opts.Publisher(broker)
	if err != nil {
		h.fail(w, r, http.StatusInternalServerError, fmt.Errorf("publishing to broker %s: %w", broker, err))
		return
	}
	page := redrivenPage{Letter: l.ID, EventID: l.EventID, Broker: broker}
	_, err = deadletter.Redrive(r.Context(), h.opts.DeadLetters, pub, []deadletter.Letter{l}, deadletter.RedriveOptions{
		Lease: 2 * h.opts.RedriveTimeout,
		OnResult: func(res deadletter.Result) {
			page.Outcome, page.Attempt = res.Outcome, res.Attempt
			if res.Err != nil {
				page.Error = res.Err.Error()
			}
		},
	})
	status := http.StatusOK
	if err != nil {
		status = http.StatusBadGateway
		if page.Error == "" {
			page.Error = err.Error()
		}
	}
	h.opts.Log.Info("dashboard redrive", "letter", l.ID, "event_id", l.EventID, "broker", broker, "outcome", page.Outcome)
	h.render(w, r, status, "redriven", page)
}

type processesPage struct {
	Instances []process.Instance
	Tasks     []process.Task
	Limit     int
}

func (h *Handler) processes(w http.ResponseWriter, r *http.Request) {
	limit, err := limitParam(r)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err)
		return
	}
	if h.opts.Redis == nil {
		h.fail(w, r, http.StatusServiceUnavailable, errNoRedis)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	instances, err := process.ListInstances(ctx, h.opts.Redis, int64(limit))
	if err != nil {
		h.fail(w, r, http.StatusBadGateway, err)
		return
	}
	tasks, err := process.ListOpenTasks(ctx, h.opts.Redis, process.TaskFilter{}, limit)
	if err != nil {
		h.fail(w, r, http.StatusBadGateway, err)
		return
	}
	h.render(w, r, http.StatusOK, "processes", processesPage{Instances: instances, Tasks: tasks, Limit: limit})
}

type instancePage struct {
	*process.Instance
	Timeline []timelineRow
}

// timelineRow is one timeline entry with its times.
type timelineRow struct {
	process.TimelineEntry
	AtTime, DueTime time.Time
}

// instance shows one process instance and its timeline, as `knfaas process show` does.
func (h *Handler) instance(w http.ResponseWriter, r *http.Request) {
	id, err := idParam(r)
	if err != nil {
		h.fail(w, r, http.StatusBadRequest, err)
		return
	}
	if h.opts.Redis == nil {
		h.fail(w, r, http.StatusServiceUnavailable, errNoRedis)
		return
	}
	ctx, cancel := context.WithTimeout(r.Context(), readTimeout)
	defer cancel()
	in, err := process.ReadInstance(ctx, h.opts.Redis, id)
	if errors.Is(err, process.ErrNotFound) {
		h.fail(w, r, http.StatusNotFound, fmt.Errorf("no process instance %s (finished instances are kept for the retention period)", id))
		return
	}
	if err != nil {
		h.fail(w, r, http.StatusBadGateway, err)
		return
	}
	page := instancePage{Instance: in}
	// The latest entries when the timeline is long.
	entries := in.Timeline
	if len(entries) > maxTimeline {
		entries = entries[len(entries)-maxTimeline:]
	}
	for _, e := range entries {
		row := timelineRow{TimelineEntry: e, AtTime: time.UnixMilli(e.At)}
		if e.Due != 0 {
			row.DueTime = time.UnixMilli(e.Due)
		}
		row.Data = truncate(row.Data, maxShownBytes/16)
		page.Timeline = append(page.Timeline, row)
	}
	h.render(w, r, http.StatusOK, "instance", page)
}

// maxTimeline bounds the timeline entries shown for an instance.
const maxTimeline = 500
