package deadletter

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
	"unicode/utf8"

	"github.com/cloudevents/sdk-go/v2/event"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/sink"
)

// bigLetter is a dead letter whose binary data has n bytes.
func bigLetter(t testing.TB, id string, n int) Letter {
	t.Helper()
	e := newEvent(t, id, "t", "/s", map[string]any{ExtErrorDest: "http://d", ExtErrorCode: "500"})
	e.SetDataContentType("application/octet-stream")
	e.DataEncoded = bytes.Repeat([]byte{0xff}, n)
	l, err := FromEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// eventIDs lists the stored letters' event ids, oldest first.
func eventIDs(t testing.TB, s *Store) []string {
	t.Helper()
	all, err := s.List(context.Background(), Filter{OmitEvent: true})
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, l := range all {
		ids = append(ids, l.EventID)
	}
	return ids
}

// storedBytes is what the byte counter must hold: the sizes of the stored letters, each the
// bytes of its field names and values (without the size field itself), computed here from what
// Redis actually holds. It fails the test when an entry's size field disagrees with its fields.
// counterAndStoredBytes reads the byte counter and sums the bytes the letters hold, in one
// MULTI/EXEC so both are read at the same instant: the stream and the counter share a TTL, and
// two separate reads could straddle their expiry (counter read, then both expire, then an empty
// stream), which would look like a counter out of step.
func counterAndStoredBytes(t testing.TB, c *redis.Client) (counted, stored int64) {
	t.Helper()
	ctx := context.Background()
	var get *redis.StringCmd
	var xrange *redis.XMessageSliceCmd
	if _, err := c.TxPipelined(ctx, func(p redis.Pipeliner) error {
		get = p.Get(ctx, keyBytes)
		xrange = p.XRange(ctx, keyStream, "-", "+")
		return nil
	}); err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	counted, err := get.Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	entries, err := xrange.Result()
	if err != nil {
		t.Fatal(err)
	}
	for _, e := range entries {
		var real int64
		// go-redis returns Values as a map; every field of a letter is a plain string.
		for k, v := range e.Values {
			if k != "size" {
				real += int64(len(k) + len(v.(string)))
			}
		}
		if got := e.Values["size"]; got != strconv.FormatInt(real, 10) {
			t.Fatalf("letter %s records size %v, its fields hold %d bytes", e.ID, got, real)
		}
		stored += real
	}
	return counted, stored
}

func counter(t testing.TB, c *redis.Client) int64 {
	t.Helper()
	n, err := c.Get(context.Background(), keyBytes).Int64()
	if err != nil && !errors.Is(err, redis.Nil) {
		t.Fatal(err)
	}
	return n
}

func TestFullRefusesAndEvictsNothing(t *testing.T) {
	ctx := context.Background()
	const dataBytes = 100 << 10
	size := func(t *testing.T) int64 { // a letter's stored size, measured on a scratch store
		s, c := newStore(t, Options{})
		if _, _, err := s.Add(ctx, bigLetter(t, "probe", dataBytes)); err != nil {
			t.Fatal(err)
		}
		return counter(t, c)
	}
	tests := []struct {
		name    string
		opts    func(letterSize int64) Options
		want    error
		wantIDs string
	}{{
		name:    "by count",
		opts:    func(int64) Options { return Options{MaxLetters: 3} },
		want:    ErrFull,
		wantIDs: "[0 1 2]",
	}, {
		name:    "by bytes",
		opts:    func(n int64) Options { return Options{MaxBytes: 3*n + n/2} },
		want:    ErrFull,
		wantIDs: "[0 1 2]",
	}}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, c := newStore(t, tc.opts(size(t)))
			for i := range 3 {
				if _, _, err := s.Add(ctx, bigLetter(t, fmt.Sprint(i), dataBytes)); err != nil {
					t.Fatalf("letter %d: %v", i, err)
				}
			}
			before := counter(t, c)
			if u, err := s.Usage(ctx); err != nil || u.Letters != 3 || u.Bytes != before {
				t.Errorf("Usage = %+v (%v), want 3 letters and %d bytes", u, err, before)
			}

			_, stored, err := s.Add(ctx, bigLetter(t, "3", dataBytes))

			var full *FullError
			if !errors.Is(err, tc.want) || !errors.As(err, &full) || stored {
				t.Fatalf("Add to a full store: stored=%v err=%v, want %v", stored, err, tc.want)
			}
			if full.Letters != 3 || full.Bytes != before || full.Size <= dataBytes {
				t.Errorf("FullError = %+v, want 3 letters, %d bytes, size > %d", full, before, dataBytes)
			}
			if got := fmt.Sprint(eventIDs(t, s)); got != tc.wantIDs {
				t.Errorf("stored %s after the refusal, want %s (nothing evicted)", got, tc.wantIDs)
			}
			if got := counter(t, c); got != before {
				t.Errorf("byte counter %d after the refusal, want %d", got, before)
			}
			// A duplicate of a stored letter is still acknowledged while full.
			if _, stored, err := s.Add(ctx, bigLetter(t, "0", dataBytes)); err != nil || stored {
				t.Errorf("duplicate while full: stored=%v err=%v, want acknowledged, not stored", stored, err)
			}
			// Room made by an operator (purge) is used again.
			if _, err := s.Drop(ctx, s.mustFirstID(t)); err != nil {
				t.Fatal(err)
			}
			if _, stored, err := s.Add(ctx, bigLetter(t, "3", dataBytes)); err != nil || !stored {
				t.Errorf("after a purge: stored=%v err=%v, want stored", stored, err)
			}
			if got, want := counterAndStoredBytes(t, c); got != want {
				t.Errorf("byte counter %d, letters hold %d", got, want)
			}
		})
	}
}

func (s *Store) mustFirstID(t testing.TB) string {
	t.Helper()
	all, err := s.List(context.Background(), Filter{Limit: 1, OmitEvent: true})
	if err != nil || len(all) == 0 {
		t.Fatalf("no first letter: %v", err)
	}
	return all[0].ID
}

func TestLetterLargerThanTheBoundIsTooLarge(t *testing.T) {
	s, c := newStore(t, Options{MaxBytes: 64 << 10})
	_, _, err := s.Add(context.Background(), bigLetter(t, "big", 100<<10))
	if !errors.Is(err, ErrTooLarge) || errors.Is(err, ErrFull) {
		t.Fatalf("err = %v, want ErrTooLarge and not ErrFull (retrying cannot help)", err)
	}
	if n := c.XLen(context.Background(), keyStream).Val(); n != 0 {
		t.Errorf("%d letters stored", n)
	}
}

// flakyPublisher accepts or refuses at random, like a broker during an outage.
type flakyPublisher struct {
	rnd *rand.Rand
	mu  sync.Mutex
}

func (p *flakyPublisher) Send(context.Context, event.Event) error {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.rnd.IntN(2) == 0 {
		return errors.New("broker answered 503")
	}
	return nil
}

// TestByteCounterIsExactUnderAnyMixOfOperations runs a random mix of adds (some refused as
// full, some duplicates), drops, redrives that are accepted or refused, and age-based expiry on a
// real Redis, and checks after every step that the counter equals the sum of the stored
// letters' sizes.
func TestByteCounterIsExactUnderAnyMixOfOperations(t *testing.T) {
	const maxAge = 150 * time.Millisecond
	s, c := newStore(t, Options{MaxLetters: 8, MaxBytes: 150 << 10, MaxAge: maxAge})
	ctx := context.Background()
	seed := uint64(time.Now().UnixNano())
	t.Logf("seed %d", seed)
	rnd := rand.New(rand.NewPCG(seed, 1))
	pub := &flakyPublisher{rnd: rand.New(rand.NewPCG(seed, 2))}
	var full int
	for step := range 400 {
		var op string
		switch n := rnd.IntN(100); {
		case n < 60:
			op = "add"
			_, _, err := s.Add(ctx, bigLetter(t, fmt.Sprint(rnd.IntN(80)), rnd.IntN(40<<10)))
			if errors.Is(err, ErrFull) {
				full++
			} else if err != nil {
				t.Fatal(err)
			}
		case n < 75:
			op = "drop"
			all, err := s.List(ctx, Filter{OmitEvent: true})
			if err != nil {
				t.Fatal(err)
			}
			if len(all) > 0 {
				if _, err := s.Drop(ctx, all[rnd.IntN(len(all))].ID, "0-1"); err != nil {
					t.Fatal(err)
				}
			}
		case n < 95:
			op = "redrive"
			_, err := RedriveMatching(ctx, s, pub, Filter{Limit: 1 + rnd.IntN(4)}, RedriveOptions{Lease: time.Millisecond})
			if err != nil && !errors.Is(err, ErrNotAccepted) {
				t.Fatal(err)
			}
		default:
			op = "age"
			time.Sleep(maxAge + 10*time.Millisecond) // everything stored so far expires on the next add
		}
		if got, want := counterAndStoredBytes(t, c); got != want {
			t.Fatalf("step %d (%s): byte counter %d, letters hold %d", step, op, got, want)
		}
	}
	t.Logf("%d adds refused as full", full)
	if full == 0 {
		t.Error("no add was refused as full; the bounds did not come into play")
	}
}

// recordingBroker keeps the body and content type of each event it receives (binary mode).
type recordingBroker struct {
	mu     sync.Mutex
	bodies map[string][]byte
	types  map[string]string
}

func newRecordingBroker(t *testing.T) (*recordingBroker, *sink.Sender) {
	b := &recordingBroker{bodies: map[string][]byte{}, types: map[string]string{}}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		b.mu.Lock()
		b.bodies[r.Header.Get("Ce-Id")] = body
		b.types[r.Header.Get("Ce-Id")] = r.Header.Get("Content-Type")
		b.mu.Unlock()
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(srv.Close)
	pub, err := sink.New(srv.URL, 5*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	return b, pub
}

func TestParkedLetterRoundTripsAndRedrivesByteForByte(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	data := []byte("{ \"order\" : \"<o-1>&\",\n  \"total\": 1.50 }")
	e := newEvent(t, "p1", "com.example.order.created", "/shop", map[string]any{"traceparent": "00-abc"})
	e.SetDataContentType("application/json")
	e.DataEncoded = data
	l, err := FromEvent(e)
	if err != nil {
		t.Fatal(err)
	}
	l.Dest, l.Trigger = "http://orders", "knfaas/orders-created"
	l.Reason, l.Detail = ReasonParked, "subscriber: 431 header too large; dead-letter sink: 431"
	parkedID, stored, err := s.Add(ctx, l)
	if err != nil || !stored {
		t.Fatalf("Add(parked): stored=%v err=%v", stored, err)
	}
	add(t, s, letterSpec{"r1", "com.example.order.created", "/shop", "http://orders", 500})

	got, err := s.Get(ctx, parkedID)
	if err != nil {
		t.Fatal(err)
	}
	if got.Reason != ReasonParked || got.Detail != l.Detail || got.Trigger != l.Trigger {
		t.Errorf("stored parked letter = reason %q detail %q trigger %q", got.Reason, got.Detail, got.Trigger)
	}
	parked, err := s.List(ctx, Filter{Reason: ReasonParked})
	if err != nil {
		t.Fatal(err)
	}
	if len(parked) != 1 || parked[0].ID != parkedID {
		t.Errorf("Filter{Reason: parked} listed %d letters, want only %s", len(parked), parkedID)
	}

	b, pub := newRecordingBroker(t)
	rep, err := Redrive(ctx, s, pub, parked, RedriveOptions{})
	if err != nil || rep.Accepted != 1 {
		t.Fatalf("redrive: %+v, %v", rep, err)
	}
	if !bytes.Equal(b.bodies["p1"], data) || b.types["p1"] != "application/json" {
		t.Errorf("redriven data %q (%s), want %q byte for byte", b.bodies["p1"], b.types["p1"], data)
	}
}

// TestLettersOfTheOldFormatStayReadable stores an entry as the store wrote it before letters had
// a reason, a detail and a size, and checks it is listed, shown, redriven and dropped, without
// upsetting the byte counter.
func TestLettersOfTheOldFormatStayReadable(t *testing.T) {
	s, c := newStore(t, Options{})
	ctx := context.Background()
	add(t, s, letterSpec{"new", "t", "/s", "http://d", 500})
	before := counter(t, c)
	event := `{"specversion":"1.0","id":"old","source":"/s","type":"t","datacontenttype":"application/json","data":{"order":"o-1"}}`
	id := c.XAdd(ctx, &redis.XAddArgs{Stream: keyStream, Values: []any{
		"type", "t", "source", "/s", "id", "old", "subject", "", "dest", "http://d", "code", "503",
		"data", "db down", "errext", "1", "trigger", "knfaas/t", "event", event, "key", "k-old",
	}}).Val()
	c.ZAdd(ctx, keyIndexAll, redis.Z{Score: 1, Member: id})

	l, err := s.Get(ctx, id)
	if err != nil {
		t.Fatal(err)
	}
	if l.EventID != "old" || l.Code != 503 || l.Reason != "" || l.Detail != "" || l.ErrorData != "db down" {
		t.Errorf("old letter read as %+v", l)
	}
	if got := fmt.Sprint(eventIDs(t, s)); got != "[old new]" {
		t.Errorf("listed %s, want [old new]", got)
	}
	b, pub := newRecordingBroker(t)
	if rep, err := Redrive(ctx, s, pub, []Letter{l}, RedriveOptions{}); err != nil || rep.Accepted != 1 {
		t.Fatalf("redrive of an old letter: %+v, %v", rep, err)
	}
	if got := string(b.bodies["old"]); got != `{"order":"o-1"}` {
		t.Errorf("redriven data %q", got)
	}
	if got := counter(t, c); got != before {
		t.Errorf("byte counter %d after dropping an uncounted old letter, want %d", got, before)
	}
}

func TestFetchInChunksAndWithoutEvents(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	for i := range 5 {
		if _, _, err := s.Add(ctx, bigLetter(t, fmt.Sprint(i), 3<<20)); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		name      string
		filter    Filter
		wantEvent bool
	}{
		{"letters larger than one fetch are all listed", Filter{}, true},
		{"OmitEvent leaves the events out", Filter{OmitEvent: true}, false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			all, err := s.List(ctx, tc.filter)
			if err != nil {
				t.Fatal(err)
			}
			if len(all) != 5 {
				t.Fatalf("listed %d letters, want 5", len(all))
			}
			for _, l := range all {
				if (len(l.Event) > 0) != tc.wantEvent {
					t.Errorf("letter %s has %d event bytes, want event: %v", l.ID, len(l.Event), tc.wantEvent)
				}
			}
		})
	}
}

func TestRedriveSendsDataByteForByte(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	b, pub := newRecordingBroker(t)
	for i, tc := range dataCases {
		t.Run(tc.name, func(t *testing.T) {
			id := fmt.Sprint("exact-", i)
			e := newEvent(t, id, "t", "/s", map[string]any{ExtErrorDest: "http://d", ExtErrorCode: "500"})
			e.SetDataContentType(tc.contentType)
			e.DataEncoded = tc.data
			l, err := FromEvent(e)
			if err != nil {
				t.Fatal(err)
			}
			letterID, _, err := s.Add(ctx, l)
			if err != nil {
				t.Fatal(err)
			}
			stored, err := s.Get(ctx, letterID)
			if err != nil {
				t.Fatal(err)
			}
			if rep, err := Redrive(ctx, s, pub, []Letter{stored}, RedriveOptions{}); err != nil || rep.Accepted != 1 {
				t.Fatalf("redrive: %+v, %v", rep, err)
			}
			b.mu.Lock()
			defer b.mu.Unlock()
			if !bytes.Equal(b.bodies[id], tc.data) {
				t.Errorf("broker received %q, want %q", b.bodies[id], tc.data)
			}
		})
	}
}

func TestAddBoundsTheDetail(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	tests := []struct {
		name, detail string
		wantLen      int
	}{
		{"short detail is kept", "subscriber: 431", len("subscriber: 431")},
		{"long detail is cut", strings.Repeat("é", MaxDetailBytes), MaxDetailBytes},
	}
	for i, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			l := letterSpec{id: fmt.Sprint("d", i), typ: "t", source: "/s"}.letter(t)
			l.Reason, l.Detail = ReasonParked, tc.detail
			id, _, err := s.Add(ctx, l)
			if err != nil {
				t.Fatal(err)
			}
			got, err := s.Get(ctx, id)
			if err != nil {
				t.Fatal(err)
			}
			if len(got.Detail) > tc.wantLen || len(got.Detail) < tc.wantLen-4 || !utf8.ValidString(got.Detail) {
				t.Errorf("stored detail of %d bytes (valid UTF-8: %v), want about %d", len(got.Detail), utf8.ValidString(got.Detail), tc.wantLen)
			}
		})
	}
}
