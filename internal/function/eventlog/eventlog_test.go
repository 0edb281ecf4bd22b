package eventlog

import (
	"context"
	"errors"
	"fmt"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func newEvent(id, typ, subject string) event.Event {
	e := event.New()
	e.SetID(id)
	e.SetSource("pos/till-1")
	e.SetType(typ)
	e.SetSubject(subject)
	e.SetTime(time.Date(2026, 11, 1, 10, 0, 0, 0, time.UTC))
	_ = e.SetData("application/json", map[string]any{"store": "berlin-1", "quantity": 2})
	return e
}

func TestAppendIsIdempotent(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	l := New(rdb, Options{DedupTTL: time.Hour})
	e := newEvent("1", "dev.knfaas.example.pos.sale.recorded", "SKU-1")
	first, err := l.Append(ctx, e)
	if err != nil || first.Duplicate {
		t.Fatalf("first append: %+v, %v", first, err)
	}
	again, err := l.Append(ctx, e)
	if err != nil || !again.Duplicate || again.Cursor != first.Cursor {
		t.Fatalf("second append: %+v, %v; want duplicate of %s", again, err, first.Cursor)
	}
	for _, key := range []string{GlobalStream, SubjectStream("SKU-1"), TypeStream(e.Type())} {
		if n := rdb.XLen(ctx, key).Val(); n != 1 {
			t.Errorf("%s holds %d entries, want 1", key, n)
		}
	}
	if ttl := rdb.PTTL(ctx, DedupKey(e.Source(), e.ID())).Val(); ttl <= 0 || ttl > time.Hour {
		t.Errorf("dedup TTL = %v", ttl)
	}
	if ttl := rdb.PTTL(ctx, SubjectStream("SKU-1")).Val(); ttl <= 0 {
		t.Errorf("subject stream has no expiry (%v)", ttl)
	}
	p, err := l.Read(ctx, Query{Subject: "SKU-1", Limit: 10})
	if err != nil || len(p.Records) != 1 {
		t.Fatalf("read: %+v, %v", p, err)
	}
	got := p.Records[0].Event
	if got.ID() != "1" || got.Subject() != "SKU-1" || string(got.Data()) != string(e.Data()) || !got.Time().Equal(e.Time()) {
		t.Fatalf("stored event %v differs from %v", got, e)
	}
}

func TestAppendRejectsInvalidEvents(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	l := New(srv.Client(), Options{})
	e := event.New()
	e.SetType("x")
	if _, err := l.Append(context.Background(), e); !errors.Is(err, ErrInvalidEvent) {
		t.Fatalf("err = %v, want ErrInvalidEvent", err)
	}
}

func TestRetentionBoundsStreams(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	t.Run("maxlen", func(t *testing.T) {
		l := New(rdb, Options{MaxLen: 50, StreamMaxLen: 10})
		for i := range 1000 {
			if _, err := l.Append(ctx, newEvent(fmt.Sprint("m", i), "t.maxlen", "SKU-M")); err != nil {
				t.Fatal(err)
			}
		}
		// MAXLEN ~ trims whole stream nodes (100 entries by default), so the bound is loose.
		if n := rdb.XLen(ctx, SubjectStream("SKU-M")).Val(); n > 10+100 {
			t.Errorf("subject stream holds %d of 1000 entries; want at most ~10", n)
		}
		if n := rdb.XLen(ctx, GlobalStream).Val(); n > 50+100 {
			t.Errorf("global stream holds %d of 1000 entries; want at most ~50", n)
		}
	})
	t.Run("minid", func(t *testing.T) {
		l := New(rdb, Options{Retention: 200 * time.Millisecond})
		for i := range 300 {
			if _, err := l.Append(ctx, newEvent(fmt.Sprint("r", i), "t.minid", "SKU-R")); err != nil {
				t.Fatal(err)
			}
		}
		time.Sleep(300 * time.Millisecond) // let every entry age past the retention
		if _, err := l.Append(ctx, newEvent("r-last", "t.minid", "SKU-R")); err != nil {
			t.Fatal(err)
		}
		if n := rdb.XLen(ctx, SubjectStream("SKU-R")).Val(); n >= 300 {
			t.Errorf("subject stream kept %d entries older than the retention", n)
		}
	})
}

func TestReadPagesAndFilters(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	l := New(rdb, Options{})
	types := []string{"sale.recorded", "sale.returned", "stock.received"}
	for i := range 30 {
		e := newEvent(fmt.Sprint(i), types[i%3], fmt.Sprint("SKU-", i%2))
		if _, err := l.Append(ctx, e); err != nil {
			t.Fatal(err)
		}
	}
	collect := func(q Query) []string {
		var ids []string
		for {
			p, err := l.Read(ctx, q)
			if err != nil {
				t.Fatal(err)
			}
			for _, r := range p.Records {
				ids = append(ids, r.Event.ID())
			}
			if p.Next == "" {
				return ids
			}
			q.After = p.Next
		}
	}
	cases := map[string]struct {
		q    Query
		want int
	}{
		"global":             {q: Query{Limit: 7}, want: 30},
		"subject":            {q: Query{Subject: "SKU-0", Limit: 4}, want: 15},
		"type":               {q: Query{Type: "sale.returned", Limit: 3}, want: 10},
		"subject and type":   {q: Query{Subject: "SKU-1", Type: "sale.recorded", Limit: 2}, want: 5},
		"window in future":   {q: Query{Since: time.Now().Add(time.Hour), Limit: 5}, want: 0},
		"window in the past": {q: Query{Until: time.Now().Add(-time.Hour), Limit: 5}, want: 0},
		"window around now":  {q: Query{Since: time.Now().Add(-time.Hour), Until: time.Now().Add(time.Hour), Limit: 9}, want: 30},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			ids := collect(tc.q)
			if len(ids) != tc.want {
				t.Fatalf("got %d events, want %d: %v", len(ids), tc.want, ids)
			}
			seen := map[string]bool{}
			for _, id := range ids {
				if seen[id] {
					t.Fatalf("event %s returned twice across pages", id)
				}
				seen[id] = true
			}
		})
	}
}

func TestReadRejectsBadQueries(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	l := New(srv.Client(), Options{})
	for name, q := range map[string]Query{
		"zero limit":  {},
		"huge limit":  {Limit: MaxLimit + 1},
		"bad cursor":  {Limit: 1, After: "abc"},
		"half cursor": {Limit: 1, After: "12-"},
	} {
		t.Run(name, func(t *testing.T) {
			if _, err := l.Read(context.Background(), q); !errors.Is(err, ErrInvalidQuery) {
				t.Fatalf("err = %v", err)
			}
		})
	}
}
