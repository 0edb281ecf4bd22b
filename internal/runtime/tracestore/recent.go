package tracestore

import (
	"time"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// RecentEvent is an event some held span is about, with the latest such span.
type RecentEvent struct {
	EventID string
	// Span, Service and At are the latest arrived span naming the event, and its start.
	Span, Service string
	At            time.Time
	// Error is true when that span ended in error.
	Error bool
}

// RecentEvents returns up to limit events that held spans are about (attribute
// cloudevents.event_id), the one whose span arrived last first.
func (s *Store) RecentEvents(limit int) []RecentEvent {
	if limit <= 0 {
		return nil
	}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.evictLocked(s.opts.Now())
	seen := map[string]bool{}
	var out []RecentEvent
	for i := len(s.queue) - 1; i >= s.head && len(out) < limit; i-- {
		sp := &s.queue[i].span
		id := sp.Attributes[tracing.AttrEventID]
		if id == "" || seen[id] {
			continue
		}
		seen[id] = true
		out = append(out, RecentEvent{EventID: id, Span: sp.Name, Service: sp.Service, At: sp.Start, Error: sp.Status == "error"})
	}
	return out
}
