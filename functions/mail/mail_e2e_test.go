//go:build e2e

package main

import (
	"context"
	"encoding/json"
	"fmt"
	"net"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	cloudevents "github.com/cloudevents/sdk-go/v2"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	mailer "github.com/knfaas/knfaas/internal/function/mail"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

const source = "/e2e/cfp"

// platform writes the manifests of a test: the platform's Broker, dead letters, timer, the
// smtp Secret template, the mail Service with schedule (and env) instead of the shipped one, its
// Triggers, and a templates ConfigMap of the test.
func platform(t *testing.T, schedule string, env ...string) []string {
	t.Helper()
	root := runtimetest.ModuleRoot(t)
	dir := t.TempDir()
	ksvc, err := os.ReadFile(filepath.Join(root, "config/700-mail.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	extra := ""
	for i := 0; i+1 < len(env); i += 2 {
		extra += "\n        - name: " + env[i] + "\n          value: " + strconv.Quote(env[i+1])
	}
	tuned := strings.Replace(string(ksvc), `value: "30s,5m,30m,2h,5h,10h,10h"`, "value: "+strconv.Quote(schedule)+extra, 1)
	if tuned == string(ksvc) {
		t.Fatal("700-mail.yaml no longer sets MAIL_SCHEDULE to the default")
	}
	files := map[string]string{
		"700-mail.yaml": tuned,
		"mail-templates.yaml": `apiVersion: v1
kind: ConfigMap
metadata: {name: mail-templates, namespace: knfaas}
data:
  templates.yaml: |
    templates:
    - name: submission-received
      from: "Call for Papers <cfp@example.org>"
      subject: "We received {{.title}}"
      text: "Dear {{.name}}, thank you for submitting {{.title}}."
      html: "<p>Dear {{.name}}, thank you for submitting <em>{{.title}}</em>.</p>"
`,
	}
	for name, content := range files {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(content), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	var paths []string
	for _, f := range []string{"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/300-smtp-secret.yaml",
		"config/400-deadletter-config.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml",
		"config/600-broker.yaml", "config/700-deadletter.yaml", "config/700-timer.yaml", "config/710-timer-sinkbinding.yaml",
		"config/800-timer-ping.yaml", "triggers/mail-requested.yaml", "triggers/mail-timer-fired.yaml"} {
		paths = append(paths, filepath.Join(root, f))
	}
	return append(paths, dir)
}

func mailRequest(id, name, title, template, key string) cloudevents.Event {
	e := cloudevents.NewEvent()
	e.SetID(id)
	e.SetSource(source)
	e.SetType(mailer.TypeRequested)
	body, _ := json.Marshal(map[string]any{"to": []string{name + " <" + strings.ToLower(name) + "@example.com>"}, "template": template,
		"data": map[string]string{"name": name, "title": title}, "idempotencyKey": key})
	_ = e.SetData(cloudevents.ApplicationJSON, body)
	return e
}

// mailpitMessage is a message as Mailpit's HTTP API lists it.
type mailpitMessage struct {
	ID        string
	MessageID string
	Subject   string
	From      struct{ Address string }
	To        []struct{ Name, Address string }
}

// messages lists what Mailpit holds (its HTTP API, as a developer's tools would read it).
func messages(t *testing.T, ui string) []mailpitMessage {
	t.Helper()
	resp, err := http.Get(ui + "/api/v1/messages?limit=500")
	if err != nil {
		t.Logf("listing Mailpit's messages: %v", err)
		return nil
	}
	defer resp.Body.Close()
	var list struct{ Messages []mailpitMessage }
	if err := json.NewDecoder(resp.Body).Decode(&list); err != nil {
		t.Fatalf("decoding Mailpit's messages: %v", err)
	}
	return list.Messages
}

// bodies returns the text and HTML bodies of a Mailpit message.
func bodies(t *testing.T, ui, id string) (text, html string) {
	t.Helper()
	resp, err := http.Get(ui + "/api/v1/message/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct{ Text, HTML string }
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m.Text, m.HTML
}

func withSubject(ms []mailpitMessage, subject string) []mailpitMessage {
	var out []mailpitMessage
	for _, m := range ms {
		if m.Subject == subject {
			out = append(out, m)
		}
	}
	return out
}

var webUI = regexp.MustCompile(`smtp: Mailpit on 127\.0\.0\.1:\d+ .*web UI at (http://127\.0\.0\.1:\d+)`)

// TestMailSendsOnceThroughMailpit runs the mail function under knfaas up with no SMTP_URL: the
// run builds and starts Mailpit and says where its web UI is. A request becomes exactly one mail
// with the rendered template; the same event again, and another event with the same
// idempotency key, send nothing more; a request naming an unknown template is dead-lettered with
// the reason.
func TestMailSendsOnceThroughMailpit(t *testing.T) {
	t.Setenv(embedded.EnvSMTPURL, "")
	root := runtimetest.ModuleRoot(t)
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	// Built (or found) here first, in the cache knfaas up uses, so that the runtime's start-up
	// wait does not include a cold build.
	start := time.Now()
	if _, err := embedded.BuildMailpit(context.Background(), root, filepath.Join(cache, "knfaas", "bin")); err != nil {
		t.Fatalf("building Mailpit: %v", err)
	}
	t.Logf("Mailpit built or found in the cache in %s", time.Since(start).Round(time.Millisecond))
	srv := redistest.Start(t, redistest.Options{})
	rt := runtimetest.Start(t, runtimetest.Options{RedisURL: srv.URL(), Paths: platform(t, "1s,1s")})
	m := webUI.FindStringSubmatch(rt.Output())
	if m == nil {
		t.Fatalf("the start-up summary names no Mailpit web UI:\n%s", rt.Output())
	}
	ui := m[1]

	rt.Send("knfaas", "default", mailRequest("sub-1", "Ada", "Analytical Engines", "submission-received", "cfp-sub-1-ack"))
	var got []mailpitMessage
	runtimetest.Eventually(t, time.Minute, "the mail is in Mailpit", func() bool {
		got = messages(t, ui)
		return len(got) >= 1
	})
	want := mailer.MessageID(mailer.MessageKey(mailer.Request{IdempotencyKey: "cfp-sub-1-ack"}, source, "sub-1")) + "@example.org"
	if len(got) != 1 || got[0].Subject != "We received Analytical Engines" || got[0].MessageID != want ||
		got[0].From.Address != "cfp@example.org" || len(got[0].To) != 1 || got[0].To[0].Address != "ada@example.com" {
		t.Fatalf("Mailpit holds %+v, want one mail %q with Message-ID %s", got, "We received Analytical Engines", want)
	}
	text, html := bodies(t, ui, got[0].ID)
	if !strings.Contains(text, "Dear Ada, thank you for submitting Analytical Engines.") ||
		!strings.Contains(html, "<p>Dear Ada, thank you for submitting <em>Analytical Engines</em>.</p>") {
		t.Fatalf("bodies %q / %q are not the rendered template", text, html)
	}

	// The same event redelivered, and another event carrying the same key: nothing more. A
	// marker request behind them shows the function has handled them.
	rt.Send("knfaas", "default", mailRequest("sub-1", "Ada", "Analytical Engines", "submission-received", "cfp-sub-1-ack"))
	rt.Send("knfaas", "default", mailRequest("sub-1-again", "Ada", "Analytical Engines", "submission-received", "cfp-sub-1-ack"))
	rt.Send("knfaas", "default", mailRequest("marker", "Grace", "Compilers", "submission-received", ""))
	runtimetest.Eventually(t, time.Minute, "the marker mail is in Mailpit", func() bool {
		return len(withSubject(messages(t, ui), "We received Compilers")) == 1
	})
	time.Sleep(2 * time.Second)
	if n := len(withSubject(messages(t, ui), "We received Analytical Engines")); n != 1 {
		t.Fatalf("%d mails for the one submission after its redelivery, want 1", n)
	}

	rt.Send("knfaas", "default", mailRequest("bad-1", "Ada", "X", "no-such-template", ""))
	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	var letter *deadletter.Letter
	runtimetest.Eventually(t, time.Minute, "the bad request is dead-lettered", func() bool {
		letters, _ := store.List(context.Background(), deadletter.Filter{})
		for i := range letters {
			if letters[i].EventID == "bad-1" {
				letter = &letters[i]
			}
		}
		return letter != nil
	})
	if !strings.Contains(letter.ErrorData, `template "no-such-template" is not defined`) || letter.EventType != mailer.TypeRequested {
		t.Fatalf("dead letter %+v does not give the reason", *letter)
	}
	if n := len(messages(t, ui)); n != 2 {
		t.Fatalf("Mailpit holds %d mails, want 2", n)
	}
}

// TestMailRetriesWhileTheServerIsDown runs the function against a Mailpit the test starts and
// names in SMTP_URL (knfaas up then starts none), stops it, sends requests, and starts it again
// on the same port: the failed attempts are retried on the schedule, the server's circuit opens
// and is probed, and every mail is delivered once, none dead-lettered.
func TestMailRetriesWhileTheServerIsDown(t *testing.T) {
	root := runtimetest.ModuleRoot(t)
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	bin, err := embedded.BuildMailpit(context.Background(), root, filepath.Join(cache, "knfaas", "bin"))
	if err != nil {
		t.Fatalf("building Mailpit: %v", err)
	}
	smtpAddr, uiAddr := freePort(t), freePort(t)
	mp, err := embedded.StartMailpit(context.Background(), bin, smtpAddr, uiAddr, os.Stderr)
	if err != nil {
		t.Fatal(err)
	}
	t.Setenv(embedded.EnvSMTPURL, mp.SMTPURL())
	srv := redistest.Start(t, redistest.Options{})
	rt := runtimetest.Start(t, runtimetest.Options{RedisURL: srv.URL(), Paths: platform(t, "1s,1s,2s,4s,8s,15s",
		"MAIL_BREAKER_FAILURES", "2", "MAIL_BREAKER_OPEN", "2s", "MAIL_TIMEOUT", "5s")})
	if !strings.Contains(rt.Output(), "smtp: the server SMTP_URL names") || strings.Contains(rt.Output(), "smtp: Mailpit on") {
		t.Fatalf("knfaas up did not take SMTP_URL's server:\n%s", rt.Output())
	}
	mp.Close()

	const n = 3
	ids := make([]string, n)
	for i := range n {
		id := fmt.Sprintf("down-%d", i)
		ids[i] = mailer.MessageID(mailer.MessageKey(mailer.Request{}, source, id))
		rt.Send("knfaas", "default", mailRequest(id, "Ada", fmt.Sprintf("Talk %d", i), "submission-received", ""))
	}
	ctx := context.Background()
	store := mailer.NewStore(srv.Client(), time.Hour)
	runtimetest.Eventually(t, time.Minute, "the server's circuit opens", func() bool {
		st, err := mailer.ReadBreaker(ctx, srv.Client(), smtpAddr)
		return err == nil && st.State == "open"
	})
	mp, err = embedded.StartMailpit(ctx, bin, smtpAddr, uiAddr, os.Stderr)
	if err != nil {
		t.Fatalf("starting Mailpit again: %v", err)
	}
	t.Cleanup(mp.Close)
	runtimetest.Eventually(t, time.Minute, "every mail is delivered", func() bool {
		for _, id := range ids {
			if st, _ := store.State(ctx, id); st != mailer.StateDelivered {
				return false
			}
		}
		return true
	})
	time.Sleep(time.Second)
	got := messages(t, mp.UI)
	seen := map[string]int{}
	for _, m := range got {
		seen[m.MessageID]++
	}
	failed, probes := 0, 0
	for i, id := range ids {
		if seen[id+"@example.org"] != 1 {
			t.Errorf("mail %d arrived %d times, want once (Mailpit holds %+v)", i, seen[id+"@example.org"], got)
		}
		attempts, err := store.Attempts(ctx, id)
		if err != nil {
			t.Fatal(err)
		}
		for _, a := range attempts {
			switch {
			case a.Outcome == "retry" && strings.Contains(a.Error, "connection refused"):
				failed++
			case a.Outcome == "retry":
				t.Errorf("attempt %+v failed otherwise than with a refused connection", a)
			}
			if a.Breaker == "half-open probe" {
				probes++
			}
		}
		if last := attempts[len(attempts)-1]; last.Outcome != mailer.StateDelivered {
			t.Errorf("mail %d: last attempt %+v", i, last)
		}
	}
	if failed < 2 || probes == 0 {
		t.Errorf("%d failed attempts, %d half-open probes: want the failures that opened the circuit and a probe that closed it", failed, probes)
	}
	letters, _ := deadletter.NewStore(srv.Client(), deadletter.Options{}).List(ctx, deadletter.Filter{})
	if len(letters) != 0 {
		t.Errorf("dead letters %+v, want none", letters)
	}
	t.Logf("%d mails delivered after the server came back; %d attempts failed while it was down, %d probes", n, failed, probes)
}

func freePort(t *testing.T) string {
	t.Helper()
	l, err := (&net.ListenConfig{}).Listen(context.Background(), "tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	return l.Addr().String()
}
