package deadletter

import (
	"context"
	"fmt"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"
)

// BenchmarkListRareType lists the 1% of letters of one type in a 20,000-letter store through
// the type index, against the baseline a store without indexes needs: reading the whole stream
// and filtering. It reports both and their ratio.
func BenchmarkListRareType(b *testing.B) {
	const n, rareEvery = 20000, 100
	s, c := newStore(b, Options{})
	ctx := context.Background()
	for i := range n {
		typ := "common"
		if i%rareEvery == 0 {
			typ = "rare"
		}
		add(b, s, letterSpec{fmt.Sprint(i), typ, "/s", "http://d", 500})
	}
	var indexed, scanned time.Duration
	for b.Loop() {
		start := time.Now()
		got, err := s.List(ctx, Filter{Type: "rare"})
		indexed += time.Since(start)
		if err != nil || len(got) != n/rareEvery {
			b.Fatalf("indexed list: %d letters, %v", len(got), err)
		}

		start = time.Now()
		matched := scanStream(b, c, "rare")
		scanned += time.Since(start)
		if matched != n/rareEvery {
			b.Fatalf("scan matched %d", matched)
		}
	}
	b.ReportMetric(float64(indexed.Microseconds())/float64(b.N), "µs/indexed-list")
	b.ReportMetric(float64(scanned.Microseconds())/float64(b.N), "µs/full-scan")
	b.ReportMetric(float64(scanned)/float64(indexed), "scan/indexed")
}

func scanStream(b *testing.B, c *redis.Client, typ string) int {
	ctx := context.Background()
	matched := 0
	start := "-"
	for {
		entries, err := c.XRangeN(ctx, keyStream, start, "+", 1000).Result()
		if err != nil {
			b.Fatal(err)
		}
		for _, e := range entries {
			if e.Values["type"] == typ {
				matched++
			}
		}
		if len(entries) < 1000 {
			return matched
		}
		start = "(" + entries[len(entries)-1].ID
	}
}

// BenchmarkAdd measures storing one letter (idempotency check, XADD, five index updates, TTLs and
// retention in one script) against the baseline of a bare XADD of the same fields.
func BenchmarkAdd(b *testing.B) {
	s, c := newStore(b, Options{MaxLetters: 10000})
	ctx := context.Background()
	l := letterSpec{"x", "t", "/s", "http://d", 500}.letter(b)
	var stored, bare time.Duration
	i := 0
	for b.Loop() {
		i++
		l.EventID = fmt.Sprint(i)
		start := time.Now()
		if _, ok, err := s.Add(ctx, l); err != nil || !ok {
			b.Fatalf("add: %v %v", ok, err)
		}
		stored += time.Since(start)

		start = time.Now()
		if err := c.XAdd(ctx, &redis.XAddArgs{Stream: "bench:bare", MaxLen: 10000, Approx: true, Values: []any{
			"type", l.EventType, "source", l.Source, "id", l.EventID, "dest", l.Dest, "code", "500",
			"event", string(l.Event),
		}}).Err(); err != nil {
			b.Fatal(err)
		}
		bare += time.Since(start)
	}
	b.ReportMetric(float64(stored.Microseconds())/float64(b.N), "µs/add")
	b.ReportMetric(float64(bare.Microseconds())/float64(b.N), "µs/bare-xadd")
	b.ReportMetric(float64(stored)/float64(bare), "add/bare")
}
