package broker

import (
	"context"
	"encoding/json"
	"fmt"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
)

// TypeUndecodableEntry is the type of the event a parked letter holds when the stream entry
// could not be read as an event: its data is the entry's fields, as stored.
const TypeUndecodableEntry = "dev.knfaas.broker.entry.undecodable"

// DeadLetterParker keeps the events a Trigger can never deliver in the dead-letter store, with
// reason "parked" and the last answers of the subscriber and the dead-letter sink, where
// `knfaas dlq list --parked` shows them and `knfaas dlq redrive` sends them again.
type DeadLetterParker struct {
	store *deadletter.Store
}

var _ Parker = DeadLetterParker{}

// NewDeadLetterParker parks in the dead-letter store of rdb, bounded by opts (the dead-letter
// function's bounds: both write the same store).
func NewDeadLetterParker(rdb redis.UniversalClient, opts deadletter.Options) DeadLetterParker {
	return DeadLetterParker{store: deadletter.NewStore(rdb, opts)}
}

// Park stores p as a parked letter. A full store refuses it (the error says so) and the entry
// stays pending on its Trigger, to be parked on a later round.
func (dp DeadLetterParker) Park(ctx context.Context, p Parked) error {
	event := p.Event
	if event == nil {
		e := cloudevents.NewEvent()
		e.SetID(p.EntryID)
		e.SetType(TypeUndecodableEntry)
		e.SetSource("/knfaas/brokers/" + p.Broker)
		if err := e.SetData(cloudevents.ApplicationJSON, p.Entry); err != nil {
			return fmt.Errorf("parking undecodable entry %s: %w", p.EntryID, err)
		}
		event = &e
	}
	l, err := deadletter.FromEvent(*event)
	if err != nil {
		return fmt.Errorf("parking event %s: %w", event.ID(), err)
	}
	l.Reason = deadletter.ReasonParked
	l.ErrorExtensions = true
	l.Trigger = p.Trigger
	l.Dest = p.SubscriberURL
	l.Code = p.SubscriberCode
	l.ErrorData = string(p.SubscriberBody)
	detail := map[string]any{
		"reason": p.Reason, "detail": p.Detail, "rounds": p.Rounds, "entry": p.EntryID,
		"subscriber":       map[string]any{"url": p.SubscriberURL, "code": p.SubscriberCode, "error": p.SubscriberError},
		"deadLetterSink":   map[string]any{"url": p.DeadLetterURL, "code": p.DeadLetterCode, "error": p.DeadLetterError, "body": string(p.DeadLetterBody)},
		"parkedAt":         p.Time.UTC().Format(time.RFC3339Nano),
		"subscriberAnswer": string(p.SubscriberBody),
	}
	b, err := json.Marshal(detail)
	if err != nil {
		return fmt.Errorf("parking event %s: %w", event.ID(), err)
	}
	l.Detail = string(b)
	if _, _, err := dp.store.Add(ctx, l); err != nil {
		return fmt.Errorf("parking event %s of trigger %s in the dead-letter store: %w", event.ID(), p.Trigger, err)
	}
	return nil
}
