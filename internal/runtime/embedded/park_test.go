package embedded

import (
	"bytes"
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/runtime/broker"
)

// TestParkedEventsGoToTheDeadLetterStore checks what the runtime's Parker keeps: the event byte
// for byte with reason "parked" and the last answers, an undecodable entry's raw fields, and a
// refusal (the entry stays pending) when the store is full.
func TestParkedEventsGoToTheDeadLetterStore(t *testing.T) {
	ctx := context.Background()
	mr := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
	t.Cleanup(func() { _ = rdb.Close() })
	data := []byte("{\n  \"html\": \"<b>&</b>\"\n}")
	e := cloudevents.NewEvent()
	e.SetID("poison-1")
	e.SetType("t")
	e.SetSource("/s")
	_ = e.SetData("application/json", data)

	for name, tc := range map[string]struct {
		parked  broker.Parked
		wantID  string
		wantIn  []string
		wantRaw []byte
	}{
		"undeliverable event": {
			parked: broker.Parked{Trigger: "ns/t", Broker: "ns/b", EntryID: "1-0", Event: &e, Reason: broker.ParkUndeliverable,
				SubscriberURL: "http://sub.ns.svc.cluster.local", SubscriberCode: 431, SubscriberBody: []byte("header too large"),
				DeadLetterURL: "http://dls.ns.svc.cluster.local", DeadLetterCode: 500, Rounds: 3, Time: time.Now()},
			wantID: "poison-1", wantIn: []string{`"rounds":3`, "431", "header too large", "dls.ns.svc.cluster.local", `"code":500`},
			wantRaw: data,
		},
		"undecodable entry": {
			parked: broker.Parked{Trigger: "ns/t", Broker: "ns/b", EntryID: "2-0", Entry: map[string]string{"x": "garbage"},
				Reason: broker.ParkUndecodable, Detail: "no event in entry", Time: time.Now()},
			wantID: "2-0", wantIn: []string{"undecodable", "no event in entry"},
		},
	} {
		t.Run(name, func(t *testing.T) {
			p := newDeadLetterParker(rdb, deadletter.Options{})
			if err := p.Park(ctx, tc.parked); err != nil {
				t.Fatal(err)
			}
			letters, err := deadletter.NewStore(rdb, deadletter.Options{}).List(ctx, deadletter.Filter{Reason: deadletter.ReasonParked})
			if err != nil {
				t.Fatal(err)
			}
			var got *deadletter.Letter
			for i := range letters {
				if letters[i].EventID == tc.wantID {
					got = &letters[i]
				}
			}
			if got == nil {
				t.Fatalf("no parked letter for %s among %d", tc.wantID, len(letters))
			}
			for _, w := range tc.wantIn {
				if !strings.Contains(got.Detail, w) {
					t.Errorf("detail %s does not mention %q", got.Detail, w)
				}
			}
			if got.Trigger != "ns/t" {
				t.Errorf("trigger = %q", got.Trigger)
			}
			if tc.wantRaw != nil {
				orig, err := got.OriginalEvent()
				if err != nil {
					t.Fatal(err)
				}
				if !bytes.Equal(orig.Data(), tc.wantRaw) {
					t.Errorf("parked data %q, want %q byte for byte", orig.Data(), tc.wantRaw)
				}
			}
		})
	}

	t.Run("full store refuses", func(t *testing.T) {
		mr := miniredis.RunT(t)
		rdb := redis.NewClient(&redis.Options{Addr: mr.Addr()})
		t.Cleanup(func() { _ = rdb.Close() })
		p := newDeadLetterParker(rdb, deadletter.Options{MaxLetters: 1})
		first, second := e.Clone(), e.Clone()
		second.SetID("poison-2")
		if err := p.Park(ctx, broker.Parked{Trigger: "ns/t", Event: &first, SubscriberURL: "http://a"}); err != nil {
			t.Fatal(err)
		}
		err := p.Park(ctx, broker.Parked{Trigger: "ns/t", Event: &second, SubscriberURL: "http://a"})
		if !errors.Is(err, deadletter.ErrFull) {
			t.Fatalf("parking into a full store: %v, want ErrFull", err)
		}
	})
}
