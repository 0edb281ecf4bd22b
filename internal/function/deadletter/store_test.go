package deadletter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/redis/go-redis/v9"
)

type letterSpec struct {
	id, typ, source, dest string
	code                  int
}

func (s letterSpec) letter(t testing.TB) Letter {
	t.Helper()
	ext := map[string]any{}
	if s.dest != "" {
		ext[ExtErrorDest] = s.dest
	}
	if s.code != 0 {
		ext[ExtErrorCode] = fmt.Sprint(s.code)
	}
	l, err := FromEvent(newEvent(t, s.id, s.typ, s.source, ext))
	if err != nil {
		t.Fatal(err)
	}
	return l
}

func newStore(t testing.TB, opts Options) (*Store, *redis.Client) {
	t.Helper()
	srv := redistest.Start(t, redistest.Options{})
	c := srv.Client()
	return NewStore(c, opts), c
}

func add(t testing.TB, s *Store, specs ...letterSpec) []string {
	t.Helper()
	var ids []string
	for _, spec := range specs {
		id, stored, err := s.Add(context.Background(), spec.letter(t))
		if err != nil {
			t.Fatal(err)
		}
		if !stored {
			t.Fatalf("letter %+v was taken for a duplicate", spec)
		}
		ids = append(ids, id)
	}
	return ids
}

func TestAddIsIdempotentOnSourceIDDest(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	first := letterSpec{id: "1", typ: "t", source: "/s", dest: "http://a", code: 500}
	tests := []struct {
		name       string
		spec       letterSpec
		wantStored bool
	}{
		{"first delivery is stored", first, true},
		{"same source, id and dest is a duplicate", letterSpec{"1", "t", "/s", "http://a", 503}, false},
		{"same event failing at another subscriber is its own letter", letterSpec{"1", "t", "/s", "http://b", 500}, true},
		{"same id from another source is its own letter", letterSpec{"1", "t", "/other", "http://a", 500}, true},
	}
	var firstID string
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			id, stored, err := s.Add(ctx, tc.spec.letter(t))
			if err != nil {
				t.Fatal(err)
			}
			if stored != tc.wantStored {
				t.Fatalf("stored = %v, want %v", stored, tc.wantStored)
			}
			if firstID == "" {
				firstID = id
			} else if !tc.wantStored && id != firstID {
				t.Errorf("duplicate answered %s, want the earlier letter %s", id, firstID)
			}
		})
	}
	all, err := s.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != 3 {
		t.Errorf("stored %d letters, want 3", len(all))
	}
}

func TestListFilters(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	ids := add(t, s,
		letterSpec{"a", "com.github.push", "/github", "http://build", 500},
		letterSpec{"b", "com.github.push", "/github", "http://notify", 404},
		letterSpec{"c", "com.stripe.charge.succeeded", "/stripe", "http://build", 500},
		letterSpec{"d", "com.stripe.charge.succeeded", "/stripe", "", 0},
	)
	first, _ := s.Get(ctx, ids[0])
	last, _ := s.Get(ctx, ids[3])
	tests := []struct {
		name   string
		filter Filter
		want   []string // event ids, oldest first
	}{
		{"everything", Filter{}, []string{"a", "b", "c", "d"}},
		{"by type", Filter{Type: "com.github.push"}, []string{"a", "b"}},
		{"by source", Filter{Source: "/stripe"}, []string{"c", "d"}},
		{"by dest", Filter{Dest: "http://build"}, []string{"a", "c"}},
		{"by code", Filter{Code: 500}, []string{"a", "c"}},
		{"type and code", Filter{Type: "com.github.push", Code: 404}, []string{"b"}},
		{"dest and source", Filter{Dest: "http://build", Source: "/stripe"}, []string{"c"}},
		{"no match", Filter{Type: "com.github.push", Source: "/stripe"}, nil},
		{"unknown value", Filter{Type: "nope"}, nil},
		{"limit", Filter{Limit: 2}, []string{"a", "b"}},
		{"since after everything", Filter{Since: last.Received.Add(time.Millisecond)}, nil},
		{"until before everything", Filter{Until: first.Received.Add(-time.Millisecond)}, nil},
		{"window holding everything", Filter{Since: first.Received, Until: last.Received}, []string{"a", "b", "c", "d"}},
		{"by letter ids", Filter{IDs: []string{ids[1], ids[2]}}, []string{"b", "c"}},
		{"letter ids and a filter", Filter{IDs: []string{ids[1], ids[2]}, Code: 500}, []string{"c"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := s.List(ctx, tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			var gotIDs []string
			for _, l := range got {
				gotIDs = append(gotIDs, l.EventID)
			}
			if fmt.Sprint(gotIDs) != fmt.Sprint(tc.want) {
				t.Errorf("got %v, want %v", gotIDs, tc.want)
			}
		})
	}
}

func TestListPagesThroughLargeIndexes(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	// More letters than one page of the index, of which only every 10th matches.
	n := 3*listPage + 7
	for i := range n {
		code := 500
		if i%10 == 0 {
			code = 429
		}
		add(t, s, letterSpec{fmt.Sprint(i), "t", "/s", "http://d", code})
	}
	got, err := s.List(ctx, Filter{Type: "t", Code: 429})
	if err != nil {
		t.Fatal(err)
	}
	if want := (n + 9) / 10; len(got) != want {
		t.Errorf("listed %d letters with code 429, want %d", len(got), want)
	}
	all, err := s.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(all) != n {
		t.Errorf("listed %d letters, want %d", len(all), n)
	}
}

func TestRetentionByAgeAndEveryKeyExpires(t *testing.T) {
	const maxAge = 300 * time.Millisecond
	s, c := newStore(t, Options{MaxAge: maxAge})
	ctx := context.Background()
	add(t, s, letterSpec{"old1", "t", "/s", "http://d", 500}, letterSpec{"old2", "u", "/s", "http://e", 502})

	var keys []string
	iter := c.Scan(ctx, 0, Prefix+"*", 100).Iterator()
	for iter.Next(ctx) {
		keys = append(keys, iter.Val())
	}
	if len(keys) == 0 {
		t.Fatal("no keys written")
	}
	for _, k := range keys {
		if ttl := c.PTTL(ctx, k).Val(); ttl <= 0 || ttl > maxAge {
			t.Errorf("key %s has TTL %v, want (0, %v]", k, ttl, maxAge)
		}
	}

	// Keep the stream alive past the old letters' age with a fresh add, which trims them.
	time.Sleep(maxAge / 2)
	add(t, s, letterSpec{"mid", "t", "/s", "http://d", 500})
	time.Sleep(maxAge/2 + 50*time.Millisecond)
	add(t, s, letterSpec{"new", "t", "/s", "http://d", 500})

	all, err := s.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, l := range all {
		got = append(got, l.EventID)
	}
	if fmt.Sprint(got) != "[mid new]" {
		t.Errorf("kept %v, want [mid new]", got)
	}
	if n := c.Exists(ctx, keyIndex+"type:u", keyIndex+"code:502").Val(); n != 0 {
		t.Errorf("%d index sets of trimmed letters remain", n)
	}
	if n := c.ZCard(ctx, keyIndexAll).Val(); n != 2 {
		t.Errorf("index:all holds %d, want 2", n)
	}
}

func TestDrop(t *testing.T) {
	s, c := newStore(t, Options{})
	ctx := context.Background()
	ids := add(t, s, letterSpec{"1", "t", "/s", "http://d", 500}, letterSpec{"2", "t", "/s", "http://d", 500})

	n, err := s.Drop(ctx, ids[0], "1-1")
	if err != nil {
		t.Fatal(err)
	}
	if n != 1 {
		t.Errorf("dropped %d, want 1", n)
	}
	if _, err := s.Get(ctx, ids[0]); err == nil {
		t.Error("dropped letter is still readable")
	}
	if got := c.ZRange(ctx, keyIndex+"code:500", 0, -1).Val(); fmt.Sprint(got) != fmt.Sprint(ids[1:]) {
		t.Errorf("code index = %v, want %v", got, ids[1:])
	}
	if _, err := s.Drop(ctx, "+"); err == nil {
		t.Error("drop accepted an id that is not a stream entry id")
	}
}
