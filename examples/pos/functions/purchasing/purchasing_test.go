package main

import (
	"context"
	"errors"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"
	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func reorderEvent(id string, data any) event.Event {
	e := event.New()
	e.SetID(id)
	e.SetSource("knfaas/examples/pos/stock")
	e.SetType(TypeReorderRequested)
	e.SetSubject("SKU-1")
	e.SetTime(time.Date(2026, 11, 22, 9, 0, 0, 0, time.UTC))
	_ = e.SetData("application/json", data)
	return e
}

func TestRecordsOneOrderPerRequest(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	f := New()
	if err := f.start(context.Background(), Config{OrderUpTo: 50, InboxTTL: time.Hour}, rdb); err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())
	ctx := context.Background()
	req := ReorderRequest{SKU: "SKU-1", Store: "berlin-1", Stock: 4, Threshold: 5}
	for _, id := range []string{"r1", "r1", "r2"} {
		if _, err := f.Handle(ctx, reorderEvent(id, req)); err != nil {
			t.Fatal(err)
		}
	}
	page, err := projection.List(ctx, rdb, ModelName, "", 10)
	if err != nil || len(page.Entries) != 2 {
		t.Fatalf("orders = %+v, %v; want 2 (one per distinct request)", page, err)
	}
	o, err := projection.Get(ctx, rdb, ModelName, OrderKey(reorderEvent("r1", req)))
	if err != nil || o.Fields["quantity"] != "46" || o.Fields["store"] != "berlin-1" || o.Fields["requested_at"] != "2026-11-22T09:00:00Z" || o.Version != 1 {
		t.Fatalf("order = %+v, %v", o, err)
	}
}

func TestBadRequestsAre400(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	f := New()
	if err := f.start(context.Background(), Config{OrderUpTo: 50}, redis.NewClient(&redis.Options{Addr: srv.Addr()})); err != nil {
		t.Fatal(err)
	}
	wrongType := reorderEvent("x", ReorderRequest{SKU: "SKU-1", Store: "s"})
	wrongType.SetType("dev.knfaas.example.pos.sale.recorded")
	cases := map[string]event.Event{
		"wrong type":    wrongType,
		"not an object": reorderEvent("x", "hello"),
		"no sku":        reorderEvent("x", ReorderRequest{Store: "s"}),
		"no store":      reorderEvent("x", ReorderRequest{SKU: "SKU-1"}),
		"unknown field": reorderEvent("x", map[string]any{"sku": "SKU-1", "store": "s", "colour": "red"}),
	}
	for name, e := range cases {
		t.Run(name, func(t *testing.T) {
			_, err := f.Handle(context.Background(), e)
			var res *cehttp.Result
			if !errors.As(err, &res) || res.StatusCode != 400 {
				t.Fatalf("err = %v, want 400", err)
			}
		})
	}
}
