//go:build e2e

// Package cfp holds the end-to-end tests of the Call for Papers example.
package cfp

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// formsSecretPlaceholder is the base64 payload of the forms secret's template
// (config/340-cfp-webhook-secrets.yaml): knfaas up replaces it with a development secret.
const formsSecretPlaceholder = "Q0hBTkdFLU1FLWNmcC1mb3Jtcy13ZWJob29rLXNlY3JldA=="

// platformPaths are the parts of the platform the example runs on: Broker, Redis, dead letters,
// the timer (deadlines, reminders), the tasks API, the notify function and the smtp Secret.
var platformPaths = []string{
	"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/300-smtp-secret.yaml",
	"config/320-tasks-auth-secret.yaml", "config/325-tasks-signing-secret.yaml", "config/335-notify-api-secret.yaml",
	"config/400-deadletter-config.yaml", "config/400-notify-endpoints.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml",
	"config/600-broker.yaml", "config/700-deadletter.yaml",
	"config/700-timer.yaml", "config/710-timer-sinkbinding.yaml", "config/800-timer-ping.yaml",
	"config/700-tasks.yaml", "config/710-tasks-sinkbinding.yaml",
	"config/700-notify.yaml", "config/710-notify-sinkbinding.yaml", "triggers/notify-timer-fired.yaml",
}

// cfp is the example running under knfaas up with Mailpit.
type cfp struct {
	rt    *runtimetest.Runtime
	rdb   *redis.Client
	ui    string // Mailpit's web UI and API
	forms formService
}

// startCFP runs the platform's parts and the example, with the desk's DESK_REVIEW_REMINDER set
// to reminder (a copy of 720-cfp-desk.yaml).
func startCFP(t *testing.T, reminder string) *cfp {
	t.Helper()
	t.Setenv(embedded.EnvSMTPURL, "")
	root := runtimetest.ModuleRoot(t)
	cache, err := os.UserCacheDir()
	if err != nil {
		t.Fatal(err)
	}
	// Built (or found) first, in the cache knfaas up uses, so that the runtime's start-up wait
	// does not include a cold build.
	if _, err := embedded.BuildMailpit(context.Background(), root, filepath.Join(cache, "knfaas", "bin")); err != nil {
		t.Fatalf("building Mailpit: %v", err)
	}
	desk, err := os.ReadFile(filepath.Join(root, "examples/cfp/config/720-cfp-desk.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const shipped = "name: DESK_REVIEW_REMINDER\n          value: \"72h\""
	tuned := strings.Replace(string(desk), shipped, "name: DESK_REVIEW_REMINDER\n          value: \""+reminder+"\"", 1)
	if !strings.Contains(string(desk), shipped) {
		t.Fatal("720-cfp-desk.yaml no longer sets DESK_REVIEW_REMINDER to 72h")
	}
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "720-cfp-desk.yaml"), []byte(tuned), 0o600); err != nil {
		t.Fatal(err)
	}
	paths := append([]string{dir, "examples/cfp/triggers"}, platformPaths...)
	configs, err := filepath.Glob(filepath.Join(root, "examples/cfp/config/*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	for _, c := range configs {
		if filepath.Base(c) != "720-cfp-desk.yaml" {
			paths = append(paths, c)
		}
	}
	srv := redistest.Start(t, redistest.Options{})
	rt := runtimetest.Start(t, runtimetest.Options{Paths: paths, RedisURL: srv.URL()})
	m := webUI.FindStringSubmatch(rt.Output())
	if m == nil {
		t.Fatalf("the start-up summary names no Mailpit web UI:\n%s", rt.Output())
	}
	secret, err := base64.StdEncoding.DecodeString(rt.DevSecret("knfaas", "cfp-webhook-secrets", "forms", formsSecretPlaceholder))
	if err != nil {
		t.Fatalf("the development forms secret is not base64: %v", err)
	}
	return &cfp{rt: rt, rdb: srv.Client(), ui: m[1],
		forms: formService{t: t, url: rt.ServiceURL("knfaas", "cfp-webhook") + "/forms", secret: secret, client: rt.Client()}}
}

// formService posts submissions as a form service would: signed per the Standard Webhooks
// specification (HMAC-SHA256 over "id.timestamp.body" with the base64-decoded secret after
// whsec_), written here from the specification rather than with the platform's code.
type formService struct {
	t      *testing.T
	url    string
	secret []byte
	client *http.Client
}

func (f formService) post(deliveryID string, body []byte, signWith []byte) int {
	f.t.Helper()
	ts := strconv.FormatInt(time.Now().Unix(), 10)
	mac := hmac.New(sha256.New, signWith)
	mac.Write([]byte(deliveryID + "." + ts + "."))
	mac.Write(body)
	req, err := http.NewRequest(http.MethodPost, f.url, bytes.NewReader(body))
	if err != nil {
		f.t.Fatal(err)
	}
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("webhook-id", deliveryID)
	req.Header.Set("webhook-timestamp", ts)
	req.Header.Set("webhook-signature", "v1,"+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	resp, err := f.client.Do(req)
	if err != nil {
		f.t.Fatalf("posting delivery %s: %v", deliveryID, err)
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

func submission(id, title, name, email string) []byte {
	b, _ := json.Marshal(map[string]any{"submissionId": id, "title": title, "abstract": "An abstract.",
		"speaker": map[string]string{"name": name, "email": email}})
	return b
}

// mailpitMessage is a message as Mailpit's HTTP API lists it.
type mailpitMessage struct {
	ID      string
	Subject string
	From    struct{ Address string }
	To      []struct{ Name, Address string }
}

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

func withSubject(ms []mailpitMessage, subject string) []mailpitMessage {
	var out []mailpitMessage
	for _, m := range ms {
		if m.Subject == subject {
			out = append(out, m)
		}
	}
	return out
}

func textBody(t *testing.T, ui, id string) string {
	t.Helper()
	resp, err := http.Get(ui + "/api/v1/message/" + id)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	var m struct{ Text string }
	if err := json.NewDecoder(resp.Body).Decode(&m); err != nil {
		t.Fatal(err)
	}
	return m.Text
}

// timeline lists "<kind> <type>" of an instance's events in and commands out.
func timeline(t *testing.T, rdb *redis.Client, id string) (status string, entries []string) {
	t.Helper()
	in, err := process.ReadInstance(context.Background(), rdb, id)
	if err != nil {
		return "", nil
	}
	for _, e := range in.Timeline {
		if e.Kind == "in" || e.Kind == "out" {
			entries = append(entries, e.Kind+" "+strings.TrimPrefix(e.Type, "dev.knfaas.example.cfp."))
		}
	}
	return in.Status, entries
}

var webUI = regexp.MustCompile(`smtp: Mailpit on 127\.0\.0\.1:\d+ .*web UI at (http://127\.0\.0\.1:\d+)`)

// TestSubmissionAcknowledgedOnce runs the example under knfaas up with Mailpit: a signed
// submission from the form service starts one process that acknowledges it by one email; the
// same delivery again, and the same submission in a new delivery, change nothing; a delivery
// with a wrong signature is refused.
func TestSubmissionAcknowledgedOnce(t *testing.T) {
	c := startCFP(t, "72h")
	rdb, ui, forms, secret := c.rdb, c.ui, c.forms, c.forms.secret
	const subject = "We received your proposal: Analytical engines"
	ada := submission("sub-1", "Analytical engines", "Ada Lovelace", "ada@example.com")
	if code := forms.post("msg-1", ada, secret); code != http.StatusAccepted {
		t.Fatalf("the submission answered %d, want 202", code)
	}
	var got []mailpitMessage
	runtimetest.Eventually(t, 2*time.Minute, "the acknowledgement is in Mailpit", func() bool {
		got = withSubject(messages(t, ui), subject)
		return len(got) >= 1
	})
	if len(got) != 1 || got[0].From.Address != "cfp@example.org" || len(got[0].To) != 1 ||
		got[0].To[0].Address != "ada@example.com" || got[0].To[0].Name != "Ada Lovelace" {
		t.Fatalf("Mailpit holds %+v, want one acknowledgement from cfp@example.org to Ada", got)
	}
	if text := textBody(t, ui, got[0].ID); !strings.Contains(text, `thank you for proposing "Analytical engines" (submission sub-1)`) {
		t.Fatalf("the acknowledgement reads %q", text)
	}

	tests := []struct {
		name, delivery string
		body           []byte
		signWith       []byte
		want           int
	}{
		{name: "the same delivery again (the form service retrying)", delivery: "msg-1", body: ada, signWith: secret, want: http.StatusOK},
		{name: "the same submission in a new delivery (posted twice)", delivery: "msg-2", body: ada, signWith: secret, want: http.StatusAccepted},
		{name: "a forged delivery", delivery: "msg-3", body: submission("sub-9", "Forged", "Mallory", "mallory@example.com"), signWith: []byte("not the secret"), want: http.StatusUnauthorized},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			if code := forms.post(tt.delivery, tt.body, tt.signWith); code != tt.want {
				t.Fatalf("answered %d, want %d", code, tt.want)
			}
		})
	}
	// A second submission behind them: once it is acknowledged, the desk and the process have
	// handled the deliveries before it.
	if code := forms.post("msg-4", submission("sub-2", "Compilers", "Grace Hopper", "grace@example.com"), secret); code != http.StatusAccepted {
		t.Fatalf("the second submission answered %d, want 202", code)
	}
	runtimetest.Eventually(t, 2*time.Minute, "the second acknowledgement is in Mailpit", func() bool {
		return len(withSubject(messages(t, ui), "We received your proposal: Compilers")) == 1
	})
	const reviewing = "in submission.received, out ack.send, in ack.sent, out dev.knfaas.tasks.created"
	runtimetest.Eventually(t, time.Minute, "both processes wait for their first review", func() bool {
		_, e1 := timeline(t, rdb, "sub-1")
		_, e2 := timeline(t, rdb, "sub-2")
		return strings.Join(e1, ", ") == reviewing && strings.Join(e2, ", ") == reviewing
	})
	time.Sleep(2 * time.Second)
	if n := len(withSubject(messages(t, ui), subject)); n != 1 {
		t.Errorf("%d acknowledgements of sub-1 after it was posted twice, want 1", n)
	}
	if status, entries := timeline(t, rdb, "sub-1"); status != "running" || strings.Join(entries, ", ") != reviewing {
		t.Errorf("sub-1 is %s: %s", status, strings.Join(entries, ", "))
	}
	ids, err := rdb.ZRange(context.Background(), "knfaas:process:instances", 0, -1).Result()
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(ids, " ") != "sub-1 sub-2" && strings.Join(ids, " ") != "sub-2 sub-1" {
		t.Errorf("process instances %v, want sub-1 and sub-2 (none for the forged delivery)", ids)
	}
	// A start the process refused (a second instance for one submission) would be dead-lettered.
	letters, err := deadletter.NewStore(rdb, deadletter.Options{}).List(context.Background(), deadletter.Filter{})
	if err != nil {
		t.Fatal(err)
	}
	if len(letters) != 0 {
		t.Errorf("dead letters %+v, want none", letters)
	}
	if n := len(messages(t, ui)); n != 2 {
		t.Errorf("Mailpit holds %d mails, want 2", n)
	}
}

// scheduling is the scheduling system: it records each signed delivery it receives.
type scheduling struct {
	mu         sync.Mutex
	deliveries []delivery
	srv        *httptest.Server
}

type delivery struct {
	header http.Header
	body   []byte
}

func newScheduling(t *testing.T) *scheduling {
	s := &scheduling{}
	s.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		s.mu.Lock()
		s.deliveries = append(s.deliveries, delivery{header: r.Header.Clone(), body: body})
		s.mu.Unlock()
		w.WriteHeader(http.StatusNoContent)
	}))
	t.Cleanup(s.srv.Close)
	return s
}

func (s *scheduling) received() []delivery {
	s.mu.Lock()
	defer s.mu.Unlock()
	return append([]delivery(nil), s.deliveries...)
}

// verifyStandardWebhook checks a delivery as a receiver would, from the Standard Webhooks
// specification: the key is the base64 after whsec_, the MAC HMAC-SHA256 over
// "<webhook-id>.<webhook-timestamp>.<body>", and one "v1,<base64>" entry of webhook-signature
// must match; the timestamp must be within 5 minutes.
func verifyStandardWebhook(secret string, h http.Header, body []byte) error {
	key, err := base64.StdEncoding.DecodeString(strings.TrimPrefix(secret, "whsec_"))
	if err != nil {
		return fmt.Errorf("secret: %w", err)
	}
	ts, err := strconv.ParseInt(h.Get("webhook-timestamp"), 10, 64)
	if err != nil {
		return fmt.Errorf("webhook-timestamp: %w", err)
	}
	if d := time.Since(time.Unix(ts, 0)); d > 5*time.Minute || d < -5*time.Minute {
		return fmt.Errorf("webhook-timestamp %d is %s away", ts, d)
	}
	mac := hmac.New(sha256.New, key)
	mac.Write([]byte(h.Get("webhook-id") + "." + h.Get("webhook-timestamp") + "."))
	mac.Write(body)
	want := mac.Sum(nil)
	for _, sig := range strings.Fields(h.Get("webhook-signature")) {
		v, ok := strings.CutPrefix(sig, "v1,")
		if !ok {
			continue
		}
		if got, err := base64.StdEncoding.DecodeString(v); err == nil && hmac.Equal(got, want) {
			return nil
		}
	}
	return fmt.Errorf("no v1 signature in %q matches", h.Get("webhook-signature"))
}

// decide completes or rejects a task through the tasks API, as an operator (the ops group may
// decide any task); it answers the HTTP status.
func (c *cfp) decide(t *testing.T, task, action string) int {
	t.Helper()
	token := c.rt.DevSecret("knfaas", "tasks-auth", "tokens", "CHANGE-ME-operator-token-00000")
	req, _ := http.NewRequest(http.MethodPost, c.rt.ServiceURL("knfaas", "tasks")+"/tasks/"+task+"/"+action, strings.NewReader(`{"note":"e2e"}`))
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err := c.rt.Client().Do(req)
	if err != nil {
		return 0
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, resp.Body)
	return resp.StatusCode
}

// TestReviewsDecisionAndReminder runs the rest of a submission's life: sub-1 is reviewed twice
// and accepted (acceptance email; the scheduling system receives a delivery whose signature
// verifies with the endpoint's secret); sub-3 is reviewed and rejected (rejection email, nothing
// to the scheduling system); sub-2's first review stays open past the (short) reminder deadline
// (a reminder email to the reviewers, one).
func TestReviewsDecisionAndReminder(t *testing.T) {
	c := startCFP(t, "1s")
	receiver := newScheduling(t)

	// The scheduling system's endpoint, created through the notify API (a loopback URL is
	// allowed under knfaas up).
	body, _ := json.Marshal(map[string]any{"name": "scheduling", "url": receiver.srv.URL, "types": []string{"dev.knfaas.example.cfp.talk.accepted"}})
	req, _ := http.NewRequest(http.MethodPost, c.rt.InternalBase()+"/services/knfaas/notify/api/endpoints", bytes.NewReader(body))
	req.Header.Set("Authorization", "Bearer "+c.rt.DevSecret("knfaas", "notify-api", "token", "CHANGE-ME-notify-api-token-000000"))
	resp, err := c.rt.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	var endpoint struct{ Secret string }
	_ = json.NewDecoder(resp.Body).Decode(&endpoint)
	resp.Body.Close()
	if resp.StatusCode != http.StatusCreated || !strings.HasPrefix(endpoint.Secret, "whsec_") {
		t.Fatalf("creating the scheduling endpoint answered %d, secret %q", resp.StatusCode, endpoint.Secret)
	}

	for i, s := range []struct{ id, title, name, email string }{
		{"sub-1", "Analytical engines", "Ada Lovelace", "ada@example.com"},
		{"sub-2", "Compilers", "Grace Hopper", "grace@example.com"},
		{"sub-3", "Punched cards", "Herman Hollerith", "herman@example.com"},
	} {
		if code := c.forms.post(fmt.Sprintf("msg-%d", i), submission(s.id, s.title, s.name, s.email), c.forms.secret); code != http.StatusAccepted {
			t.Fatalf("submission %s answered %d", s.id, code)
		}
	}
	steps := []struct{ task, action string }{
		{"sub-1:review-1:1", "complete"}, {"sub-3:review-1:1", "complete"},
		{"sub-1:review-2:1", "complete"}, {"sub-3:review-2:1", "complete"},
		{"sub-1:decide:1", "complete"}, {"sub-3:decide:1", "reject"},
	}
	for _, st := range steps {
		runtimetest.Eventually(t, time.Minute, st.action+" "+st.task, func() bool { return c.decide(t, st.task, st.action) == http.StatusOK })
	}

	runtimetest.Eventually(t, 2*time.Minute, "acceptance and rejection emails", func() bool {
		ms := messages(t, c.ui)
		return len(withSubject(ms, "Accepted: Analytical engines")) == 1 && len(withSubject(ms, "Your proposal: Punched cards")) == 1
	})
	runtimetest.Eventually(t, time.Minute, "the scheduling system received the accepted talk", func() bool { return len(receiver.received()) >= 1 })
	got := receiver.received()
	if len(got) != 1 {
		t.Fatalf("the scheduling system received %d deliveries, want 1", len(got))
	}
	if err := verifyStandardWebhook(endpoint.Secret, got[0].header, got[0].body); err != nil {
		t.Errorf("the scheduling delivery does not verify: %v", err)
	}
	var talk struct {
		SubmissionID string
		Title        string
		Speaker      struct{ Email string }
	}
	if err := json.Unmarshal(got[0].body, &talk); err != nil || talk.SubmissionID != "sub-1" || talk.Title != "Analytical engines" || talk.Speaker.Email != "ada@example.com" {
		t.Errorf("the scheduling system received %s (%v), want the accepted submission", got[0].body, err)
	}

	// Anyone may post to the Broker: an acceptance command cfp-process never emitted is refused
	// by the desk (403, dead-lettered) and sends nothing.
	forged := runtimetest.NewEvent("sub-2:accept:1", "dev.knfaas.example.cfp.acceptance.send")
	forged.SetSource("/e2e/attacker")
	forged.SetSubject("sub-2")
	_ = forged.SetData("application/json", submission("sub-2", "Compilers", "Grace Hopper", "grace@example.com"))
	c.rt.Send("knfaas", "default", forged)
	runtimetest.Eventually(t, time.Minute, "the forged command refused and dead-lettered", func() bool {
		return c.rdb.ZCard(context.Background(), "knfaas:deadletter:index:code:403").Val() == 1
	})

	// sub-2's first review is still open: the timer fires its reminder at the next minute tick.
	const reminder = "Reminder: review of submission sub-2 is due"
	runtimetest.Eventually(t, 3*time.Minute, "the reminder for sub-2", func() bool {
		return len(withSubject(messages(t, c.ui), reminder)) >= 1
	})
	reminders := withSubject(messages(t, c.ui), reminder)
	if len(reminders) != 1 || len(reminders[0].To) != 1 || reminders[0].To[0].Address != "reviewers@example.org" {
		t.Errorf("reminders %+v, want one to reviewers@example.org", reminders)
	}

	for id, want := range map[string]string{"sub-1": "completed", "sub-2": "running", "sub-3": "compensated"} {
		if status, entries := timeline(t, c.rdb, id); status != want {
			t.Errorf("%s is %s, want %s: %s", id, status, want, strings.Join(entries, ", "))
		}
	}
	if n := len(withSubject(messages(t, c.ui), "Accepted: Analytical engines")); n != 1 {
		t.Errorf("%d acceptance emails, want 1", n)
	}
	if n := len(withSubject(messages(t, c.ui), "Accepted: Compilers")); n != 0 {
		t.Errorf("the forged command sent %d acceptance emails", n)
	}
	if n := len(receiver.received()); n != 1 {
		t.Errorf("the scheduling system received %d deliveries, want 1", n)
	}
}
