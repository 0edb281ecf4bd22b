package broker

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// commandLog is a go-redis hook recording the name of every command sent, alone or in a
// pipeline.
type commandLog struct {
	mu    sync.Mutex
	names []string
}

func (l *commandLog) add(cmds ...redis.Cmder) {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, c := range cmds {
		l.names = append(l.names, strings.ToLower(c.Name()))
	}
}

// since counts the commands of each name sent after the first n.
func (l *commandLog) since(n int) map[string]int {
	l.mu.Lock()
	defer l.mu.Unlock()
	counts := map[string]int{}
	for _, name := range l.names[n:] {
		counts[name]++
	}
	return counts
}

func (l *commandLog) len() int {
	l.mu.Lock()
	defer l.mu.Unlock()
	return len(l.names)
}

func (l *commandLog) DialHook(next redis.DialHook) redis.DialHook { return next }

func (l *commandLog) ProcessHook(next redis.ProcessHook) redis.ProcessHook {
	return func(ctx context.Context, cmd redis.Cmder) error { l.add(cmd); return next(ctx, cmd) }
}

func (l *commandLog) ProcessPipelineHook(next redis.ProcessPipelineHook) redis.ProcessPipelineHook {
	return func(ctx context.Context, cmds []redis.Cmder) error { l.add(cmds...); return next(ctx, cmds) }
}

// TestASingleTriggerReadsInOneRoundTrip: a stream with one Trigger that has read all there is
// waits with its blocking group read, so each event arriving alone is read in one round trip
// (XREADGROUP), with no XREAD to learn that the stream grew and no read script after it; every
// event is still delivered once and acknowledged.
func TestASingleTriggerReadsInOneRoundTrip(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	log := &commandLog{}
	rdb.AddHook(log)
	ctx := context.Background()
	sub := newCapture(t, 202, "")
	trig := &Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: addressable(t, sub.URL), ReplyURL: "http://127.0.0.1:1/ns/b"}
	stream := StreamKey("ns", "b")
	if err := EnsureGroup(ctx, rdb, stream, trig.Group()); err != nil {
		t.Fatal(err)
	}
	startConsumer(t, rdb, trig, ConsumerOptions{Block: 5 * time.Second, RedeliverAfter: time.Hour})
	send := func(i int) {
		t.Helper()
		if err := rdb.XAdd(ctx, &redis.XAddArgs{Stream: stream, Values: typedFields(t, fmt.Sprint(i), "t")}).Err(); err != nil {
			t.Fatal(err)
		}
		deadline := time.Now().Add(10 * time.Second)
		for len(sub.received()) < i+1 {
			if time.Now().After(deadline) {
				t.Fatalf("event %d not delivered within 10s", i)
			}
			time.Sleep(5 * time.Millisecond)
		}
	}
	send(0) // the consumer has read its history and waits for new entries
	time.Sleep(100 * time.Millisecond)
	before := log.len()
	const events = 5
	for i := 1; i <= events; i++ {
		send(i)
		time.Sleep(20 * time.Millisecond) // it waits again before the next one arrives
	}
	counts := log.since(before)
	// Test-side XADDs are counted too.
	if counts["xread"] != 0 || counts["evalsha"] != 0 || counts["eval"] != 0 {
		t.Errorf("commands for %d lone events: %v; want no XREAD and no read script, only XREADGROUP", events, counts)
	}
	if n := counts["xreadgroup"]; n < events {
		t.Errorf("%d XREADGROUP for %d lone events, want one each: %v", n, events, counts)
	}
	if n := len(sub.received()); n != events+1 {
		t.Errorf("subscriber received %d events, want %d", n, events+1)
	}
	deadline := time.Now().Add(10 * time.Second)
	for {
		pending, err := rdb.XPending(ctx, stream, trig.Group()).Result()
		if err != nil {
			t.Fatal(err)
		}
		if pending.Count == 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d entries still pending, want all acknowledged", pending.Count)
		}
		time.Sleep(10 * time.Millisecond)
	}
}

// TestRoundsLeaveASoleReadAlone: while a member's blocking group read is out, rounds do not
// read its group (the read was sized by the room in its queue, which a round would give away a
// second time, and the reader would block handing the surplus over), and a round that ran
// meanwhile leaves it behind once its read is back, because the round's position does not hold
// for it.
func TestRoundsLeaveASoleReadAlone(t *testing.T) {
	newMember := func(reading, behind bool) *member {
		return &member{queue: make(chan readEntry, 4), cursor: ">", reading: reading, behind: behind}
	}
	for _, tc := range []struct {
		name           string
		members        []*member
		wantRead       []int // indexes of the members a round reads
		wantOverlapped bool  // of members[0]
	}{
		{name: "alone and reading", members: []*member{newMember(true, true)}},
		{name: "reading, another joined", members: []*member{newMember(true, false), newMember(false, true)}, wantRead: []int{1}, wantOverlapped: true},
		{name: "reading, nothing else to read", members: []*member{newMember(true, false), newMember(false, false)}},
		{name: "its read is back", members: []*member{newMember(false, true), newMember(false, false)}, wantRead: []int{0, 1}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := &streamReader{filtered: map[string]*filteredAcks{}, members: tc.members}
			reqs, _, _ := r.plan()
			var read []int
			for _, q := range reqs {
				for i, m := range tc.members {
					if q.m == m {
						read = append(read, i)
					}
				}
			}
			if fmt.Sprint(read) != fmt.Sprint(tc.wantRead) {
				t.Errorf("a round reads members %v, want %v", read, tc.wantRead)
			}
			if got := tc.members[0].overlapped; got != tc.wantOverlapped {
				t.Errorf("overlapped = %t, want %t", got, tc.wantOverlapped)
			}
		})
	}
}

// TestASoleReadBackAfterARoundIsBehind: a blocking group read that comes back with fewer
// entries than it asked for leaves its member caught up, unless a round ran while it was out.
func TestASoleReadBackAfterARoundIsBehind(t *testing.T) {
	for _, tc := range []struct {
		name       string
		overlapped bool
		wantBehind bool
	}{
		{name: "no round meanwhile", overlapped: false, wantBehind: false},
		{name: "a round meanwhile", overlapped: true, wantBehind: true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m := &member{queue: make(chan readEntry, 4), cursor: ">", reading: true, overlapped: tc.overlapped}
			r := &streamReader{filtered: map[string]*filteredAcks{}, members: []*member{m}}
			r.takeSoleRead(context.Background(), &readRequest{m: m, cursor: ">", count: 4})
			if m.reading || m.overlapped {
				t.Errorf("after the read: reading %t, overlapped %t; want both false", m.reading, m.overlapped)
			}
			if m.behind != tc.wantBehind {
				t.Errorf("behind = %t, want %t", m.behind, tc.wantBehind)
			}
		})
	}
}
