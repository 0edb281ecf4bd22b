package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func quietStore(rdb redis.UniversalClient, opts ...StoreOption) *Store {
	return NewStore(rdb, append([]StoreOption{WithLogger(slog.New(slog.NewTextHandler(io.Discard, nil)))}, opts...)...)
}

// TestAppendScriptDeadline calls the append script directly: once Redis' clock is past the
// deadline it refuses and stores nothing.
func TestAppendScriptDeadline(t *testing.T) {
	cases := map[string]struct {
		deadline time.Duration // from now
		stored   bool
	}{
		"deadline passed": {deadline: -time.Second, stored: false},
		"deadline ahead":  {deadline: time.Minute, stored: true},
	}
	for backend, start := range storeBackends {
		t.Run(backend, func(t *testing.T) {
			_, client := start(t)
			rdb := client()
			ctx := context.Background()
			for name, c := range cases {
				t.Run(name, func(t *testing.T) {
					stream := StreamKey("ns", strings.ReplaceAll(name, " ", "-"))
					deadline := time.Now().Add(c.deadline).UnixMicro()
					answers, err := appendScript.Run(ctx, rdb, []string{stream, appendedKey(stream, time.UnixMicro(deadline))}, 60000, deadline, "t", 4, eventField, "x", "v", "2").StringSlice()
					if err != nil || len(answers) != 1 {
						t.Fatalf("script answered %q, %v; want one answer", answers, err)
					}
					id := answers[0]
					n := rdb.XLen(ctx, stream).Val()
					if !c.stored {
						if !strings.HasPrefix(id, errLatePrefix) {
							t.Fatalf("script answered %q; want a %s refusal", id, errLatePrefix)
						}
						if n != 0 {
							t.Fatalf("the refused script stored %d entries", n)
						}
						return
					}
					if err != nil || n != 1 {
						t.Fatalf("script answered %q, %v and the stream holds %d entries; want one entry", id, err, n)
					}
					msgs, _ := rdb.XRange(ctx, stream, "-", "+").Result()
					if got := msgs[0].Values; got[eventField] != "x" || got["v"] != "2" || msgs[0].ID != id {
						t.Fatalf("stored %s %v; want %s with both fields", msgs[0].ID, got, id)
					}
				})
			}
		})
	}
}

// TestAppendRedisStopped appends while redis-server is stopped with SIGSTOP: an append that
// was sent gets neither its reply nor its lookup answered and fails with
// ErrAppendOutcomeUnknown, one still queued behind the stuck pipelines is never sent and fails
// with ErrAppendTimeout, both bounded by the timeouts; none of them is stored once Redis
// resumes, and appends after that succeed.
func TestAppendRedisStopped(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client() // go-redis defaults: 3 s read timeout, 3 retries
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	const timeout = time.Second
	store := quietStore(rdb, WithAppendTimeout(timeout), WithClockMargin(300*time.Millisecond), WithLookupTimeout(300*time.Millisecond))
	go store.Run(ctx, 4)
	stream := StreamKey("ns", "stopped")
	if _, err := store.Append(ctx, stream, eventField, "before"); err != nil {
		t.Fatal(err)
	}

	srv.Stop()
	stopped := time.Now()
	const n = 40
	errs := make(chan error, n)
	var slowest atomic.Int64
	for i := 0; i < n; i++ {
		go func(i int) {
			_, err := store.Append(ctx, stream, eventField, fmt.Sprint("during-", i))
			if d := int64(time.Since(stopped)); d > slowest.Load() {
				slowest.Store(d)
			}
			errs <- err
		}(i)
	}
	watchdog := time.After(30 * time.Second) // only to end the test; Append is bounded by its timeout
	unknown, notSent := 0, 0
	for i := 0; i < n; i++ {
		select {
		case err := <-errs:
			switch {
			case errors.Is(err, ErrAppendOutcomeUnknown):
				unknown++
			case errors.Is(err, ErrAppendTimeout):
				notSent++
			default:
				srv.Cont()
				t.Fatalf("append while redis was stopped returned %v; want ErrAppendOutcomeUnknown or ErrAppendTimeout", err)
			}
		case <-watchdog:
			srv.Cont()
			t.Fatalf("appends while redis was stopped had not returned after 30s (timeout %s)", timeout)
		}
	}
	t.Logf("%d appends while redis was stopped failed (%d outcome unknown, %d never sent), the last %s after SIGSTOP (timeout %s)", n, unknown, notSent, time.Duration(slowest.Load()), timeout)

	srv.Cont()
	for i := 0; i < 5; i++ {
		if _, err := store.Append(ctx, stream, eventField, fmt.Sprint("after-", i)); err != nil {
			t.Fatalf("append %d after redis resumed: %v", i, err)
		}
	}
	// Wait until Redis has read every request sent while it was stopped.
	for deadline := time.Now().Add(10 * time.Second); ; {
		clients, err := rdb.ClientList(ctx).Result()
		if err != nil {
			t.Fatal(err)
		}
		if allZeroQbuf(clients) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("redis still has unread requests after 10s:\n%s", clients)
		}
		time.Sleep(20 * time.Millisecond)
	}
	msgs, err := rdb.XRange(ctx, stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	var got []string
	for _, m := range msgs {
		got = append(got, fmt.Sprint(m.Values[eventField]))
	}
	want := "before after-0 after-1 after-2 after-3 after-4"
	if strings.Join(got, " ") != want {
		t.Fatalf("the stream holds %v; want %s: appends that failed while redis was stopped must never be stored", got, want)
	}
}

func allZeroQbuf(clients string) bool {
	for _, line := range strings.Split(strings.TrimSpace(clients), "\n") {
		if strings.Contains(line, "cmd=client|list") {
			continue // the connection asking
		}
		for _, f := range strings.Fields(line) {
			if strings.HasPrefix(f, "qbuf=") && f != "qbuf=0" {
				return false
			}
		}
	}
	return true
}

// holdProxy forwards connections to a Redis server until a client sends marker: from then on
// it holds everything that client sends, answering nothing as a hung server would, and counts
// how often marker was sent. Release forwards what it held and waits for Redis' answer.
type holdProxy struct {
	ln      net.Listener
	backend string
	marker  []byte
	sent    atomic.Int64
	mu      sync.Mutex
	held    []byte
}

func startHoldProxy(t *testing.T, backend string, marker string) *holdProxy {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &holdProxy{ln: ln, backend: backend, marker: []byte(marker)}
	t.Cleanup(func() { _ = ln.Close() })
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go p.serve(c)
		}
	}()
	return p
}

func (p *holdProxy) serve(c net.Conn) {
	defer c.Close()
	b, err := net.Dial("tcp", p.backend)
	if err != nil {
		return
	}
	defer b.Close()
	go func() { _, _ = io.Copy(c, b) }()
	buf := make([]byte, 64<<10)
	holding := false
	for {
		n, err := c.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			if k := bytes.Count(chunk, p.marker); k > 0 {
				p.sent.Add(int64(k))
				holding = true
			}
			if holding {
				p.mu.Lock()
				p.held = append(p.held, chunk...)
				p.mu.Unlock()
			} else if _, err := b.Write(chunk); err != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// release sends what was held to Redis on a new connection and reads its answer.
func (p *holdProxy) release(t *testing.T) string {
	p.mu.Lock()
	held := p.held
	p.held = nil
	p.mu.Unlock()
	b, err := net.Dial("tcp", p.backend)
	if err != nil {
		t.Fatal(err)
	}
	defer b.Close()
	if _, err := b.Write(held); err != nil {
		t.Fatal(err)
	}
	_ = b.SetReadDeadline(time.Now().Add(10 * time.Second))
	answer := make([]byte, 4096)
	n, err := b.Read(answer)
	if err != nil {
		t.Fatalf("reading redis' answer to the held requests: %v", err)
	}
	return string(answer[:n])
}

// TestAppendNeverSentTwice appends through a connection that hangs once the append is sent:
// go-redis must not resend it after its read timeout (a resent XADD stores the event twice),
// the append fails at its deadline, and when the held request finally reaches Redis it is
// refused.
func TestAppendNeverSentTwice(t *testing.T) {
	m := miniredis.RunT(t)
	const hang = "hang-marker"
	stream := StreamKey("ns", hang)
	// The stream's key as an argument of its own: the append sends it, its lookup does not.
	proxy := startHoldProxy(t, m.Addr(), "\n"+stream+"\r\n")
	// go-redis defaults except a short read timeout: a pipeline that times out is retried
	// MaxRetries (3) times unless it says otherwise.
	rdb := redis.NewClient(&redis.Options{Addr: proxy.ln.Addr().String(), ReadTimeout: 200 * time.Millisecond, MinRetryBackoff: time.Millisecond, MaxRetryBackoff: 2 * time.Millisecond})
	defer rdb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := quietStore(rdb, WithAppendTimeout(time.Second), WithClockMargin(200*time.Millisecond))
	go store.Run(ctx, 1)
	if _, err := store.Append(ctx, StreamKey("ns", "warm"), eventField, "x"); err != nil {
		t.Fatal(err)
	}

	_, err := store.Append(ctx, stream, eventField, "x")
	if err == nil {
		t.Fatal("append through a hung connection succeeded")
	}
	if n := proxy.sent.Load(); n != 1 {
		t.Fatalf("the append was sent %d times; want once", n)
	}
	if !errors.Is(err, ErrAppendTimeout) {
		t.Fatalf("append through a hung connection returned %v; want ErrAppendTimeout (its lookup on another connection finds it not stored)", err)
	}
	answer := proxy.release(t)
	if !strings.Contains(answer, errLatePrefix) {
		t.Fatalf("redis answered %q to the late append; want a %s refusal", answer, errLatePrefix)
	}
	if m.Exists(stream) {
		t.Fatalf("the failed append was stored once it reached redis")
	}
}

// TestAppendAndRun checks what Append answers around Run's lifetime: once Run has returned it
// fails at once with ErrStoreStopped (it used to wait for its deadline), an append queued
// when Run's context ends is still sent, and without Run an append fails at its deadline.
// Nothing that failed is stored.
func TestAppendAndRun(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	stopped := func() context.Context {
		ctx, cancel := context.WithCancel(context.Background())
		cancel()
		return ctx
	}
	cases := map[string]struct {
		timeout time.Duration
		// before runs before the append, after once it was made; either may be nil.
		before, after func(s *Store)
		wantErr       error // nil: stored
		within        time.Duration
	}{
		"Run has returned: fails at once": {
			timeout: 5 * time.Second,
			before:  func(s *Store) { s.Run(stopped(), 2) },
			wantErr: ErrStoreStopped,
			within:  time.Second,
		},
		"queued when Run's context ends: sent by the drain": {
			timeout: 5 * time.Second,
			after:   func(s *Store) { time.Sleep(50 * time.Millisecond); s.Run(stopped(), 2) },
			within:  time.Second,
		},
		"Run never started: fails at its deadline": {
			timeout: 300 * time.Millisecond,
			wantErr: ErrAppendTimeout,
			within:  time.Second,
		},
	}
	for name, tc := range cases {
		t.Run(name, func(t *testing.T) {
			store := quietStore(rdb, WithAppendTimeout(tc.timeout), WithClockMargin(100*time.Millisecond))
			stream := StreamKey("ns", "run-"+strings.ReplaceAll(name, " ", "-"))
			if tc.before != nil {
				tc.before(store)
			}
			if tc.after != nil {
				go tc.after(store)
			}
			start := time.Now()
			id, err := store.Append(context.Background(), stream, eventField, "x")
			if took := time.Since(start); took > tc.within {
				t.Errorf("Append took %s, want at most %s", took, tc.within)
			}
			n, xerr := rdb.XLen(context.Background(), stream).Result()
			if xerr != nil {
				t.Fatal(xerr)
			}
			if tc.wantErr != nil {
				if !errors.Is(err, tc.wantErr) {
					t.Fatalf("Append = %q, %v; want %v", id, err, tc.wantErr)
				}
				if n != 0 {
					t.Fatalf("the failed append was stored (%d entries)", n)
				}
				return
			}
			if err != nil || n != 1 {
				t.Fatalf("Append = %q, %v with %d entries stored; want it stored once", id, err, n)
			}
		})
	}
}

// TestAppendFields checks that Append stores a multi-field entry and refuses a field list
// that is not pairs.
func TestAppendFields(t *testing.T) {
	m := miniredis.RunT(t)
	rdb := redis.NewClient(&redis.Options{Addr: m.Addr()})
	defer rdb.Close()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	store := quietStore(rdb)
	go store.Run(ctx, 1)
	cases := map[string]struct {
		fields []any
		want   map[string]any
	}{
		"one field":    {fields: []any{eventField, []byte("data")}, want: map[string]any{eventField: "data"}},
		"three fields": {fields: []any{"v", "2", eventField, []byte{0, 1, 2}, "size", 3}, want: map[string]any{"v": "2", eventField: "\x00\x01\x02", "size": "3"}},
		"odd":          {fields: []any{eventField}},
		"none":         {},
	}
	for name, c := range cases {
		t.Run(name, func(t *testing.T) {
			stream := StreamKey("ns", strings.ReplaceAll(name, " ", "-"))
			id, err := store.Append(ctx, stream, c.fields...)
			if c.want == nil {
				if err == nil {
					t.Fatalf("append of %d fields succeeded; want an error", len(c.fields))
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			msgs, err := rdb.XRange(ctx, stream, id, id).Result()
			if err != nil || len(msgs) != 1 {
				t.Fatalf("reading %s: %v %v", id, msgs, err)
			}
			if fmt.Sprint(msgs[0].Values) != fmt.Sprint(c.want) {
				t.Fatalf("stored %v; want %v", msgs[0].Values, c.want)
			}
		})
	}
}

// TestAppendScriptGroup runs the append script once for a group of appends, as a pipeline does:
// each is judged on its own (one past its deadline refused, one Redis refuses answered with
// Redis' error, the others stored), and the ids of the stored ones, only those, are recorded
// under their tokens in the group's hash, which expires.
func TestAppendScriptGroup(t *testing.T) {
	for backend, start := range storeBackends {
		t.Run(backend, func(t *testing.T) {
			_, client := start(t)
			rdb := client()
			ctx := context.Background()
			stream := StreamKey("ns", "group")
			ahead := time.Now().Add(time.Minute)
			appended := appendedKey(stream, ahead)
			type item struct {
				name     string
				deadline time.Time
				fields   []any
				want     string // prefix of the answer; "" for an entry id
			}
			items := []item{
				{"in time", ahead, []any{eventField, "a"}, ""},
				{"late", time.Now().Add(-time.Second), []any{eventField, "b"}, errLatePrefix},
				{"no fields", ahead, nil, errAppendPrefix},
				{"in time too", ahead, []any{eventField, "c"}, ""},
			}
			args := []any{60000}
			for _, it := range items {
				args = append(args, it.deadline.UnixMicro(), it.name, len(it.fields))
				args = append(args, it.fields...)
			}
			answers, err := appendScript.Run(ctx, rdb, []string{stream, appended}, args...).StringSlice()
			if err != nil || len(answers) != len(items) {
				t.Fatalf("script answered %q, %v; want %d answers", answers, err, len(items))
			}
			recorded, err := rdb.HGetAll(ctx, appended).Result()
			if err != nil {
				t.Fatal(err)
			}
			stored := 0
			for i, it := range items {
				a := answers[i]
				if it.want != "" {
					if !strings.HasPrefix(a, it.want) {
						t.Errorf("%s: answered %q; want %s…", it.name, a, it.want)
					}
					if _, ok := recorded[it.name]; ok {
						t.Errorf("%s: recorded though not stored", it.name)
					}
					continue
				}
				stored++
				if msgs, err := rdb.XRange(ctx, stream, a, a).Result(); err != nil || len(msgs) != 1 {
					t.Errorf("%s: answered id %q, which the stream does not hold (%v)", it.name, a, err)
				}
				if recorded[it.name] != a {
					t.Errorf("%s: recorded %q; want its id %q", it.name, recorded[it.name], a)
				}
			}
			if n := rdb.XLen(ctx, stream).Val(); n != int64(stored) {
				t.Errorf("the stream holds %d entries; want %d", n, stored)
			}
			if ttl := rdb.PTTL(ctx, appended).Val(); ttl <= 0 || ttl > time.Minute {
				t.Errorf("the hash expires in %s; want within the minute given", ttl)
			}
		})
	}
}
