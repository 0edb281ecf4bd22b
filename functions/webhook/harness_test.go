package main

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"crypto/sha512"
	"encoding/base64"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// Secrets of testdata/sources.yaml. Slack's and Standard Webhooks' are the ones of their
// published examples, so those examples can be posted through the whole function.
const (
	githubSecret     = "gh-current"
	githubPrevSecret = "It's a Secret to Everybody" // GitHub's docs example secret
	stripeSecret     = "whsec_stripe_test"
	slackSecret      = "8f742231b10e8888abcd99yyyzzz85a5"
	svixSecret       = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
	shopSecret       = "shop"
	minioToken       = "minio-token-0123456789abcdef"
)

func setSecrets(t testing.TB) {
	for k, v := range map[string]string{
		"GITHUB_WEBHOOK_SECRET":          githubSecret,
		"GITHUB_WEBHOOK_SECRET_PREVIOUS": githubPrevSecret,
		"STRIPE_WEBHOOK_SECRET":          stripeSecret,
		"SLACK_SIGNING_SECRET":           slackSecret,
		"SVIX_WEBHOOK_SECRET":            svixSecret,
		"SHOP_WEBHOOK_SECRET":            shopSecret,
		"MINIO_WEBHOOK_TOKEN":            minioToken,
	} {
		t.Setenv(k, v)
	}
}

// received is one event the fake broker accepted.
type received struct {
	header http.Header
	body   []byte
}

// fakeBroker stands in for the Broker ingress. It answers status (202 by default) after delay;
// an event counts as accepted only when the broker answered 2xx to a sender still waiting, the
// way a real broker's 202 means "persisted".
type fakeBroker struct {
	srv      *httptest.Server
	status   atomic.Int32
	delay    atomic.Int64
	attempts atomic.Int32
	mu       sync.Mutex
	accepted []received
}

func newFakeBroker(t testing.TB) *fakeBroker {
	b := &fakeBroker{}
	b.srv = httptest.NewServer(http.HandlerFunc(b.handle))
	t.Cleanup(func() { b.srv.Close() })
	return b
}

func (b *fakeBroker) handle(w http.ResponseWriter, r *http.Request) {
	b.attempts.Add(1)
	body, _ := io.ReadAll(r.Body)
	if d := time.Duration(b.delay.Load()); d > 0 {
		select {
		case <-time.After(d):
		case <-r.Context().Done():
			return // the sender gave up: not accepted
		}
	}
	status := int(b.status.Load())
	if status == 0 {
		status = http.StatusAccepted
	}
	if status < 300 {
		b.mu.Lock()
		b.accepted = append(b.accepted, received{header: r.Header.Clone(), body: body})
		b.mu.Unlock()
	}
	w.WriteHeader(status)
}

// restart serves again on the address of the closed server (the broker came back).
func (b *fakeBroker) restart(t testing.TB) {
	t.Helper()
	addr := b.srv.Listener.Addr().String()
	var l net.Listener
	var err error
	for range 50 {
		if l, err = net.Listen("tcp", addr); err == nil {
			break
		}
		time.Sleep(20 * time.Millisecond)
	}
	if err != nil {
		t.Fatalf("re-listening on %s: %v", addr, err)
	}
	srv := httptest.NewUnstartedServer(http.HandlerFunc(b.handle))
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	b.srv = srv
}

func (b *fakeBroker) events() []received {
	b.mu.Lock()
	defer b.mu.Unlock()
	return append([]received(nil), b.accepted...)
}

// harness is a started Function behind a real HTTP server, with a real redis-server and a fake
// broker.
type harness struct {
	f      *Function
	srv    *httptest.Server
	broker *fakeBroker
	redis  *redistest.Server
}

type harnessOptions struct {
	publishTimeout time.Duration
	now            time.Time
}

func newHarness(t testing.TB, opts harnessOptions) *harness {
	t.Helper()
	setSecrets(t)
	h := &harness{broker: newFakeBroker(t), redis: redistest.Start(t, redistest.Options{})}
	t.Setenv("REDIS_URL", h.redis.URL())
	t.Setenv("K_SINK", h.broker.srv.URL)
	t.Setenv("WEBHOOK_SOURCES_FILE", "testdata/sources.yaml")
	t.Setenv("WEBHOOK_RETRY_AFTER", "7s")
	timeout := opts.publishTimeout
	if timeout == 0 {
		timeout = 2 * time.Second
	}
	t.Setenv("WEBHOOK_PUBLISH_TIMEOUT", timeout.String())
	h.f = New()
	h.f.log = discardLogger()
	if !opts.now.IsZero() {
		h.f.now = func() time.Time { return opts.now }
	}
	if err := h.f.Start(context.Background(), nil); err != nil {
		t.Fatalf("Start: %v", err)
	}
	t.Cleanup(func() { _ = h.f.Stop(context.Background()) })
	h.srv = httptest.NewServer(http.HandlerFunc(h.f.Handle))
	t.Cleanup(h.srv.Close)
	return h
}

// post sends body to /<path> with headers and returns status, headers and body of the answer.
func (h *harness) post(t testing.TB, path string, header http.Header, body string) (int, http.Header, string) {
	t.Helper()
	req, err := http.NewRequest(http.MethodPost, h.srv.URL+"/"+path, strings.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	res, err := h.srv.Client().Do(req)
	if err != nil {
		t.Fatalf("POST /%s: %v", path, err)
	}
	defer res.Body.Close()
	b, _ := io.ReadAll(res.Body)
	return res.StatusCode, res.Header, string(b)
}

// Signed requests, computed with crypto/hmac directly rather than the signature package, so
// the function is checked against an independent signer.

func githubDelivery(secret, id, event, body string) http.Header {
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(body))
	h := http.Header{}
	h.Set("Content-Type", "application/json")
	h.Set("X-GitHub-Event", event)
	h.Set("X-GitHub-Delivery", id)
	h.Set("X-Hub-Signature-256", "sha256="+hex.EncodeToString(mac.Sum(nil)))
	return h
}

func stripeDelivery(secret string, ts time.Time, body string) http.Header {
	t := strconv.FormatInt(ts.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte(t + "." + body))
	h := http.Header{}
	h.Set("Content-Type", "application/json; charset=utf-8")
	h.Set("Stripe-Signature", "t="+t+",v1="+hex.EncodeToString(mac.Sum(nil)))
	return h
}

func slackDelivery(secret string, ts time.Time, contentType, body string) http.Header {
	t := strconv.FormatInt(ts.Unix(), 10)
	mac := hmac.New(sha256.New, []byte(secret))
	mac.Write([]byte("v0:" + t + ":" + body))
	h := http.Header{}
	h.Set("Content-Type", contentType)
	h.Set("X-Slack-Request-Timestamp", t)
	h.Set("X-Slack-Signature", "v0="+hex.EncodeToString(mac.Sum(nil)))
	return h
}

func shopDelivery(secret, id, body string) http.Header {
	mac := hmac.New(sha512.New, []byte(secret))
	mac.Write([]byte(body))
	h := http.Header{}
	h.Set("Content-Type", "text/plain")
	h.Set("X-Shop-Delivery", id)
	h.Set("X-Shop-Signature", "sha512="+base64.StdEncoding.EncodeToString(mac.Sum(nil)))
	return h
}
