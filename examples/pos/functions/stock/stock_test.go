package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func startFunction(t *testing.T) (*Function, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	file := filepath.Join(t.TempDir(), "thresholds")
	if err := os.WriteFile(file, []byte("# per-SKU reorder points\nSKU-1 = 5\nSKU-2=0\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	f := New()
	if err := f.start(context.Background(), Config{ThresholdsFile: file, DefaultThreshold: 3, InboxTTL: time.Hour}, rdb); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = f.Stop(context.Background()) })
	return f, rdb
}

func posEvent(id, typ, sku string, data any) event.Event {
	e := event.New()
	e.SetID(id)
	e.SetSource("pos/berlin-1/till-3")
	e.SetType(typ)
	e.SetSubject(sku)
	_ = e.SetData("application/json", data)
	return e
}

func stockOf(t *testing.T, rdb *redis.Client, sku, store string) string {
	t.Helper()
	e, err := projection.Get(context.Background(), rdb, ModelName, sku)
	if err != nil {
		t.Fatal(err)
	}
	return e.Fields[store]
}

func TestBadDataIs400WithReason(t *testing.T) {
	f, _ := startFunction(t)
	cases := map[string]struct {
		e    event.Event
		want string
	}{
		"unknown type":      {e: posEvent("1", "dev.knfaas.example.pos.sale.voided", "SKU-1", Sale{Store: "berlin-1", Quantity: 1}), want: "event type"},
		"no subject":        {e: posEvent("1", TypeSaleRecorded, "", Sale{Store: "berlin-1", Quantity: 1}), want: "subject"},
		"subject with path": {e: posEvent("1", TypeSaleRecorded, "SKU/1", Sale{Store: "berlin-1", Quantity: 1}), want: "subject"},
		"not json":          {e: posEvent("1", TypeSaleRecorded, "SKU-1", "two"), want: "data must be"},
		"fractional":        {e: posEvent("1", TypeSaleRecorded, "SKU-1", map[string]any{"store": "berlin-1", "quantity": 1.5}), want: "data must be"},
		"unknown field":     {e: posEvent("1", TypeSaleRecorded, "SKU-1", map[string]any{"store": "berlin-1", "quantity": 1, "qty": 2}), want: "data must be"},
		"zero quantity":     {e: posEvent("1", TypeSaleRecorded, "SKU-1", Sale{Store: "berlin-1"}), want: "data.quantity"},
		"negative quantity": {e: posEvent("1", TypeStockReceived, "SKU-1", Sale{Store: "berlin-1", Quantity: -4}), want: "data.quantity"},
		"two objects":       {e: posEvent("1", TypeSaleRecorded, "SKU-1", []byte(`{"store":"berlin-1","quantity":1}{}`)), want: "one JSON object"},
		"missing store":     {e: posEvent("1", TypeSaleRecorded, "SKU-1", map[string]any{"quantity": 1}), want: "data.store"},
		"reserved store":    {e: posEvent("1", TypeSaleRecorded, "SKU-1", Sale{Store: "_version", Quantity: 1}), want: "data.store"},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := f.Handle(context.Background(), tc.e)
			var res *cehttp.Result
			if !errors.As(err, &res) || res.StatusCode != 400 {
				t.Fatalf("err = %v, want a 400 result", err)
			}
			if msg := res.Error(); !strings.Contains(msg, tc.want) {
				t.Fatalf("reason %q does not name %q", msg, tc.want)
			}
		})
	}
}

// TestDuplicatedAndReorderedDeliveries: whatever the order and the repeats, the stock is the
// sum of the unique events.
func TestDuplicatedAndReorderedDeliveries(t *testing.T) {
	f, rdb := startFunction(t)
	r := rand.New(rand.NewPCG(1, 2))
	var events []event.Event
	var want int64
	for i := range 100 {
		q := int64(1 + r.IntN(5))
		typ := []string{TypeSaleRecorded, TypeSaleReturned, TypeStockReceived}[r.IntN(3)]
		if typ == TypeSaleRecorded {
			want -= q
		} else {
			want += q
		}
		events = append(events, posEvent(fmt.Sprint(i), typ, "SKU-9", Sale{Store: "berlin-1", Quantity: q}))
	}
	deliveries := append(append([]event.Event{}, events...), events[:40]...)
	r.Shuffle(len(deliveries), func(i, j int) { deliveries[i], deliveries[j] = deliveries[j], deliveries[i] })
	for _, e := range deliveries {
		if _, err := f.Handle(context.Background(), e); err != nil {
			t.Fatal(err)
		}
	}
	if got := stockOf(t, rdb, "SKU-9", "berlin-1"); got != fmt.Sprint(want) {
		t.Fatalf("stock = %s, want %d", got, want)
	}
}

func TestReorderOncePerDip(t *testing.T) {
	f, rdb := startFunction(t)
	ctx := context.Background()
	steps := []struct {
		typ     string
		qty     int64
		reorder bool
	}{
		{TypeStockReceived, 10, false}, // 10
		{TypeSaleRecorded, 4, false},   // 6
		{TypeSaleRecorded, 2, true},    // 4 < 5: dip
		{TypeSaleRecorded, 1, false},   // 3: same dip
		{TypeSaleReturned, 1, false},   // 4: same dip
		{TypeStockReceived, 20, false}, // 24: recovered
		{TypeSaleRecorded, 22, true},   // 2: second dip
	}
	var reorders []*event.Event
	for i, s := range steps {
		e := posEvent(fmt.Sprint("e", i), s.typ, "SKU-1", Sale{Store: "berlin-1", Quantity: s.qty})
		reply, err := f.Handle(ctx, e)
		if err != nil {
			t.Fatal(err)
		}
		if (reply != nil) != s.reorder {
			t.Fatalf("step %d: reply %v, want reorder %v", i, reply, s.reorder)
		}
		if reply == nil {
			continue
		}
		reorders = append(reorders, reply)
		var rr ReorderRequest
		if err := json.Unmarshal(reply.Data(), &rr); err != nil || reply.Type() != TypeReorderRequested || reply.Subject() != "SKU-1" || rr.Store != "berlin-1" || rr.Threshold != 5 {
			t.Fatalf("step %d: reply %v (%+v, %v)", i, reply, rr, err)
		}
		// A redelivery of the dipping sale repeats the same reply, so a lost reply is re-sent
		// and the purchasing function can deduplicate it.
		again, err := f.Handle(ctx, e)
		if err != nil || again == nil || again.ID() != reply.ID() {
			t.Fatalf("step %d redelivered: %v, %v; want the same reorder %s", i, again, err, reply.ID())
		}
	}
	if len(reorders) != 2 || reorders[0].ID() == reorders[1].ID() {
		t.Fatalf("reorders = %v, want two with distinct ids", reorders)
	}
	if got := stockOf(t, rdb, "SKU-1", "berlin-1"); got != "2" {
		t.Fatalf("stock = %s", got)
	}
}

func TestDefaultAndZeroThresholds(t *testing.T) {
	f, _ := startFunction(t)
	ctx := context.Background()
	// SKU-7 is not listed: default 3. SKU-2 has threshold 0: only negative stock dips.
	if r, _ := f.Handle(ctx, posEvent("a", TypeStockReceived, "SKU-7", Sale{Store: "s1", Quantity: 2})); r == nil {
		t.Fatal("2 < default 3 did not request a reorder")
	}
	if r, _ := f.Handle(ctx, posEvent("b", TypeStockReceived, "SKU-2", Sale{Store: "s1", Quantity: 2})); r != nil {
		t.Fatal("threshold 0 requested a reorder at stock 2")
	}
}

func TestParseThresholds(t *testing.T) {
	cases := map[string]struct {
		in string
		ok bool
	}{
		"good":     {in: "SKU-1=5\n# c\n\nSKU-2 = 0", ok: true},
		"negative": {in: "SKU-1=-1", ok: false},
		"no value": {in: "SKU-1", ok: false},
		"bad sku":  {in: "SKU/1=2", ok: false},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := ParseThresholds([]byte(tc.in)); (err == nil) != tc.ok {
				t.Fatalf("err = %v", err)
			}
		})
	}
}

// FuzzDecode checks that any event data either decodes into a change the kit accepts (a valid
// key, a store field that is not reserved, a non-zero quantity) or is refused with an error.
func FuzzDecode(f *testing.F) {
	f.Add(TypeSaleRecorded, "SKU-1", []byte(`{"store":"berlin-1","quantity":2}`))
	f.Add(TypeStockReceived, "SKU-1", []byte(`{"store":"_version","quantity":1}`))
	f.Add(TypeSaleReturned, "a/b", []byte(`{"store":"s","quantity":1e3}`))
	fn := &Function{thresholds: map[string]int64{}, fallback: 5}
	f.Fuzz(func(t *testing.T, typ, subject string, data []byte) {
		e := event.New()
		e.SetID("1")
		e.SetSource("s")
		e.SetType(typ)
		e.SetSubject(subject)
		_ = e.SetData("application/json", data)
		ch, err := fn.Decode(e)
		if err != nil {
			return
		}
		if !projection.ValidKey(ch.Key) || len(ch.Ops) != 1 || ch.Ops[0].N == 0 || strings.HasPrefix(ch.Ops[0].Field, "_") || ch.Ops[0].Field == "" {
			t.Fatalf("accepted a change the kit would refuse: %+v", ch)
		}
	})
}

func FuzzParseThresholds(f *testing.F) {
	f.Add([]byte("SKU-1=5\n# c\nSKU-2 = 0\n"))
	f.Fuzz(func(t *testing.T, b []byte) {
		m, err := ParseThresholds(b)
		if err != nil {
			return
		}
		for sku, n := range m {
			if !projection.ValidKey(sku) || n < 0 {
				t.Fatalf("accepted %q=%d", sku, n)
			}
		}
	})
}
