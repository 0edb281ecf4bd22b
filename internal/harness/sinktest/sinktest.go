// Package sinktest records the events a function under test sends to its sink, and can stand for a sink that is down.
package sinktest

import (
	"context"
	"errors"
	"sync"

	"github.com/cloudevents/sdk-go/v2/event"
)

// Recorder is an event sink for tests; the zero value records every event sent to it.
type Recorder struct {
	mu      sync.Mutex
	events  []event.Event
	failing bool
}

// Send records e, or fails with "broker down" while the recorder is failing.
func (r *Recorder) Send(_ context.Context, e event.Event) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.failing {
		return errors.New("broker down")
	}
	r.events = append(r.events, e)
	return nil
}

// Take returns the events recorded since the last Take and forgets them.
func (r *Recorder) Take() []event.Event {
	r.mu.Lock()
	defer r.mu.Unlock()
	out := r.events
	r.events = nil
	return out
}

// SetFailing makes Send fail (true) or record again (false).
func (r *Recorder) SetFailing(failing bool) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.failing = failing
}
