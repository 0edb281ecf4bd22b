package deadletter

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"sync"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// fakeBroker records the events it receives. It answers status, and once hangAfter events were
// accepted it stops answering (the request blocks until the test ends), like a broker that
// stalls mid-redrive.
type fakeBroker struct {
	srv       *httptest.Server
	status    int
	hangAfter int // 0: never hang

	mu       sync.Mutex
	accepted map[string]int // event id → times answered 2xx
	received []received
	hanging  chan struct{} // closed when the first request hangs
	release  chan struct{}
}

type received struct {
	id, redrive string
	errorExt    bool
}

func newFakeBroker(t *testing.T, status, hangAfter int) *fakeBroker {
	b := &fakeBroker{status: status, hangAfter: hangAfter, accepted: map[string]int{},
		hanging: make(chan struct{}), release: make(chan struct{})}
	b.srv = httptest.NewServer(http.HandlerFunc(b.serve))
	t.Cleanup(func() { close(b.release); b.srv.Close() })
	return b
}

func (b *fakeBroker) serve(w http.ResponseWriter, r *http.Request) {
	e, err := cehttp.NewEventFromHTTPRequest(r)
	if err != nil {
		http.Error(w, err.Error(), http.StatusBadRequest)
		return
	}
	_, errExt := e.Extensions()[ExtErrorDest]
	b.mu.Lock()
	b.received = append(b.received, received{id: e.ID(), redrive: fmt.Sprint(e.Extensions()[ExtRedrive]), errorExt: errExt})
	total := 0
	for _, n := range b.accepted {
		total += n
	}
	if b.hangAfter > 0 && total >= b.hangAfter {
		select {
		case <-b.hanging:
		default:
			close(b.hanging)
		}
		b.mu.Unlock()
		<-b.release
		return
	}
	if b.status/100 == 2 {
		b.accepted[e.ID()]++
	}
	b.mu.Unlock()
	w.WriteHeader(b.status)
}

func (b *fakeBroker) stopHanging() {
	b.mu.Lock()
	defer b.mu.Unlock()
	b.hangAfter = 0
}

func (b *fakeBroker) snapshot() (map[string]int, []received) {
	b.mu.Lock()
	defer b.mu.Unlock()
	acc := make(map[string]int, len(b.accepted))
	for k, v := range b.accepted {
		acc[k] = v
	}
	return acc, append([]received(nil), b.received...)
}

func sender(t testing.TB, url string, timeout time.Duration) *sink.Sender {
	t.Helper()
	s, err := sink.New(url, timeout)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func seed(t testing.TB, s *Store, n int) {
	t.Helper()
	for i := range n {
		add(t, s, letterSpec{fmt.Sprintf("ev-%03d", i), "com.example.order", "/shop", "http://orders", 503})
	}
}

func TestRedriveSendsOriginalEventsAndRemovesAccepted(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	seed(t, s, 5)
	b := newFakeBroker(t, http.StatusAccepted, 0)
	letters, err := s.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}

	rep, err := Redrive(ctx, s, sender(t, b.srv.URL, 5*time.Second), letters, RedriveOptions{})

	if err != nil {
		t.Fatal(err)
	}
	if rep.Accepted != 5 || rep.Failed != 0 || rep.Skipped != 0 {
		t.Errorf("report = %+v, want 5 accepted", rep)
	}
	acc, recv := b.snapshot()
	for i := range 5 {
		if id := fmt.Sprintf("ev-%03d", i); acc[id] != 1 {
			t.Errorf("event %s accepted %d times, want 1", id, acc[id])
		}
	}
	for _, r := range recv {
		if r.redrive != "1" || r.errorExt {
			t.Errorf("event %s sent with knfaasredrive=%s errorExtensions=%v, want 1 and none", r.id, r.redrive, r.errorExt)
		}
	}
	if left, _ := s.List(ctx, Filter{}); len(left) != 0 {
		t.Errorf("%d letters left after an accepted redrive", len(left))
	}
}

func TestRedriveToMissingBrokerKeepsLetters(t *testing.T) {
	refused := func(t *testing.T) string {
		l, err := net.Listen("tcp", "127.0.0.1:0")
		if err != nil {
			t.Fatal(err)
		}
		addr := l.Addr().String()
		l.Close()
		return "http://" + addr + "/knfaas/default"
	}
	tests := []struct {
		name   string
		broker func(t *testing.T) string
	}{
		{"broker answers 404", func(t *testing.T) string { return newFakeBroker(t, http.StatusNotFound, 0).srv.URL }},
		{"broker answers 500", func(t *testing.T) string { return newFakeBroker(t, http.StatusInternalServerError, 0).srv.URL }},
		{"connection refused", refused},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			s, _ := newStore(t, Options{})
			ctx := context.Background()
			seed(t, s, 3)
			letters, _ := s.List(ctx, Filter{})

			rep, err := Redrive(ctx, s, sender(t, tc.broker(t), 2*time.Second), letters, RedriveOptions{})

			if !errors.Is(err, ErrNotAccepted) {
				t.Fatalf("err = %v, want ErrNotAccepted", err)
			}
			if rep.Failed != 1 || rep.Accepted != 0 {
				t.Errorf("report = %+v, want it to stop after the first failure", rep)
			}
			left, _ := s.List(ctx, Filter{})
			if len(left) != 3 {
				t.Fatalf("%d letters left, want all 3", len(left))
			}
			st := left[0].Redrive
			if st == nil || st.Attempts != 1 || st.LastError == "" || !st.LeaseUntil.IsZero() {
				t.Errorf("first letter's redrive state = %+v, want 1 attempt, an error, no lease", st)
			}
			if left[1].Redrive != nil {
				t.Errorf("second letter was touched: %+v", left[1].Redrive)
			}
			// The idempotency key is back: the same dead letter arriving again is a duplicate.
			if _, stored, _ := s.Add(ctx, letterSpec{"ev-000", "com.example.order", "/shop", "http://orders", 503}.letter(t)); stored {
				t.Error("a failed redrive lost the letter's idempotency key")
			}
		})
	}
}

func TestRedrivenEventFailingAgainIsStoredAgain(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	spec := letterSpec{"ev-1", "t", "/s", "http://d", 500}
	ids := add(t, s, spec)

	// Claimed = about to be sent; the broker may dead-letter it again before we hear back.
	if res, attempts, _, err := s.Claim(ctx, ids[0], time.Minute); err != nil || res != Claimed || attempts != 1 {
		t.Fatalf("claim = %v %d %v", res, attempts, err)
	}
	_, stored, err := s.Add(ctx, spec.letter(t))

	if err != nil || !stored {
		t.Errorf("the redriven event's new dead letter: stored=%v err=%v, want stored", stored, err)
	}
	if res, _, _, _ := s.Claim(ctx, ids[0], time.Minute); res != Busy {
		t.Errorf("second claim under lease = %v, want Busy", res)
	}
}

// TestRedriveResumesAfterKill kills a redrive process while the broker hangs on one event, then
// resumes: every letter is accepted exactly once and none is left.
func TestRedriveResumesAfterKill(t *testing.T) {
	const n, hangAfter = 20, 7
	srv := redistest.Start(t, redistest.Options{AOF: true})
	s := NewStore(srv.Client(), Options{})
	ctx := context.Background()
	seed(t, s, n)
	b := newFakeBroker(t, http.StatusAccepted, hangAfter)

	cmd := exec.Command(os.Args[0], "-test.run=^TestRedriveHelperProcess$")
	cmd.Env = append(os.Environ(), "KNFAAS_TEST_REDRIVE_HELPER=1", "REDIS_URL="+srv.URL(), "BROKER_URL="+b.srv.URL)
	cmd.Stdout, cmd.Stderr = os.Stderr, os.Stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	select {
	case <-b.hanging:
	case <-time.After(30 * time.Second):
		_ = cmd.Process.Kill()
		t.Fatal("the redrive process never reached the hanging broker")
	}
	_ = cmd.Process.Kill() // SIGKILL: no release, no cleanup
	_ = cmd.Wait()

	left, err := s.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(left) != n-hangAfter {
		t.Fatalf("%d letters left after the kill, want %d", len(left), n-hangAfter)
	}
	inFlight := left[0]
	if inFlight.Redrive == nil || inFlight.Redrive.Attempts != 1 || inFlight.Redrive.LeaseUntil.IsZero() {
		t.Fatalf("in-flight letter state = %+v, want 1 attempt under lease", inFlight.Redrive)
	}
	// A resume inside the lease leaves the in-flight letter alone (its sender might be alive).
	b.stopHanging()
	rep, err := Redrive(ctx, s, sender(t, b.srv.URL, 5*time.Second), left[:1], RedriveOptions{})
	if err != nil || rep.Skipped != 1 {
		t.Fatalf("resume under lease: %+v %v, want the letter skipped", rep, err)
	}
	time.Sleep(time.Until(inFlight.Redrive.LeaseUntil) + 10*time.Millisecond)

	left, _ = s.List(ctx, Filter{})
	rep, err = Redrive(ctx, s, sender(t, b.srv.URL, 5*time.Second), left, RedriveOptions{})

	if err != nil {
		t.Fatal(err)
	}
	if rep.Accepted != n-hangAfter {
		t.Errorf("resume accepted %d, want %d", rep.Accepted, n-hangAfter)
	}
	acc, recv := b.snapshot()
	for i := range n {
		if id := fmt.Sprintf("ev-%03d", i); acc[id] != 1 {
			t.Errorf("event %s accepted %d times, want exactly 1", id, acc[id])
		}
	}
	var sends []string
	for _, r := range recv {
		if r.id == inFlight.EventID {
			sends = append(sends, r.redrive)
		} else if r.redrive != "1" {
			t.Errorf("event %s sent with knfaasredrive=%s, want 1", r.id, r.redrive)
		}
	}
	if fmt.Sprint(sends) != "[1 2]" {
		t.Errorf("in-flight event sent with knfaasredrive %v, want [1 2] (hung, then resumed)", sends)
	}
	if len(recv) != n+1 {
		t.Errorf("broker received %d sends, want %d (each letter once, the hung one twice)", len(recv), n+1)
	}
	if left, _ := s.List(ctx, Filter{}); len(left) != 0 {
		t.Errorf("%d letters left after resuming", len(left))
	}
}

// TestRedriveHelperProcess is the redrive process killed by TestRedriveResumesAfterKill.
func TestRedriveHelperProcess(t *testing.T) {
	if os.Getenv("KNFAAS_TEST_REDRIVE_HELPER") != "1" {
		t.Skip("helper process for TestRedriveResumesAfterKill")
	}
	c, err := redisconn.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	s := NewStore(c, Options{})
	ctx := context.Background()
	letters, err := s.List(ctx, Filter{})
	if err != nil {
		t.Fatal(err)
	}
	// The send never times out (the broker hangs until the kill); a short lease keeps the
	// test's wait for the resume short.
	_, err = Redrive(ctx, s, sender(t, os.Getenv("BROKER_URL"), time.Hour), letters, RedriveOptions{Lease: time.Second})
	t.Fatalf("the helper should have been killed while hanging, got %v", err)
}

// TestRedriveMatchingPagesWhileRemoving redrives a backlog larger than several index pages
// while each accepted letter is removed under the scan: no letter may be skipped.
func TestRedriveMatchingPagesWhileRemoving(t *testing.T) {
	s, _ := newStore(t, Options{})
	ctx := context.Background()
	const n = 3*listPage + 11
	for i := range n {
		typ := "redrive.me"
		if i%3 == 0 {
			typ = "leave.me"
		}
		add(t, s, letterSpec{fmt.Sprintf("ev-%04d", i), typ, "/s", "http://d", 500})
	}
	b := newFakeBroker(t, http.StatusAccepted, 0)

	rep, err := RedriveMatching(ctx, s, sender(t, b.srv.URL, 5*time.Second), Filter{Type: "redrive.me"}, RedriveOptions{})

	if err != nil {
		t.Fatal(err)
	}
	want := n - (n+2)/3
	acc, _ := b.snapshot()
	if rep.Accepted != want || len(acc) != want {
		t.Errorf("accepted %d (broker saw %d distinct), want %d", rep.Accepted, len(acc), want)
	}
	for id, k := range acc {
		if k != 1 {
			t.Errorf("event %s accepted %d times", id, k)
		}
	}
	left, _ := s.List(ctx, Filter{})
	if len(left) != (n+2)/3 {
		t.Errorf("%d letters left, want the %d of type leave.me", len(left), (n+2)/3)
	}
	for _, l := range left {
		if l.EventType != "leave.me" {
			t.Errorf("letter %s of type %s left", l.EventID, l.EventType)
		}
	}
}
