package tracestore

import (
	"reflect"
	"testing"
	"time"
)

func TestRecentEventsNewestFirstAndDistinct(t *testing.T) {
	cases := []struct {
		name  string
		spans []Span
		limit int
		want  []string
	}{
		{"none held", nil, 10, nil},
		{"newest arrival first", []Span{span(1, 1, "a"), span(2, 2, "b"), span(3, 3, "c")}, 10, []string{"c", "b", "a"}},
		{"an event once, at its latest span", []Span{span(1, 1, "a"), span(2, 2, "b"), span(1, 3, "a")}, 10, []string{"a", "b"}},
		{"spans without an event are skipped", []Span{span(1, 1, "a"), span(2, 2, "")}, 10, []string{"a"}},
		{"bounded by limit", []Span{span(1, 1, "a"), span(2, 2, "b"), span(3, 3, "c")}, 2, []string{"c", "b"}},
		{"limit zero lists nothing", []Span{span(1, 1, "a")}, 0, nil},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			s := New(Options{})
			s.Add(c.spans)
			var got []string
			for _, e := range s.RecentEvents(c.limit) {
				got = append(got, e.EventID)
			}
			if !reflect.DeepEqual(got, c.want) {
				t.Errorf("RecentEvents(%d) = %v, want %v", c.limit, got, c.want)
			}
		})
	}
}

func TestBuildTreeNestsAndOrders(t *testing.T) {
	at := func(s int) time.Time { return time.Unix(100, 0).Add(time.Duration(s) * time.Millisecond) }
	spans := []Span{
		{TraceID: "t", SpanID: "c2", ParentSpanID: "r", Name: "second child", Start: at(30), End: at(40)},
		{TraceID: "t", SpanID: "r", Name: "root", Start: at(0), End: at(50)},
		{TraceID: "t", SpanID: "c1", ParentSpanID: "r", Name: "first child", Start: at(10), End: at(20)},
		{TraceID: "t", SpanID: "o", ParentSpanID: "gone", Name: "orphan", Start: at(5), End: at(6)},
	}
	tree := BuildTree(Trace{TraceID: "t", Spans: spans})
	var roots []string
	for _, s := range tree.Spans {
		roots = append(roots, s.Name)
	}
	if want := []string{"root", "orphan"}; !reflect.DeepEqual(roots, want) {
		t.Fatalf("roots %v, want %v", roots, want)
	}
	r := tree.Spans[0]
	if len(r.Children) != 2 || r.Children[0].Name != "first child" || r.Children[1].Name != "second child" {
		t.Errorf("children of root: %+v", r.Children)
	}
	if tree.Length != 50*time.Millisecond || r.Children[1].Begin != 30*time.Millisecond || r.Children[1].Length != 10*time.Millisecond {
		t.Errorf("length %v, second child begin %v length %v; want 50ms, 30ms, 10ms", tree.Length, r.Children[1].Begin, r.Children[1].Length)
	}
}
