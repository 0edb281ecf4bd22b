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
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
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

var e2ePaths = []string{
	"config/100-namespace.yaml", "config/300-redis-secret.yaml", "config/300-smtp-secret.yaml",
	"config/400-deadletter-config.yaml", "config/500-redis-service.yaml", "config/510-redis-statefulset.yaml",
	"config/600-broker.yaml", "config/700-deadletter.yaml",
	"config/700-timer.yaml", "config/710-timer-sinkbinding.yaml", "config/800-timer-ping.yaml",
	"examples/cfp",
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
	srv := redistest.Start(t, redistest.Options{})
	rdb := srv.Client()
	rt := runtimetest.Start(t, runtimetest.Options{Paths: e2ePaths, RedisURL: srv.URL()})
	m := webUI.FindStringSubmatch(rt.Output())
	if m == nil {
		t.Fatalf("the start-up summary names no Mailpit web UI:\n%s", rt.Output())
	}
	ui := m[1]
	secret, err := base64.StdEncoding.DecodeString(rt.DevSecret("knfaas", "cfp-webhook-secrets", "forms", formsSecretPlaceholder))
	if err != nil {
		t.Fatalf("the development forms secret is not base64: %v", err)
	}
	forms := formService{t: t, url: rt.ServiceURL("knfaas", "cfp-webhook") + "/forms", secret: secret, client: rt.Client()}

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
	runtimetest.Eventually(t, time.Minute, "both processes completed", func() bool {
		s1, _ := timeline(t, rdb, "sub-1")
		s2, _ := timeline(t, rdb, "sub-2")
		return s1 == "completed" && s2 == "completed"
	})
	time.Sleep(2 * time.Second)
	if n := len(withSubject(messages(t, ui), subject)); n != 1 {
		t.Errorf("%d acknowledgements of sub-1 after it was posted twice, want 1", n)
	}
	if _, entries := timeline(t, rdb, "sub-1"); strings.Join(entries, ", ") != "in submission.received, out ack.send, in ack.sent, out submission.completed" {
		t.Errorf("sub-1's timeline: %s", strings.Join(entries, ", "))
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
