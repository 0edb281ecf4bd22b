package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/funcstart"
	mailer "github.com/knfaas/knfaas/internal/function/mail"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestConfigCheck(t *testing.T) {
	tests := map[string]struct {
		env map[string]string
		err string // "" when the configuration is accepted
	}{
		"defaults with a server":    {},
		"no server":                 {env: map[string]string{"SMTP_URL": ""}, err: "SMTP_URL: required"},
		"template server":           {env: map[string]string{"SMTP_URL": "smtp://CHANGE-ME:CHANGE-ME@smtp.example.com:587"}, err: "SMTP_URL: "},
		"bad from":                  {env: map[string]string{"MAIL_FROM": "nobody"}, err: `MAIL_FROM ("nobody")`},
		"bad schedule":              {env: map[string]string{"MAIL_SCHEDULE": "1s,later"}, err: `MAIL_SCHEDULE ("1s,later"): step 2`},
		"retention too short":       {env: map[string]string{"MAIL_RETENTION": "24h"}, err: "MAIL_RETENTION (24h0m0s) must be at least"},
		"timeout too long":          {env: map[string]string{"MAIL_TIMEOUT": "5m"}, err: "MAIL_TIMEOUT (5m0s)"},
		"no bulkhead":               {env: map[string]string{"MAIL_CONCURRENCY": "0"}, err: "MAIL_CONCURRENCY (0)"},
		"breaker":                   {env: map[string]string{"MAIL_BREAKER_OPEN": "0s"}, err: "MAIL_BREAKER_OPEN (0s)"},
		"an example's request type": {env: map[string]string{"MAIL_REQUEST_TYPE": "dev.knfaas.example.cfp.mail.requested"}},
		"a wake-up as request type": {env: map[string]string{"MAIL_REQUEST_TYPE": "dev.knfaas.timer.fired"}, err: `MAIL_REQUEST_TYPE ("dev.knfaas.timer.fired")`},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv("SMTP_URL", "smtp://127.0.0.1:1025?tls=none")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			var cfg Config
			err := funcstart.ReadConfig("mail", &cfg)
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("ReadConfig = %v", err)
			case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
				t.Fatalf("ReadConfig = %v, want an error saying %q", err, tc.err)
			}
		})
	}
}

func TestStartRefusesABadTemplatesFile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "templates.yaml")
	if err := os.WriteFile(path, []byte("templates:\n- {name: a, text: t}\n- {name: b, subject: '{{.x', text: t}\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("MAIL_TEMPLATES_FILE", path)
	t.Setenv("SMTP_URL", "smtp://127.0.0.1:1025?tls=none")
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
	err := New().Start(context.Background(), nil)
	for _, want := range []string{`template "a" (templates[0]): subject: required`, `template "b" (templates[1]): subject:`} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Start = %v, want it to say %q", err, want)
		}
	}
}

// recorder is a Sender that keeps what it sent.
type recorder struct {
	mu   sync.Mutex
	sent []*mailer.Mail
}

func (r *recorder) Send(_ context.Context, m *mailer.Mail) error {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.sent = append(r.sent, m)
	return nil
}

func (r *recorder) mails() []*mailer.Mail {
	r.mu.Lock()
	defer r.mu.Unlock()
	return append([]*mailer.Mail(nil), r.sent...)
}

func request(id, data string) event.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource("/test/cfp")
	e.SetType(mailer.TypeRequested)
	_ = e.SetData(cloudevents.ApplicationJSON, []byte(data))
	return e
}

// Handle renders and sends a request once per key, and dead-letters at once, with the reason, a
// request that can never be sent.
func TestHandle(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	templates, err := mailer.Parse([]byte("templates:\n- {name: ack, subject: 'Received: {{.title}}', text: 'Thanks, {{.name}}', html: '<p>{{.name}}</p>', from: 'CfP <cfp@example.org>'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SMTP_URL", "smtp://127.0.0.1:1025?tls=none")
	var cfg Config
	if err := funcstart.ReadConfig("mail", &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Poll = 10 * time.Millisecond
	rec := &recorder{}
	f := New()
	f.start(cfg, srv.Client(), templates, rec)
	t.Cleanup(func() { _ = f.Stop(context.Background()) })
	ctx := context.Background()
	tests := []struct {
		name string
		e    event.Event
		// sent is how many mails were sent after the event; letter is part of the dead letter
		// of the event, "" when there is none.
		sent   int
		letter string
	}{
		{name: "a request", e: request("s1", `{"to":["Ada <ada@example.com>"],"template":"ack","data":{"title":"Go","name":"<Ada>"}}`), sent: 1},
		{name: "the same event again", e: request("s1", `{"to":["Ada <ada@example.com>"],"template":"ack","data":{"title":"Go","name":"<Ada>"}}`), sent: 1},
		{name: "another event, the same idempotency key", e: request("s2", `{"to":["ada@example.com"],"template":"ack","data":{"title":"Go","name":"Ada"},"idempotencyKey":"sub-1"}`), sent: 2},
		{name: "a third event with that key", e: request("s3", `{"to":["ada@example.com"],"template":"ack","data":{"title":"Go","name":"Ada"},"idempotencyKey":"sub-1"}`), sent: 2},
		{name: "an unknown template", e: request("s4", `{"to":["ada@example.com"],"template":"nope"}`), sent: 2, letter: `rejected: template "nope" is not defined`},
		{name: "data the template lacks", e: request("s5", `{"to":["ada@example.com"],"template":"ack","data":{"title":"Go"}}`), sent: 2, letter: `map has no entry for key "name"`},
		{name: "a malformed request", e: request("s6", `{"to":"ada@example.com","template":"ack"}`), sent: 2, letter: "rejected: request is not a JSON object"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if _, err := f.Handle(ctx, tt.e); err != nil {
				t.Fatalf("Handle = %v", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for len(rec.mails()) < tt.sent && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond)
			if n := len(rec.mails()); n != tt.sent {
				t.Fatalf("%d mails sent, want %d", n, tt.sent)
			}
			letters, err := f.dead.List(ctx, deadletter.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			var found *deadletter.Letter
			for i := range letters {
				if letters[i].EventID == tt.e.ID() {
					found = &letters[i]
				}
			}
			switch {
			case tt.letter == "" && found != nil:
				t.Fatalf("dead letter %+v", *found)
			case tt.letter != "" && (found == nil || !strings.Contains(found.ErrorData, tt.letter)):
				t.Fatalf("dead letter %+v, want one saying %q", found, tt.letter)
			}
		})
	}
	first := rec.mails()[0]
	if first.Subject != "Received: Go" || first.Text != "Thanks, <Ada>" || first.HTML != "<p>&lt;Ada&gt;</p>" ||
		first.From != "CfP <cfp@example.org>" || !strings.HasPrefix(first.MessageIDHeader(), "mail_") || !strings.HasSuffix(first.MessageIDHeader(), "@example.org") {
		t.Fatalf("first mail %+v (Message-ID %s)", first, first.MessageIDHeader())
	}
}

// An instance with MAIL_REQUEST_TYPE (an example's own mail instance, with its own templates)
// sends requests of that type and dead-letters the platform's type, which its templates do not
// serve.
func TestHandleServesItsRequestType(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{})
	templates, err := mailer.Parse([]byte("templates:\n- {name: ack, subject: 'Received: {{.title}}', text: 'Thanks'}\n"))
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv("SMTP_URL", "smtp://127.0.0.1:1025?tls=none")
	t.Setenv("MAIL_REQUEST_TYPE", "dev.knfaas.example.cfp.mail.requested")
	var cfg Config
	if err := funcstart.ReadConfig("mail", &cfg); err != nil {
		t.Fatal(err)
	}
	cfg.Poll = 10 * time.Millisecond
	rec := &recorder{}
	f := New()
	f.start(cfg, srv.Client(), templates, rec)
	t.Cleanup(func() { _ = f.Stop(context.Background()) })
	ctx := context.Background()
	tests := []struct {
		name, typ string
		sent      int    // mails sent after the event
		letter    string // part of the event's dead letter; "" when there is none
	}{
		{name: "the configured type", typ: "dev.knfaas.example.cfp.mail.requested", sent: 1},
		{name: "the platform's type", typ: mailer.TypeRequested, sent: 1, letter: "this mail function sends dev.knfaas.example.cfp.mail.requested events only"},
	}
	for i, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			e := request(fmt.Sprintf("t%d", i), `{"to":["ada@example.com"],"template":"ack","data":{"title":"Go"}}`)
			e.SetType(tt.typ)
			if _, err := f.Handle(ctx, e); err != nil {
				t.Fatalf("Handle = %v", err)
			}
			deadline := time.Now().Add(5 * time.Second)
			for len(rec.mails()) < tt.sent && time.Now().Before(deadline) {
				time.Sleep(10 * time.Millisecond)
			}
			time.Sleep(100 * time.Millisecond)
			if n := len(rec.mails()); n != tt.sent {
				t.Fatalf("%d mails sent, want %d", n, tt.sent)
			}
			letters, err := f.dead.List(ctx, deadletter.Filter{})
			if err != nil {
				t.Fatal(err)
			}
			found := ""
			for _, l := range letters {
				if l.EventID == e.ID() {
					found = l.ErrorData
				}
			}
			if (tt.letter == "") != (found == "") || !strings.Contains(found, tt.letter) {
				t.Fatalf("dead letter %q, want one saying %q", found, tt.letter)
			}
		})
	}
}
