package tracestore

import (
	"sort"
	"time"
)

// Tree is one trace with its spans nested under their parents, as `knfaas trace` prints it and
// the dashboard draws it.
type Tree struct {
	TraceID  string      `json:"traceId"`
	Start    time.Time   `json:"start"`
	Duration string      `json:"duration"`
	Spans    []*TreeSpan `json:"spans"`
	// Length is the time from the first span's start to the last span's end.
	Length time.Duration `json:"-"`
}

// TreeSpan is one span of a Tree with its children, by start time.
type TreeSpan struct {
	Name         string            `json:"name"`
	Service      string            `json:"service,omitempty"`
	SpanID       string            `json:"spanId"`
	ParentSpanID string            `json:"parentSpanId,omitempty"`
	Offset       string            `json:"offset"`
	Duration     string            `json:"duration"`
	Status       string            `json:"status,omitempty"`
	Message      string            `json:"statusMessage,omitempty"`
	Attributes   map[string]string `json:"attributes,omitempty"`
	Children     []*TreeSpan       `json:"children,omitempty"`
	// Begin is the span's start after the trace's start; Length its duration.
	Begin, Length time.Duration `json:"-"`
	start         time.Time
}

// BuildTree nests t's spans under their parents; a span whose parent is not held (another
// process's span that was not sampled, or evicted) is a root.
func BuildTree(t Trace) Tree {
	tree := Tree{TraceID: t.TraceID}
	if len(t.Spans) == 0 {
		return tree
	}
	start, end := t.Spans[0].Start, t.Spans[0].End
	for _, s := range t.Spans {
		if s.Start.Before(start) {
			start = s.Start
		}
		if s.End.After(end) {
			end = s.End
		}
	}
	tree.Start, tree.Length, tree.Duration = start, end.Sub(start), RoundDuration(end.Sub(start))
	nodes := map[string]*TreeSpan{}
	for _, s := range t.Spans {
		nodes[s.SpanID] = &TreeSpan{
			Name: s.Name, Service: s.Service, SpanID: s.SpanID, ParentSpanID: s.ParentSpanID,
			Offset: RoundDuration(s.Start.Sub(start)), Duration: RoundDuration(s.End.Sub(s.Start)),
			Begin: s.Start.Sub(start), Length: s.End.Sub(s.Start),
			Status: s.Status, Message: s.StatusMessage, Attributes: s.Attributes, start: s.Start,
		}
	}
	for _, s := range t.Spans {
		n := nodes[s.SpanID]
		if p, ok := nodes[s.ParentSpanID]; ok && p != n {
			p.Children = append(p.Children, n)
		} else {
			tree.Spans = append(tree.Spans, n)
		}
	}
	var order func([]*TreeSpan)
	order = func(ns []*TreeSpan) {
		sort.SliceStable(ns, func(i, j int) bool { return ns[i].start.Before(ns[j].start) })
		for _, n := range ns {
			order(n.Children)
		}
	}
	order(tree.Spans)
	return tree
}

// RoundDuration rounds d for display: microseconds below a millisecond, 10 µs below a second,
// milliseconds above.
func RoundDuration(d time.Duration) string {
	switch {
	case d < time.Millisecond:
		return d.Round(time.Microsecond).String()
	case d < time.Second:
		return d.Round(10 * time.Microsecond).String()
	}
	return d.Round(time.Millisecond).String()
}
