//go:build e2e

package main

import (
	"context"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/function/funcstart"
	mailer "github.com/knfaas/knfaas/internal/function/mail"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// holdingSender sends mails at once, except the first with subject "held", which it holds
// until released.
type holdingSender struct {
	mu      sync.Mutex
	sent    map[string]int
	held    chan string
	release chan struct{}
}

func (s *holdingSender) Send(_ context.Context, m *mailer.Mail) error {
	s.mu.Lock()
	s.sent[m.ID]++
	first := s.sent[m.ID] == 1
	s.mu.Unlock()
	if first && m.Subject == "held" {
		s.held <- m.ID
		<-s.release
	}
	return nil
}

// TestMailWhileRedisIsFrozen freezes the real redis-server (SIGSTOP) while a mail is being sent
// and requests arrive. The function uses the production Redis client (REDIS_URL, with its read
// timeout) and its listener (NewListener, as main serves it): each request is answered
// with a 5xx while Redis is still frozen, so the Broker retries it. After SIGCONT the Broker's
// retries are accepted and every mail is sent exactly once: the one sent during the freeze is
// recorded once Redis is back, not sent again when its lease runs out.
func TestMailWhileRedisIsFrozen(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	t.Setenv("REDIS_URL", srv.URL())
	t.Setenv("SMTP_URL", "smtp://127.0.0.1:1025?tls=none")
	rdb, err := redisconn.FromEnv()
	if err != nil {
		t.Fatal(err)
	}
	templates, err := mailer.Parse([]byte("templates:\n- {name: t, subject: '{{.subject}}', text: 'hello'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	var cfg Config
	if err := funcstart.ReadConfig("mail", &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Poll = 10 * time.Millisecond
	sender := &holdingSender{sent: map[string]int{}, held: make(chan string, 1), release: make(chan struct{})}
	l, err := NewListener()
	if err != nil {
		t.Fatal(err)
	}
	f := l.Function
	f.start(cfg, rdb, templates, sender)
	defer f.Stop(context.Background())
	ctx := context.Background()
	fn := httptest.NewServer(http.HandlerFunc(l.Handle))
	defer fn.Close()
	post := func(id, subject string) (int, time.Duration) {
		req, _ := http.NewRequest(http.MethodPost, fn.URL, strings.NewReader(`{"to":["ada@example.com"],"template":"t","data":{"subject":"`+subject+`"}}`))
		for k, v := range map[string]string{"ce-specversion": "1.0", "ce-id": id, "ce-source": "/t", "ce-type": mailer.TypeRequested, "Content-Type": "application/json"} {
			req.Header.Set(k, v)
		}
		start := time.Now()
		// A safety net far above the client's read timeout: the test must end even if the
		// handler hangs, and then fails below.
		resp, err := (&http.Client{Timeout: time.Minute}).Do(req)
		if err != nil {
			return 0, time.Since(start)
		}
		resp.Body.Close()
		return resp.StatusCode, time.Since(start)
	}

	if code, _ := post("held", "held"); code >= 300 {
		t.Fatalf("request before the freeze answered %d", code)
	}
	var heldID string
	select {
	case heldID = <-sender.held:
	case <-time.After(30 * time.Second):
		t.Fatal("the first mail was not sent")
	}
	srv.Stop()
	frozen := true
	defer func() {
		if frozen {
			srv.Cont()
		}
	}()
	close(sender.release) // sent while Redis is frozen: it cannot be recorded yet
	refused := []string{"frozen-1", "frozen-2", "frozen-3"}
	for _, id := range refused {
		code, took := post(id, id)
		if code < 500 {
			t.Errorf("request %s while Redis is frozen answered %d, want a 5xx the Broker retries", id, code)
		}
		t.Logf("request %s answered %d after %s with Redis frozen", id, code, took.Round(10*time.Millisecond))
	}
	srv.Cont()
	frozen = false

	ids := []string{heldID}
	for _, id := range append(refused, "after") {
		if code, _ := post(id, id); code >= 300 {
			t.Errorf("request %s after SIGCONT answered %d", id, code)
		}
		ids = append(ids, mailer.MessageID(mailer.MessageKey(mailer.Request{}, "/t", id)))
	}
	deadline := time.Now().Add(30 * time.Second)
	for {
		states := map[string]string{}
		done := true
		for _, id := range ids {
			st, _ := f.store.State(ctx, id)
			states[id] = st
			done = done && st == mailer.StateDelivered
		}
		if done {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("states after SIGCONT: %v; want every mail delivered", states)
		}
		time.Sleep(50 * time.Millisecond)
	}
	if err := f.d.Drain(ctx); err != nil {
		t.Fatal(err)
	}
	sender.mu.Lock()
	defer sender.mu.Unlock()
	for _, id := range ids {
		if sender.sent[id] != 1 {
			t.Errorf("mail %s sent %d times, want once", id, sender.sent[id])
		}
	}
	if len(sender.sent) != len(ids) {
		t.Errorf("%d mails sent, want %d: %v", len(sender.sent), len(ids), sender.sent)
	}
}
