package embedded

import (
	"context"
	"encoding/json"
	"fmt"
	"strconv"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// TypeUndecodableEntry is the type of the event a parked letter holds when the stream entry
// could not be read as an event: its data is the entry's fields, as stored.
const TypeUndecodableEntry = "dev.knfaas.broker.entry.undecodable"

// deadLetterParker keeps the events a Trigger can never deliver in the dead-letter store, with
// reason "parked" and the last answers of the subscriber and the dead-letter sink, where
// `knfaas dlq list --parked` shows them and `knfaas dlq redrive` sends them again.
type deadLetterParker struct {
	store *deadletter.Store
}

var _ broker.Parker = deadLetterParker{}

// deadLetterOptions bounds the dead-letter store as the dead-letter function does: by the
// loaded deadletter-config ConfigMap of the namespace when there is one, by the defaults otherwise.
func deadLetterOptions(set *manifest.Set) (deadletter.Options, error) {
	var opts deadletter.Options
	cm := set.ConfigMap("knfaas", "deadletter-config")
	if cm == nil {
		return opts, nil
	}
	where := "ConfigMap knfaas/deadletter-config"
	if v := cm.Data["max-letters"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return opts, fmt.Errorf("%s: max-letters: %w", where, err)
		}
		opts.MaxLetters = n
	}
	if v := cm.Data["max-bytes"]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return opts, fmt.Errorf("%s: max-bytes: %w", where, err)
		}
		opts.MaxBytes = n
	}
	if v := cm.Data["max-age"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return opts, fmt.Errorf("%s: max-age: %w", where, err)
		}
		opts.MaxAge = d
	}
	return opts, nil
}

// newDeadLetterParker parks in the dead-letter store of rdb, bounded by opts.
func newDeadLetterParker(rdb redis.UniversalClient, opts deadletter.Options) deadLetterParker {
	return deadLetterParker{store: deadletter.NewStore(rdb, opts)}
}

// Park stores p as a parked letter. A full store refuses it (the error says so) and the entry
// stays pending on its Trigger, to be parked on a later round.
func (dp deadLetterParker) Park(ctx context.Context, p broker.Parked) error {
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
