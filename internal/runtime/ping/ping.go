// Package ping fires PingSource events on their cron schedules, with Knative's event type and
// source and a deterministic id per schedule slot.
package ping

import (
	"context"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"fmt"
	"log/slog"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/robfig/cron/v3"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"

	"github.com/knfaas/knfaas/internal/function/sink"
)

// Parser accepts what Knative's mtping adapter accepts: an optional seconds field, five cron
// fields, and descriptors such as @hourly or @every 10s.
var Parser = cron.NewParser(cron.SecondOptional | cron.Minute | cron.Hour | cron.Dom | cron.Month | cron.Dow | cron.Descriptor)

// Source is one PingSource resolved to its sink address.
type Source struct {
	PingSource *sourcesv1.PingSource
	SinkURL    string
}

// Recorder counts sends (metrics).
type Recorder interface {
	PingSent(namespace, name string, ok bool)
}

// Scheduler runs PingSources.
type Scheduler struct {
	cron *cron.Cron
	log  *slog.Logger
	rec  Recorder
}

// NewScheduler returns a scheduler with no sources.
func NewScheduler(log *slog.Logger, rec Recorder) *Scheduler {
	return &Scheduler{cron: cron.New(cron.WithParser(Parser)), log: log, rec: rec}
}

// Add schedules a source; its timezone, if any, is honoured as Knative does (CRON_TZ prefix).
func (s *Scheduler) Add(src Source) error {
	ps := src.PingSource
	sched, err := parse(ps)
	if err != nil {
		return err
	}
	sender, err := sink.New(src.SinkURL, 10*time.Second)
	if err != nil {
		return fmt.Errorf("PingSource %s/%s: %w", ps.Namespace, ps.Name, err)
	}
	s.cron.Schedule(sched, &tick{s: s, src: ps, sender: sender})
	return nil
}

// Check reports what Add would refuse in ps, without scheduling it: a schedule or timezone
// cron cannot parse, or data that does not decode.
func Check(ps *sourcesv1.PingSource) error {
	_, err := parse(ps)
	return err
}

// parse returns the schedule of ps, with its timezone, once its event is known to build.
func parse(ps *sourcesv1.PingSource) (cron.Schedule, error) {
	schedule := ps.Spec.Schedule
	if ps.Spec.Timezone != "" {
		schedule = "CRON_TZ=" + ps.Spec.Timezone + " " + schedule
	}
	sched, err := Parser.Parse(schedule)
	if err != nil {
		return nil, fmt.Errorf("PingSource %s/%s: schedule %q: %w", ps.Namespace, ps.Name, schedule, err)
	}
	if _, err := Event(ps, time.Time{}); err != nil {
		return nil, err
	}
	return sched, nil
}

// Start starts firing.
func (s *Scheduler) Start() { s.cron.Start() }

// Stop stops firing and waits for sends in progress.
func (s *Scheduler) Stop() { <-s.cron.Stop().Done() }

type tick struct {
	s      *Scheduler
	src    *sourcesv1.PingSource
	sender *sink.Sender
}

// Run fires one tick. cron calls it at the slot time (to the second); the slot is that time
// truncated to the second, so a retry of the same slot has the same id.
func (t *tick) Run() {
	slot := time.Now().Truncate(time.Second)
	e, err := Event(t.src, slot)
	if err != nil {
		t.s.log.Error("building ping event", "pingsource", t.src.Namespace+"/"+t.src.Name, "error", err)
		return
	}
	var sendErr error
	for attempt := 0; attempt < 5; attempt++ {
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		sendErr = t.sender.Send(ctx, e)
		cancel()
		if sendErr == nil {
			break
		}
		time.Sleep(time.Duration(100<<attempt) * time.Millisecond)
	}
	if t.s.rec != nil {
		t.s.rec.PingSent(t.src.Namespace, t.src.Name, sendErr == nil)
	}
	if sendErr != nil {
		t.s.log.Error("ping event not delivered after 5 attempts", "pingsource", t.src.Namespace+"/"+t.src.Name, "id", e.ID(), "error", sendErr)
		return
	}
	t.s.log.Debug("ping event sent", "pingsource", t.src.Namespace+"/"+t.src.Name, "id", e.ID())
}

// Event builds the event of ps for the schedule slot: type dev.knative.sources.ping, source
// /apis/v1/namespaces/<ns>/pingsources/<name>, time = the slot, id derived from source and slot.
func Event(ps *sourcesv1.PingSource, slot time.Time) (cloudevents.Event, error) {
	e := cloudevents.NewEvent()
	e.SetType(sourcesv1.PingSourceEventType)
	e.SetSource(sourcesv1.PingSourceSource(ps.Namespace, ps.Name))
	e.SetTime(slot)
	sum := sha256.Sum256([]byte(e.Source() + "@" + slot.UTC().Format(time.RFC3339)))
	e.SetID(hex.EncodeToString(sum[:16]))
	if ps.Spec.CloudEventOverrides != nil {
		for k, v := range ps.Spec.CloudEventOverrides.Extensions {
			e.SetExtension(k, v)
		}
	}
	var data []byte
	switch {
	case ps.Spec.DataBase64 != "":
		b, err := base64.StdEncoding.DecodeString(ps.Spec.DataBase64)
		if err != nil {
			return e, fmt.Errorf("PingSource %s/%s: dataBase64: %w", ps.Namespace, ps.Name, err)
		}
		data = b
	case ps.Spec.Data != "":
		data = []byte(ps.Spec.Data)
	}
	if data != nil {
		if err := e.SetData(ps.Spec.ContentType, data); err != nil {
			return e, fmt.Errorf("PingSource %s/%s: data: %w", ps.Namespace, ps.Name, err)
		}
	}
	return e, nil
}
