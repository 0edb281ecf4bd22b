package projection

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/roundtrips"
)

type testEvent struct {
	ref EventRef
	ch  Change
}

// randomEvents returns n distinct events, each adding a random amount to a random field of a
// random entry.
func randomEvents(r *rand.Rand, n int) []testEvent {
	out := make([]testEvent, n)
	for i := range out {
		key := fmt.Sprintf("SKU-%d", r.IntN(5))
		field := fmt.Sprintf("store-%d", r.IntN(3))
		out[i] = testEvent{
			ref: EventRef{Source: fmt.Sprintf("pos/till-%d", r.IntN(2)), ID: strconv.Itoa(i)},
			ch:  Change{Key: key, Ops: []Op{Incr(field, int64(r.IntN(21)-10)), Max("last", int64(i))}},
		}
	}
	return out
}

// fold computes the model the unique events should produce.
func fold(events []testEvent) map[string]Entry {
	want := map[string]Entry{}
	for _, e := range events {
		en, ok := want[e.ch.Key]
		if !ok {
			en = Entry{Key: e.ch.Key, Fields: map[string]string{}}
		}
		for _, op := range e.ch.Ops {
			cur, _ := strconv.ParseInt(en.Fields[op.Field], 10, 64)
			switch op.Kind {
			case OpIncr:
				en.Fields[op.Field] = strconv.FormatInt(cur+op.N, 10)
			case OpMax:
				if _, set := en.Fields[op.Field]; !set || op.N > cur {
					en.Fields[op.Field] = strconv.FormatInt(op.N, 10)
				}
			}
		}
		en.Version++
		want[e.ch.Key] = en
	}
	return want
}

// deliveries repeats some events and shuffles them, as an at-least-once broker may.
func deliveries(r *rand.Rand, events []testEvent) []testEvent {
	out := append([]testEvent(nil), events...)
	for _, e := range events {
		for range r.IntN(3) {
			out = append(out, e)
		}
	}
	r.Shuffle(len(out), func(i, j int) { out[i], out[j] = out[j], out[i] })
	return out
}

func readModel(t *testing.T, rdb redis.Cmdable, model string) map[string]Entry {
	t.Helper()
	got := map[string]Entry{}
	after := ""
	for {
		p, err := List(context.Background(), rdb, model, after, 2)
		if err != nil {
			t.Fatal(err)
		}
		for _, e := range p.Entries {
			got[e.Key] = e
		}
		if p.Next == "" {
			return got
		}
		after = p.Next
	}
}

func equalModels(a, b map[string]Entry) error {
	if len(a) != len(b) {
		return fmt.Errorf("%d entries vs %d", len(a), len(b))
	}
	for k, ea := range a {
		eb := b[k]
		if ea.Version != eb.Version || len(ea.Fields) != len(eb.Fields) {
			return fmt.Errorf("entry %s: %+v vs %+v", k, ea, eb)
		}
		for f, v := range ea.Fields {
			if eb.Fields[f] != v {
				return fmt.Errorf("entry %s field %s: %s vs %s", k, f, v, eb.Fields[f])
			}
		}
	}
	return nil
}

// TestRandomSequencesWithDuplicatesEqualFold is the kit's property: whatever the duplicates
// and the order (and with concurrent appliers), the model equals the fold of the unique events.
func TestRandomSequencesWithDuplicatesEqualFold(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	for seed := range uint64(20) {
		t.Run(fmt.Sprintf("seed-%d", seed), func(t *testing.T) {
			r := rand.New(rand.NewPCG(seed, 42))
			model := fmt.Sprintf("stock-%d", seed)
			k, err := New(rdb, "stock-projector", model, Options{})
			if err != nil {
				t.Fatal(err)
			}
			events := randomEvents(r, 50+r.IntN(100))
			work := deliveries(r, events)
			workers := 1 + int(seed%4)
			var wg sync.WaitGroup
			var applied atomic.Int64
			errs := make(chan error, workers)
			for w := range workers {
				wg.Go(func() {
					for i := w; i < len(work); i += workers {
						res, err := k.Apply(ctx, work[i].ref, work[i].ch)
						if err != nil {
							errs <- err
							return
						}
						if !res.Duplicate {
							applied.Add(1)
						}
					}
				})
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if applied.Load() != int64(len(events)) {
				t.Fatalf("applied %d events of %d deliveries, want %d unique", applied.Load(), len(work), len(events))
			}
			if err := equalModels(readModel(t, rdb, model), fold(events)); err != nil {
				t.Fatalf("model differs from the fold of unique events: %v", err)
			}
			v, err := ModelVersion(ctx, rdb, model)
			if err != nil || v != int64(len(events)) {
				t.Fatalf("model version = %d, %v; want %d", v, err, len(events))
			}
		})
	}
}

func TestDropAndReplayRebuildsTheSameModel(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	r := rand.New(rand.NewPCG(7, 7))
	k, _ := New(rdb, "stock-projector", "stock", Options{})
	events := randomEvents(r, 200)
	for _, e := range deliveries(r, events) {
		if _, err := k.Apply(ctx, e.ref, e.ch); err != nil {
			t.Fatal(err)
		}
	}
	live := readModel(t, rdb, "stock")
	if err := k.Drop(ctx); err != nil {
		t.Fatal(err)
	}
	if n := len(readModel(t, rdb, "stock")); n != 0 {
		t.Fatalf("%d entries left after Drop", n)
	}
	for _, e := range events { // the log holds each event once, in order
		res, err := k.Apply(ctx, e.ref, e.ch)
		if err != nil || res.Duplicate {
			t.Fatalf("replaying %s: %+v, %v (the inbox must be dropped with the model)", e.ref.ID, res, err)
		}
	}
	if err := equalModels(readModel(t, rdb, "stock"), live); err != nil {
		t.Fatalf("rebuilt model differs from live: %v", err)
	}
}

func TestWatchFiresOncePerDip(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	k, _ := New(rdb, "stock-projector", "stock", Options{})
	steps := []struct {
		name  string
		delta int64
		want  string // direction of the crossing, "" for none
	}{
		{name: "received 10", delta: 10},
		{name: "sold 3 (7 left, above 5)", delta: -3},
		{name: "sold 3 (4 left, dips)", delta: -3, want: Below},
		{name: "sold 1 (3 left, still in the dip)", delta: -1},
		{name: "sold 3 (0 left, still in the dip)", delta: -3},
		{name: "received 4 (4, still below)", delta: 4},
		{name: "received 20 (24, recovered)", delta: 20, want: Recovered},
		{name: "sold 20 (4, second dip)", delta: -20, want: Below},
	}
	for i, s := range steps {
		ref := EventRef{Source: "pos", ID: strconv.Itoa(i)}
		ch := Change{Key: "SKU-1", Ops: []Op{Incr("store-1", s.delta)}, Watches: []Watch{{Field: "store-1", Threshold: 5}}}
		res, err := k.Apply(ctx, ref, ch)
		if err != nil {
			t.Fatal(err)
		}
		got := ""
		if len(res.Crossings) == 1 {
			got = res.Crossings[0].Direction
		}
		if got != s.want || len(res.Crossings) > 1 {
			t.Fatalf("%s: crossings %+v, want %q", s.name, res.Crossings, s.want)
		}
		// A redelivery changes nothing but reports the same crossings, so a lost reply is re-sent.
		again, err := k.Apply(ctx, ref, ch)
		if err != nil || !again.Duplicate || again.Version != res.Version || len(again.Crossings) != len(res.Crossings) {
			t.Fatalf("%s redelivered: %+v, %v; first %+v", s.name, again, err, res)
		}
	}
	e, err := Get(ctx, rdb, "stock", "SKU-1")
	if err != nil || e.Fields["store-1"] != "4" || e.Version != int64(len(steps)) {
		t.Fatalf("entry = %+v, %v", e, err)
	}
	if _, hidden := e.Fields["_below:store-1"]; hidden {
		t.Fatal("bookkeeping field leaked into the entry")
	}
}

func TestInboxExpires(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	k, _ := New(rdb, "p", "m", Options{InboxTTL: time.Hour})
	ref := EventRef{Source: "s", ID: "1"}
	if _, err := k.Apply(ctx, ref, Change{Key: "k", Ops: []Op{Incr("n", 1)}}); err != nil {
		t.Fatal(err)
	}
	ttl, err := rdb.PTTL(ctx, k.InboxKey(ref)).Result()
	if err != nil || ttl <= 0 || ttl > time.Hour {
		t.Fatalf("inbox TTL = %v, %v; want (0, 1h]", ttl, err)
	}
}

func TestInboxKeysDoNotCollide(t *testing.T) {
	k, _ := New(nil, "p", "m", Options{})
	a := k.InboxKey(EventRef{Source: "a:b", ID: "c"})
	b := k.InboxKey(EventRef{Source: "a", ID: "b:c"})
	if a == b {
		t.Fatalf("(a:b, c) and (a, b:c) share inbox key %s", a)
	}
}

func TestInvalidChanges(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	k, _ := New(srv.Client(), "p", "m", Options{})
	ok := EventRef{Source: "s", ID: "1"}
	cases := map[string]struct {
		ref EventRef
		ch  Change
	}{
		"no id":          {ref: EventRef{Source: "s"}, ch: Change{Key: "k"}},
		"key with slash": {ref: ok, ch: Change{Key: "a/b"}},
		"empty key":      {ref: ok, ch: Change{Key: ""}},
		"reserved field": {ref: ok, ch: Change{Key: "k", Ops: []Op{Incr("_version", 5)}}},
		"unknown op":     {ref: ok, ch: Change{Key: "k", Ops: []Op{{Kind: "mul", Field: "x"}}}},
		"reserved watch": {ref: ok, ch: Change{Key: "k", Watches: []Watch{{Field: "_x"}}}},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			if _, err := k.Apply(context.Background(), tc.ref, tc.ch); !errors.Is(err, ErrInvalidChange) {
				t.Fatalf("err = %v, want ErrInvalidChange", err)
			}
		})
	}
}

func TestOneRoundTripPerEvent(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := redis.NewClient(&redis.Options{Addr: srv.Addr()})
	defer rdb.Close()
	ctx := context.Background()
	k, _ := New(rdb, "p", "m", Options{})
	if err := k.Load(ctx); err != nil {
		t.Fatal(err)
	}
	hook := &roundtrips.Counter{}
	rdb.AddHook(hook)
	const n = 100
	for i := range n {
		if _, err := k.Apply(ctx, EventRef{Source: "s", ID: strconv.Itoa(i % 50)}, Change{Key: "k", Ops: []Op{Incr("n", 1)}}); err != nil {
			t.Fatal(err)
		}
	}
	if got := hook.Count(); got != n {
		t.Fatalf("%d round trips for %d events, want exactly one each", got, n)
	}
}

func TestScriptCacheFlushed(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	ctx := context.Background()
	k, _ := New(rdb, "p", "m", Options{})
	if err := rdb.ScriptFlush(ctx).Err(); err != nil {
		t.Fatal(err)
	}
	res, err := k.Apply(ctx, EventRef{Source: "s", ID: "1"}, Change{Key: "k", Ops: []Op{Incr("n", 2)}})
	if err != nil || res.Version != 1 {
		t.Fatalf("after SCRIPT FLUSH: %+v, %v", res, err)
	}
}

// TestOpen: Open loads the script when Redis answers, and starts the projector anyway when it
// does not yet.
func TestOpen(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	tests := map[string]struct {
		rdb        *redis.Client
		wantLoaded bool
	}{
		"redis answers":    {rdb: srv.Client(), wantLoaded: true},
		"redis not up yet": {rdb: redis.NewClient(&redis.Options{Addr: "127.0.0.1:1", MaxRetries: -1})},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			p, err := Open(context.Background(), tc.rdb, "open-test", "open-model", Options{})
			if err != nil || p == nil {
				t.Fatalf("Open = %v, %v; want a projector and no error", p, err)
			}
			if !tc.wantLoaded {
				return
			}
			exists, err := srv.Client().ScriptExists(context.Background(), applyScript.Hash()).Result()
			if err != nil || len(exists) != 1 || !exists[0] {
				t.Fatalf("script loaded = %v (%v), want true", exists, err)
			}
		})
	}
}
