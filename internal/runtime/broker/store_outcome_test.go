package broker

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/runtime/metrics"
)

// replyGate is a TCP proxy in front of a Redis server. It forwards requests at once and
// replies only while it is open: closed, it holds every reply back (Redis busy, a reply stuck
// in a socket buffer), for as long as the test wants, which is longer than any margin. It
// counts the requests that hold marker.
type replyGate struct {
	ln      net.Listener
	backend string
	marker  []byte
	seen    atomic.Int64

	mu     sync.Mutex
	cond   *sync.Cond
	closed bool
	conns  []net.Conn
}

func startReplyGate(t *testing.T, backend, marker string) *replyGate {
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	g := &replyGate{ln: ln, backend: backend, marker: []byte(marker)}
	g.cond = sync.NewCond(&g.mu)
	t.Cleanup(func() {
		_ = ln.Close()
		g.open()
		g.mu.Lock()
		for _, c := range g.conns {
			_ = c.Close()
		}
		g.mu.Unlock()
	})
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			go g.serve(c)
		}
	}()
	return g
}

func (g *replyGate) addr() string { return g.ln.Addr().String() }

// close holds back replies from now on.
func (g *replyGate) close() {
	g.mu.Lock()
	g.closed = true
	g.mu.Unlock()
}

// open forwards the replies held back and every reply from now on.
func (g *replyGate) open() {
	g.mu.Lock()
	g.closed = false
	g.cond.Broadcast()
	g.mu.Unlock()
}

func (g *replyGate) serve(c net.Conn) {
	b, err := net.Dial("tcp", g.backend)
	if err != nil {
		_ = c.Close()
		return
	}
	g.mu.Lock()
	g.conns = append(g.conns, c, b)
	g.mu.Unlock()
	go func() { // replies: only through an open gate
		defer c.Close()
		buf := make([]byte, 64<<10)
		for {
			n, err := b.Read(buf)
			if n > 0 {
				g.mu.Lock()
				for g.closed {
					g.cond.Wait()
				}
				g.mu.Unlock()
				if _, werr := c.Write(buf[:n]); werr != nil {
					return
				}
			}
			if err != nil {
				return
			}
		}
	}()
	defer b.Close()
	buf := make([]byte, 64<<10)
	var tail []byte // the end of the previous read, for a marker split across reads
	for {
		n, err := c.Read(buf)
		if n > 0 {
			window := append(tail, buf[:n]...)
			g.seen.Add(int64(bytes.Count(window, g.marker)))
			if keep := len(g.marker) - 1; len(window) > keep {
				tail = append([]byte(nil), window[len(window)-keep:]...)
			} else {
				tail = window
			}
			if _, werr := b.Write(buf[:n]); werr != nil {
				return
			}
		}
		if err != nil {
			return
		}
	}
}

// appendOutcome is what one Append answered.
type appendOutcome struct {
	id  string
	err error
}

// outcomeFixture is a store on a fresh redis-server behind a replyGate that counts lookups.
type outcomeFixture struct {
	srv     *redistest.Server
	gate    *replyGate
	direct  *redis.Client // to the server, not through the gate
	store   *Store
	lookups *prometheus.CounterVec
	stop    func() // stops the store and waits until every pipeline has its answer
}

func newOutcomeFixture(t *testing.T, writers int, opts ...StoreOption) *outcomeFixture {
	srv := redistest.Start(t, redistest.Options{})
	direct := srv.Client()
	ctx := context.Background()
	// Both scripts are cached, so nothing waits for a NOSCRIPT answer.
	for _, s := range []*redis.Script{appendScript, lookupScript} {
		if err := s.Load(ctx, direct).Err(); err != nil {
			t.Fatal(err)
		}
	}
	gate := startReplyGate(t, srv.Addr(), lookupScript.Hash())
	// A read timeout far beyond the test's, so that a pipeline waits for its held reply.
	rdb := redis.NewClient(&redis.Options{Addr: gate.addr(), ReadTimeout: time.Minute, PoolSize: 4 * writers})
	t.Cleanup(func() { _ = rdb.Close() })
	// Every connection of the pool is set up now: a new one waits for Redis' answers to its
	// handshake, which a closed gate holds back.
	// Pipelines have a pool of their own.
	var warm sync.WaitGroup
	for i := 0; i < 4*writers; i++ {
		warm.Add(2)
		go func() { // blocks 0.1 s in Redis: each takes a connection of its own
			defer warm.Done()
			_ = rdb.Do(ctx, "blpop", "knfaas:test:nothing", "0.1").Err()
		}()
		go func() {
			defer warm.Done()
			p := rdb.Pipeline()
			p.Do(ctx, "blpop", "knfaas:test:nothing", "0.1")
			_, _ = p.Exec(ctx)
		}()
	}
	warm.Wait()
	lookups := prometheus.NewCounterVec(prometheus.CounterOpts{Name: "lookups"}, []string{"result"})
	store := quietStore(rdb, opts...)
	store.CountLookups(lookups)
	runCtx, cancel := context.WithCancel(ctx)
	ran := make(chan struct{})
	go func() { store.Run(runCtx, writers); close(ran) }()
	stop := func() { cancel(); <-ran }
	t.Cleanup(func() { gate.open(); srv.Cont(); stop() })
	return &outcomeFixture{srv: srv, gate: gate, direct: direct, store: store, lookups: lookups, stop: stop}
}

// appendAll starts n appends of events ev-0 … ev-(n-1) to stream. It returns their outcomes,
// valid once wait has returned, and the count of those that have returned.
func (f *outcomeFixture) appendAll(stream string, n int) ([]appendOutcome, func() int, func()) {
	out := make([]appendOutcome, n)
	var returned atomic.Int64
	var wg sync.WaitGroup
	for i := 0; i < n; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			id, err := f.store.Append(context.Background(), stream, eventField, fmt.Sprint("ev-", i))
			out[i] = appendOutcome{id, err}
			returned.Add(1)
		}(i)
	}
	return out, func() int { return int(returned.Load()) }, wg.Wait
}

// waitFor polls cond; the watchdog only ends a test that would otherwise hang.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	for watchdog := time.Now().Add(20 * time.Second); !cond(); time.Sleep(5 * time.Millisecond) {
		if time.Now().After(watchdog) {
			t.Fatalf("gave up waiting (20 s) until %s", what)
		}
	}
}

// storedCopies counts the entries of stream per event.
func storedCopies(t *testing.T, rdb *redis.Client, stream string) map[string][]string {
	t.Helper()
	msgs, err := rdb.XRange(context.Background(), stream, "-", "+").Result()
	if err != nil {
		t.Fatal(err)
	}
	copies := map[string][]string{}
	for _, m := range msgs {
		ev := fmt.Sprint(m.Values[eventField])
		copies[ev] = append(copies[ev], m.ID)
	}
	return copies
}

// TestAppendOutcomeIsTruthful appends while Redis' replies are held back or Redis is frozen,
// and checks the promise of Append's answers against the stream once everything has settled:
// an append that succeeded is stored exactly once under the id it answered, one that failed
// with ErrAppendTimeout is not stored, one whose outcome is unknown is stored at most once.
// The old store answered ErrAppendTimeout for appends whose reply was only late, though they
// were stored (and a sender's retry stored them twice).
func TestAppendOutcomeIsTruthful(t *testing.T) {
	const n = 24
	cases := []struct {
		name          string
		lookupTimeout time.Duration
		// fault starts the fault; heal ends it once every append has been looked up or has
		// returned (lookups counts the lookups sent, returned the appends that returned).
		fault func(f *outcomeFixture)
		heal  func(t *testing.T, f *outcomeFixture, lookups, returned func() int)
		// want checks the outcomes' kinds: stored, not stored, unknown.
		want func(t *testing.T, stored, notStored, unknown int)
	}{
		{
			name:          "replies held past the give-up, released once every append is looked up: stored",
			lookupTimeout: 10 * time.Second,
			fault:         func(f *outcomeFixture) { f.gate.close() },
			heal: func(t *testing.T, f *outcomeFixture, lookups, returned func() int) {
				waitFor(t, "every append was looked up or had returned", func() bool { return lookups()+returned() >= n })
				f.gate.open()
			},
			want: func(t *testing.T, stored, notStored, unknown int) {
				if stored == 0 || unknown != 0 {
					t.Errorf("%d stored, %d not stored, %d unknown; want the appends whose scripts ran stored (the lookup finds them) and none unknown", stored, notStored, unknown)
				}
			},
		},
		{
			name:          "redis frozen past the deadlines, resumed once every append is looked up: not stored",
			lookupTimeout: 10 * time.Second,
			fault:         func(f *outcomeFixture) { f.srv.Stop() },
			heal: func(t *testing.T, f *outcomeFixture, lookups, returned func() int) {
				waitFor(t, "every append was looked up or had returned", func() bool { return lookups()+returned() >= n })
				f.srv.Cont()
			},
			want: func(t *testing.T, stored, notStored, unknown int) {
				if notStored != n {
					t.Errorf("%d stored, %d not stored, %d unknown; want all %d not stored: redis ran every script after its deadline", stored, notStored, unknown, n)
				}
			},
		},
		{
			name:          "replies held until the lookups time out: outcome unknown",
			lookupTimeout: 300 * time.Millisecond,
			fault:         func(f *outcomeFixture) { f.gate.close() },
			heal: func(t *testing.T, f *outcomeFixture, _, returned func() int) {
				waitFor(t, "every append had returned", func() bool { return returned() >= n })
				f.gate.open()
			},
			want: func(t *testing.T, stored, notStored, unknown int) {
				if unknown == 0 || stored != 0 {
					t.Errorf("%d stored, %d not stored, %d unknown; want the appends sent to redis unknown (no reply, no lookup answered) and none stored", stored, notStored, unknown)
				}
			},
		},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newOutcomeFixture(t, n, WithAppendTimeout(time.Second), WithClockMargin(200*time.Millisecond), WithLookupTimeout(tc.lookupTimeout))
			stream := StreamKey("ns", "outcome")
			if _, err := f.store.Append(context.Background(), stream, eventField, "warm"); err != nil {
				t.Fatal(err)
			}
			lookupsBefore := f.gate.seen.Load()
			tc.fault(f)
			outcomes, returned, wait := f.appendAll(stream, n)
			tc.heal(t, f, func() int { return int(f.gate.seen.Load() - lookupsBefore) }, returned)
			wait()
			f.stop() // every pipeline has its answer: nothing reaches the stream any more

			copies := storedCopies(t, f.direct, stream)
			stored, notStored, unknown := 0, 0, 0
			for i, o := range outcomes {
				ev := fmt.Sprint("ev-", i)
				got := copies[ev]
				switch {
				case o.err == nil:
					stored++
					if len(got) != 1 || got[0] != o.id {
						t.Errorf("%s: Append answered stored as %s; the stream holds it %d times %v, want once under that id", ev, o.id, len(got), got)
					}
				case errors.Is(o.err, ErrAppendTimeout):
					notStored++
					if len(got) != 0 {
						t.Errorf("%s: Append answered %v (not stored), yet the stream holds it %v: a retry stores it twice", ev, o.err, got)
					}
				case errors.Is(o.err, ErrAppendOutcomeUnknown):
					unknown++
					if len(got) > 1 {
						t.Errorf("%s: outcome unknown, and the stream holds it %d times", ev, len(got))
					}
				default:
					t.Errorf("%s: Append answered %v; want stored, ErrAppendTimeout or ErrAppendOutcomeUnknown", ev, o.err)
				}
			}
			t.Logf("%d stored, %d not stored, %d unknown", stored, notStored, unknown)
			tc.want(t, stored, notStored, unknown)
			// Every lookup is counted by its result; a stored one answered success.
			counted := map[string]int{}
			for _, r := range []string{lookupStored, lookupNotStored, lookupUnknown} {
				counted[r] = int(testutil.ToFloat64(f.lookups.WithLabelValues(r)))
			}
			if counted[lookupStored] != stored || counted[lookupUnknown] != unknown || counted[lookupNotStored] > notStored {
				t.Errorf("lookups counted %v; want stored %d, unknown %d, not_stored at most %d", counted, stored, unknown, notStored)
			}
		})
	}
}

// TestIngressAnswersUnknownOutcomes posts an event to the ingress while its store cannot learn
// whether Redis stored it: held replies resolved by the lookup answer 202, a frozen Redis
// (scripts run after their deadline) 503 with Retry-After, and replies held past the lookup
// 504 with Retry-After and a message naming the event's id; never 503 for an event stored.
func TestIngressAnswersUnknownOutcomes(t *testing.T) {
	cases := []struct {
		name          string
		lookupTimeout time.Duration
		fault, heal   func(f *outcomeFixture)
		// healOnLookup runs heal once the lookup was sent (or the ingress answered), not only
		// once the ingress answered.
		healOnLookup bool
		wantCode     int
		wantStored   int
		wantBody     string
	}{
		{name: "reply held, lookup answered: 202", lookupTimeout: 10 * time.Second,
			fault: func(f *outcomeFixture) { f.gate.close() }, heal: func(f *outcomeFixture) { f.gate.open() }, healOnLookup: true,
			wantCode: http.StatusAccepted, wantStored: 1},
		{name: "redis frozen past the deadline: 503", lookupTimeout: 10 * time.Second,
			fault: func(f *outcomeFixture) { f.srv.Stop() }, heal: func(f *outcomeFixture) { f.srv.Cont() }, healOnLookup: true,
			wantCode: http.StatusServiceUnavailable, wantStored: 0, wantBody: "not stored"},
		{name: "reply and lookup held: 504", lookupTimeout: 300 * time.Millisecond,
			fault: func(f *outcomeFixture) { f.gate.close() }, heal: func(f *outcomeFixture) { f.gate.open() },
			wantCode: http.StatusGatewayTimeout, wantStored: 1, wantBody: "event unknown-outcome-1 (source /s): the outcome is unknown"},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			f := newOutcomeFixture(t, 2, WithAppendTimeout(time.Second), WithClockMargin(200*time.Millisecond), WithLookupTimeout(tc.lookupTimeout))
			m := metrics.New()
			in := NewIngress(f.store, quietLog(), m)
			in.Add("ns", "b", 0)
			lookupsBefore := f.gate.seen.Load()
			tc.fault(f)
			req := httptest.NewRequest("POST", "/ns/b", strings.NewReader(`{}`))
			req.Header.Set("Ce-Id", "unknown-outcome-1")
			req.Header.Set("Ce-Type", "t")
			req.Header.Set("Ce-Source", "/s")
			req.Header.Set("Ce-Specversion", "1.0")
			w := httptest.NewRecorder()
			answered := make(chan struct{})
			go func() { in.ServeHTTP(w, req); close(answered) }()
			if tc.healOnLookup {
				waitFor(t, "the event was looked up or answered", func() bool {
					select {
					case <-answered:
						return true
					default:
						return f.gate.seen.Load() > lookupsBefore
					}
				})
				tc.heal(f)
				<-answered
			} else {
				<-answered
				tc.heal(f)
			}
			f.stop()
			body, _ := io.ReadAll(w.Result().Body)
			if w.Code != tc.wantCode || !strings.Contains(string(body), tc.wantBody) {
				t.Fatalf("ingress answered %d %q; want %d with %q", w.Code, body, tc.wantCode, tc.wantBody)
			}
			if w.Code != http.StatusAccepted && w.Header().Get("Retry-After") == "" {
				t.Errorf("%d without Retry-After", w.Code)
			}
			if n := f.direct.XLen(context.Background(), StreamKey("ns", "b")).Val(); n != int64(tc.wantStored) {
				t.Errorf("the stream holds %d entries after the ingress answered %d; want %d", n, w.Code, tc.wantStored)
			}
		})
	}
}
