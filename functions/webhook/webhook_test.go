package main

import (
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// Published examples (see internal/function/webhook/signature for their origin).
const (
	slackDocTimestamp = 1531420618
	slackDocBody      = "token=xyzz0WbapA4vBCDEFasx0q6G&team_id=T1DC2JH3J&team_domain=testteamnow&channel_id=G8PSS9T3V&channel_name=foobar&user_id=U2CERLKJA&user_name=roadrunner&command=%2Fwebhook-collect&text=&response_url=https%3A%2F%2Fhooks.slack.com%2Fcommands%2FT1DC2JH3J%2F397700885554%2F96rGlfmibIGlgcZRskXaIFfN&trigger_id=398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c"
	slackDocSignature = "v0=a2114d57b48eac39b9ad189dd8316235a7b4a8d21a10bd27519666489c69b503"

	svixDocID        = "msg_p5jXN8AQM9LWM0D4loKWxJek"
	svixDocTimestamp = 1614265330
	svixDocBody      = `{"test": 2432232314}`
	svixDocSignature = "v1,g0hM9SsE+OTPJTGt/tmIKtSyZlE3uFJELVlNIOLJ1OE="

	githubDocBody = "Hello, World!"
)

func hdr(kv ...string) http.Header {
	h := http.Header{}
	for i := 0; i+1 < len(kv); i += 2 {
		h.Set(kv[i], kv[i+1])
	}
	return h
}

// lockedBuffer collects log lines written by concurrent handlers.
type lockedBuffer struct {
	mu sync.Mutex
	b  bytes.Buffer
}

func (l *lockedBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.b.Write(p)
}
func (l *lockedBuffer) String() string { l.mu.Lock(); defer l.mu.Unlock(); return l.b.String() }

func TestAnswers(t *testing.T) {
	now := time.Unix(1750000000, 0)
	pushBody := `{"ref":"refs/heads/main","repository":{"full_name":"octo/hello"}}`
	stripeBody := `{"id":"evt_1","type":"invoice.paid","data":{"object":{"id":"in_1"}}}`

	tests := []struct {
		name        string
		method      string
		path        string
		header      http.Header
		body        string
		now         time.Time
		wantStatus  int
		wantBody    string // substring of the answer
		wantLog     string // substring of the log
		wantEvent   map[string]string
		wantPublish bool
	}{
		{name: "github push", path: "github", header: githubDelivery(githubSecret, "d-1", "push", pushBody), body: pushBody,
			wantStatus: 202, wantPublish: true, wantEvent: map[string]string{
				"Ce-Id": "d-1", "Ce-Type": "com.github.push", "Ce-Source": "/webhooks/github", "Ce-Subject": "octo/hello", "Content-Type": "application/json"}},
		{name: "github previous secret during rotation", path: "github", header: githubDelivery(githubPrevSecret, "d-2", "push", pushBody), body: pushBody,
			wantStatus: 202, wantPublish: true},
		{name: "github docs example verifies, but is not JSON", path: "github",
			header: hdr("X-Hub-Signature-256", "sha256="+"757107ea0eb2509fc211221cce984b8a37570b6d7586c22c46f4379c8b043e17", "X-GitHub-Event", "push", "X-GitHub-Delivery", "d-3"),
			body:   githubDocBody, wantStatus: 400, wantBody: "not JSON"},
		{name: "unsigned", path: "github", header: hdr("X-GitHub-Event", "push", "X-GitHub-Delivery", "d-4"), body: pushBody,
			wantStatus: 401, wantBody: "unauthorized\n", wantLog: "signature header missing"},
		{name: "wrong secret", path: "github", header: githubDelivery("guess", "d-5", "push", pushBody), body: pushBody,
			wantStatus: 401, wantBody: "unauthorized\n", wantLog: "no signature matches"},
		{name: "signed but not JSON", path: "github", header: githubDelivery(githubSecret, "d-6", "push", "not json"), body: "not json",
			wantStatus: 400, wantBody: "not JSON"},
		{name: "signed without delivery id", path: "github", header: func() http.Header {
			h := githubDelivery(githubSecret, "", "push", pushBody)
			h.Del("X-GitHub-Delivery")
			return h
		}(), body: pushBody, wantStatus: 400, wantBody: "no id"},

		{name: "stripe", path: "stripe", header: stripeDelivery(stripeSecret, now, stripeBody), body: stripeBody,
			wantStatus: 202, wantPublish: true, wantEvent: map[string]string{
				"Ce-Id": "evt_1", "Ce-Type": "com.stripe.invoice.paid", "Ce-Source": "/webhooks/stripe", "Ce-Subject": "in_1", "Content-Type": "application/json; charset=utf-8"}},
		{name: "stripe: a malformed v1 before the valid one", path: "stripe", header: func() http.Header {
			h := stripeDelivery(stripeSecret, now, stripeBody)
			h.Set("Stripe-Signature", strings.Replace(h.Get("Stripe-Signature"), ",v1=", ",v1=zz,v1=", 1))
			return h
		}(), body: stripeBody, wantStatus: 202, wantPublish: true},
		{name: "stripe stale timestamp", path: "stripe", header: stripeDelivery(stripeSecret, now.Add(-6*time.Minute), stripeBody), body: stripeBody,
			wantStatus: 401, wantBody: "unauthorized\n", wantLog: "outside tolerance"},
		{name: "stripe signed form body", path: "stripe", header: stripeDelivery(stripeSecret, now, "id=evt_9"), body: "id=evt_9",
			wantStatus: 400, wantBody: "not JSON"},

		{name: "slack docs example (slash command)", path: "slack", now: time.Unix(slackDocTimestamp, 0),
			header: hdr("Content-Type", "application/x-www-form-urlencoded", "X-Slack-Request-Timestamp", fmt.Sprint(slackDocTimestamp), "X-Slack-Signature", slackDocSignature),
			body:   slackDocBody, wantStatus: 202, wantPublish: true, wantEvent: map[string]string{
				"Ce-Id": "398738663015.47445629121.803a0bc887a14d10d2c447fce8b6703c", "Ce-Type": "com.slack.slash_command", "Ce-Subject": "G8PSS9T3V"}},
		{name: "slack url_verification", path: "slack",
			header: slackDelivery(slackSecret, now, "application/json", `{"token":"t","challenge":"ch4ll","type":"url_verification"}`),
			body:   `{"token":"t","challenge":"ch4ll","type":"url_verification"}`, wantStatus: 200, wantBody: `{"challenge":"ch4ll"}`},
		{name: "slack url_verification unsigned", path: "slack", header: hdr("Content-Type", "application/json"),
			body: `{"challenge":"ch4ll","type":"url_verification"}`, wantStatus: 401},
		{name: "slack event", path: "slack",
			header: slackDelivery(slackSecret, now, "application/json", `{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention","channel":"C1"}}`),
			body:   `{"type":"event_callback","event_id":"Ev1","event":{"type":"app_mention","channel":"C1"}}`, wantStatus: 202, wantPublish: true,
			wantEvent: map[string]string{"Ce-Id": "Ev1", "Ce-Type": "com.slack.app_mention", "Ce-Subject": "C1"}},

		{name: "standard webhooks docs example", path: "svix", now: time.Unix(svixDocTimestamp, 0),
			header: hdr("Content-Type", "application/json", "webhook-id", svixDocID, "webhook-timestamp", fmt.Sprint(svixDocTimestamp), "webhook-signature", svixDocSignature),
			body:   svixDocBody, wantStatus: 202, wantPublish: true, wantEvent: map[string]string{
				"Ce-Id": svixDocID, "Ce-Type": "com.example.svix.message", "Ce-Source": "/webhooks/svix"}},
		{name: "standard webhooks: a malformed entry before the valid one", path: "svix", now: time.Unix(svixDocTimestamp, 0),
			header: hdr("Content-Type", "application/json", "webhook-id", svixDocID, "webhook-timestamp", fmt.Sprint(svixDocTimestamp), "webhook-signature", "v1,not-base64! v2,x "+svixDocSignature),
			body:   svixDocBody, wantStatus: 202, wantPublish: true},
		{name: "standard webhooks: only malformed entries", path: "svix", now: time.Unix(svixDocTimestamp, 0),
			header: hdr("Content-Type", "application/json", "webhook-id", svixDocID, "webhook-timestamp", fmt.Sprint(svixDocTimestamp), "webhook-signature", "v1,not-base64! v1,"),
			body:   svixDocBody, wantStatus: 401, wantLog: "webhook-signature: no usable v1 signature among 2 entries"},
		{name: "standard webhooks docs example replayed now", path: "svix",
			header: hdr("Content-Type", "application/json", "webhook-id", svixDocID, "webhook-timestamp", fmt.Sprint(svixDocTimestamp), "webhook-signature", svixDocSignature),
			body:   svixDocBody, wantStatus: 401, wantLog: "outside tolerance"},

		{name: "generic hmac", path: "shop", header: shopDelivery(shopSecret, "order-1", "raw order bytes"), body: "raw order bytes",
			wantStatus: 202, wantPublish: true, wantEvent: map[string]string{"Ce-Id": "order-1", "Ce-Type": "com.example.shop.order", "Content-Type": "text/plain"}},
		{name: "body over the limit", path: "shop", header: shopDelivery(shopSecret, "order-2", strings.Repeat("x", 2049)), body: strings.Repeat("x", 2049),
			wantStatus: 413, wantLog: "body over the limit"},
		{name: "unknown source", path: "gitlab", header: hdr(), body: "{}", wantStatus: 404},
		{name: "nested path", path: "github/extra", header: hdr(), body: "{}", wantStatus: 404},
		{name: "GET", method: http.MethodGet, path: "github", wantStatus: 405},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			at := now
			if !tc.now.IsZero() {
				at = tc.now
			}
			h := newHarness(t, harnessOptions{now: at})
			var logs lockedBuffer
			h.f.log = slog.New(slog.NewJSONHandler(&logs, nil))
			method := tc.method
			if method == "" {
				method = http.MethodPost
			}
			req, _ := http.NewRequest(method, h.srv.URL+"/"+tc.path, strings.NewReader(tc.body))
			for k, v := range tc.header {
				req.Header[k] = v
			}
			res, err := h.srv.Client().Do(req)
			if err != nil {
				t.Fatal(err)
			}
			b, _ := io.ReadAll(res.Body)
			res.Body.Close()

			if res.StatusCode != tc.wantStatus {
				t.Fatalf("status %d (%s), want %d; log: %s", res.StatusCode, b, tc.wantStatus, logs.String())
			}
			if tc.wantBody != "" && !strings.Contains(string(b), tc.wantBody) {
				t.Errorf("answer %q does not contain %q", b, tc.wantBody)
			}
			if res.StatusCode == 401 && string(b) != "unauthorized\n" {
				t.Errorf("401 answer %q says more than 'unauthorized'", b)
			}
			if tc.wantLog != "" && !strings.Contains(logs.String(), tc.wantLog) {
				t.Errorf("log does not say %q: %s", tc.wantLog, logs.String())
			}
			if res.StatusCode == 405 && res.Header.Get("Allow") != http.MethodPost {
				t.Errorf("405 without Allow: POST")
			}
			events := h.broker.events()
			if !tc.wantPublish {
				if n := h.broker.attempts.Load(); n != 0 {
					t.Fatalf("%d publish attempts, want none", n)
				}
				return
			}
			if len(events) != 1 {
				t.Fatalf("%d events published, want 1", len(events))
			}
			if string(events[0].body) != tc.body {
				t.Errorf("published data %q, want the original body %q", events[0].body, tc.body)
			}
			for k, v := range tc.wantEvent {
				if got := events[0].header.Get(k); got != v {
					t.Errorf("published %s = %q, want %q", k, got, v)
				}
			}
		})
	}
}

func TestOversizedBodyIsNotReadToTheEnd(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	// A chunked body (no Content-Length) far over the limit: MaxBytesReader must stop reading
	// at the limit, so the server answers before the client has written it all.
	pr, pw := io.Pipe()
	written := make(chan int64, 1)
	go func() {
		chunk := bytes.Repeat([]byte("x"), 1024)
		var n int64
		for n < 64<<20 {
			k, err := pw.Write(chunk)
			n += int64(k)
			if err != nil {
				break
			}
		}
		written <- n
		pw.Close()
	}()
	req, _ := http.NewRequest(http.MethodPost, h.srv.URL+"/shop", pr)
	for k, v := range shopDelivery(shopSecret, "big", "") {
		req.Header[k] = v
	}
	res, err := h.srv.Client().Do(req)
	if err != nil {
		t.Fatal(err)
	}
	res.Body.Close()
	pr.CloseWithError(io.ErrClosedPipe)
	if res.StatusCode != http.StatusRequestEntityTooLarge {
		t.Fatalf("status %d, want 413", res.StatusCode)
	}
	if n := <-written; n >= 64<<20 {
		t.Fatalf("the whole %d-byte body was consumed", n)
	}
}

func TestDuplicatesPublishOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	body := `{"repository":{"full_name":"octo/hello"}}`
	header := githubDelivery(githubSecret, "dup-1", "push", body)
	wantStatus := []int{202, 200, 200}
	for i, want := range wantStatus {
		if got, _, b := h.post(t, "github", header, body); got != want {
			t.Fatalf("send %d: status %d (%s), want %d", i+1, got, b, want)
		}
	}
	if n := len(h.broker.events()); n != 1 {
		t.Fatalf("%d events published for 3 sends, want 1", n)
	}
	// The same id from another source is another delivery.
	other := shopDelivery(shopSecret, "dup-1", "x")
	if got, _, _ := h.post(t, "shop", other, "x"); got != 202 {
		t.Fatalf("same id under another source: %d, want 202", got)
	}
	// The done mark lasts the provider's dedup TTL.
	pttl := h.redis.Client().PTTL(context.Background(), "knfaas:webhook:delivery:github:dup-1").Val()
	if pttl < 71*time.Hour || pttl > 72*time.Hour {
		t.Fatalf("dedup key TTL %s, want github's 72h", pttl)
	}
}

func TestConcurrentDuplicatesPublishOnce(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	// A slow broker keeps the first claim in flight while the others arrive.
	h.broker.delay.Store(int64(100 * time.Millisecond))
	body := `{"repository":{"full_name":"octo/hello"}}`
	header := githubDelivery(githubSecret, "storm-1", "push", body)
	const n = 50
	statuses := make(chan int, n)
	retryAfter := make(chan string, n)
	var wg sync.WaitGroup
	for range n {
		wg.Add(1)
		go func() {
			defer wg.Done()
			s, hd, _ := h.post(t, "github", header, body)
			statuses <- s
			if s == http.StatusConflict {
				retryAfter <- hd.Get("Retry-After")
			}
		}()
	}
	wg.Wait()
	close(statuses)
	close(retryAfter)
	count := map[int]int{}
	for s := range statuses {
		count[s]++
	}
	if count[202] != 1 || count[202]+count[200]+count[409] != n {
		t.Fatalf("statuses %v: want exactly one 202, the rest 200 (done) or 409 (in flight)", count)
	}
	for ra := range retryAfter {
		if ra == "" {
			t.Fatal("409 without Retry-After")
		}
	}
	if got := len(h.broker.events()); got != 1 {
		t.Fatalf("%d events published for %d concurrent duplicates, want 1", got, n)
	}
	if got := h.broker.attempts.Load(); got != 1 {
		t.Fatalf("%d publish attempts, want 1", got)
	}
	if s, _, _ := h.post(t, "github", header, body); s != 200 {
		t.Fatalf("after the storm: %d, want 200", s)
	}
}

func TestBrokerFailureReleasesTheClaim(t *testing.T) {
	tests := map[string]func(h *harness){
		"broker 500":  func(h *harness) { h.broker.status.Store(500) },
		"broker 400":  func(h *harness) { h.broker.status.Store(400) },
		"broker slow": func(h *harness) { h.broker.delay.Store(int64(2 * time.Second)) },
		"broker down": func(h *harness) { h.broker.srv.Close() },
	}
	for name, breakBroker := range tests {
		t.Run(name, func(t *testing.T) {
			h := newHarness(t, harnessOptions{publishTimeout: 300 * time.Millisecond})
			breakBroker(h)
			body := `{"id":"evt_r","type":"charge.failed","data":{"object":{"id":"ch_r"}}}`
			s, hd, _ := h.post(t, "stripe", stripeDelivery(stripeSecret, time.Now(), body), body)
			if s != http.StatusServiceUnavailable || hd.Get("Retry-After") != "7" {
				t.Fatalf("broken broker: status %d Retry-After %q, want 503 and 7", s, hd.Get("Retry-After"))
			}
			if n := h.redis.Client().Exists(context.Background(), "knfaas:webhook:delivery:stripe:evt_r").Val(); n != 0 {
				t.Fatal("claim not released after the failed publish")
			}
			// The broker recovers; the sender's retry goes through and is published exactly once.
			if name == "broker down" {
				h.broker.restart(t)
			}
			h.broker.status.Store(0)
			h.broker.delay.Store(0)
			if s, _, b := h.post(t, "stripe", stripeDelivery(stripeSecret, time.Now(), body), body); s != 202 {
				t.Fatalf("retry: %d (%s), want 202", s, b)
			}
			if s, _, _ := h.post(t, "stripe", stripeDelivery(stripeSecret, time.Now(), body), body); s != 200 {
				t.Fatalf("retry after success: %d, want 200", s)
			}
			if got := len(h.broker.events()); got != 1 {
				t.Fatalf("%d events accepted, want exactly 1", got)
			}
		})
	}
}

func TestRedisDownAnswers503WithoutPublishing(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	h.redis.Kill()
	body := `{"repository":{"full_name":"octo/hello"}}`
	s, hd, _ := h.post(t, "github", githubDelivery(githubSecret, "r-1", "push", body), body)
	if s != http.StatusServiceUnavailable || hd.Get("Retry-After") == "" {
		t.Fatalf("status %d Retry-After %q, want 503 with Retry-After", s, hd.Get("Retry-After"))
	}
	if n := h.broker.attempts.Load(); n != 0 {
		t.Fatalf("%d publishes without a dedup claim, want 0", n)
	}
	if ready, _ := h.f.Ready(context.Background()); ready {
		t.Fatal("Ready with Redis down")
	}
}

func TestReadyOnlyAfterStart(t *testing.T) {
	f := New()
	if ready, _ := f.Ready(context.Background()); ready {
		t.Fatal("ready before Start")
	}
	h := newHarness(t, harnessOptions{})
	if ready, err := h.f.Ready(context.Background()); !ready || err != nil {
		t.Fatalf("not ready after Start: %v", err)
	}
}

// githubOnly is a valid sources file with one GitHub source.
const githubOnly = "sources:\n- name: gh\n  provider: github\n  secretEnv: [GITHUB_WEBHOOK_SECRET]\n"

// TestStartDefaults: unset WEBHOOK_* variables take the defaults their tags state.
func TestStartDefaults(t *testing.T) {
	setSecrets(t)
	path := filepath.Join(t.TempDir(), "sources.yaml")
	if err := os.WriteFile(path, []byte(githubOnly), 0o600); err != nil {
		t.Fatal(err)
	}
	t.Setenv("WEBHOOK_SOURCES_FILE", path)
	t.Setenv("K_SINK", "http://127.0.0.1:1")
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
	f := New()
	if err := f.Start(context.Background(), nil); err != nil {
		t.Fatal(err)
	}
	defer f.Stop(context.Background())
	st := f.state.Load()
	if st.cfg.PublishTimeout != 5*time.Second || st.cfg.RetryAfter != 10*time.Second || st.lease != 10*time.Second {
		t.Errorf("publish timeout %s, retry after %s, lease %s; want 5s, 10s, 10s", st.cfg.PublishTimeout, st.cfg.RetryAfter, st.lease)
	}
}

func TestStartRejectsBadConfiguration(t *testing.T) {
	tests := map[string]struct {
		sources string
		env     map[string]string
		want    []string
	}{
		"unknown provider": {"sources:\n- name: gh\n  provider: gitlab\n  secretEnv: [GITHUB_WEBHOOK_SECRET]\n", nil,
			[]string{`source "gh"`, "provider"}},
		"secret env unset": {"sources:\n- name: gh\n  provider: github\n  secretEnv: [NOT_SET_ANYWHERE]\n", nil,
			[]string{`source "gh"`, "secretEnv", "NOT_SET_ANYWHERE"}},
		"missing file": {"", nil, []string{"reading sources file"}},
		"template secret": {"sources:\n- name: gh\n  provider: github\n  secretEnv: [GITHUB_WEBHOOK_SECRET]\n",
			map[string]string{"GITHUB_WEBHOOK_SECRET": "CHANGE-ME-github-webhook-secret"},
			[]string{`source "gh"`, "GITHUB_WEBHOOK_SECRET", `"CHANGE-ME-github-webhook-secret"`}},
		"template previous secret": {"sources:\n- name: gh\n  provider: github\n  secretEnv: [GITHUB_WEBHOOK_SECRET, GITHUB_WEBHOOK_SECRET_PREVIOUS]\n",
			map[string]string{"GITHUB_WEBHOOK_SECRET_PREVIOUS": "CHANGE-ME"},
			[]string{"GITHUB_WEBHOOK_SECRET_PREVIOUS", "template placeholder"}},
		"template standard webhooks secret": {"sources:\n- name: svix\n  provider: standardwebhooks\n  type: t\n  secretEnv: [SVIX_WEBHOOK_SECRET]\n",
			map[string]string{"SVIX_WEBHOOK_SECRET": "whsec_Q0hBTkdFLU1FLWdlbmVyYXRlLWEtcmVhbC1zZWNyZXQ="},
			[]string{`source "svix"`, "SVIX_WEBHOOK_SECRET", "CHANGE-ME"}},
		"no K_SINK": {"sources:\n- name: gh\n  provider: github\n  secretEnv: [GITHUB_WEBHOOK_SECRET]\n", map[string]string{"K_SINK": ""}, []string{"K_SINK"}},
		// A bad timeout used to be replaced by its default without a word.
		"publish timeout zero":           {githubOnly, map[string]string{"WEBHOOK_PUBLISH_TIMEOUT": "0s"}, []string{"WEBHOOK_PUBLISH_TIMEOUT (0s) must be positive"}},
		"publish timeout negative":       {githubOnly, map[string]string{"WEBHOOK_PUBLISH_TIMEOUT": "-5s"}, []string{"WEBHOOK_PUBLISH_TIMEOUT (-5s) must be positive"}},
		"publish timeout not a duration": {githubOnly, map[string]string{"WEBHOOK_PUBLISH_TIMEOUT": "5"}, []string{"WEBHOOK_PUBLISH_TIMEOUT"}},
		"retry after zero":               {githubOnly, map[string]string{"WEBHOOK_RETRY_AFTER": "0s"}, []string{"WEBHOOK_RETRY_AFTER (0s) must be positive"}},
		"retry after negative":           {githubOnly, map[string]string{"WEBHOOK_RETRY_AFTER": "-1m"}, []string{"WEBHOOK_RETRY_AFTER (-1m0s) must be positive"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			setSecrets(t)
			dir := t.TempDir()
			path := filepath.Join(dir, "sources.yaml")
			if tc.sources != "" {
				if err := os.WriteFile(path, []byte(tc.sources), 0o600); err != nil {
					t.Fatal(err)
				}
			}
			t.Setenv("WEBHOOK_SOURCES_FILE", path)
			t.Setenv("K_SINK", "http://127.0.0.1:1")
			t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			f := New()
			err := f.Start(context.Background(), nil)
			if err == nil {
				t.Fatal("Start accepted a bad configuration")
			}
			for _, w := range tc.want {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("error %q does not mention %q", err, w)
				}
			}
			if ready, _ := f.Ready(context.Background()); ready {
				t.Fatal("ready after a failed Start")
			}
		})
	}
}

func TestSlackChallengeIsJSON(t *testing.T) {
	h := newHarness(t, harnessOptions{})
	body := `{"token":"t","challenge":"abc123","type":"url_verification"}`
	s, hd, b := h.post(t, "slack", slackDelivery(slackSecret, time.Now(), "application/json", body), body)
	var got map[string]string
	if s != 200 || hd.Get("Content-Type") != "application/json" || json.Unmarshal([]byte(b), &got) != nil || got["challenge"] != "abc123" {
		t.Fatalf("challenge answer %d %q %q", s, hd.Get("Content-Type"), b)
	}
}
