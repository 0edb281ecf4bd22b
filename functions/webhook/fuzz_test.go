package main

import (
	"bufio"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/base64"
	"encoding/hex"
	"net/http"
	"net/http/httptest"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"github.com/cloudevents/sdk-go/v2/event"

	"github.com/knfaas/knfaas/internal/function/webhook/dedup"
	"github.com/knfaas/knfaas/internal/function/webhook/signature"
	"github.com/knfaas/knfaas/internal/function/webhook/source"
)

// stubClaims grants every claim, so the fuzzer reaches the publish path without Redis.
type stubClaims struct{ claims atomic.Int32 }

func (s *stubClaims) Claim(context.Context, string, time.Duration) (dedup.Claim, dedup.Outcome, error) {
	s.claims.Add(1)
	return dedup.Claim{}, dedup.Claimed, nil
}
func (s *stubClaims) Complete(context.Context, dedup.Claim, time.Duration) (bool, error) {
	return true, nil
}
func (s *stubClaims) Release(context.Context, dedup.Claim) (bool, error) { return true, nil }
func (s *stubClaims) Close()                                             {}

type stubPublisher struct{ sent atomic.Int32 }

func (p *stubPublisher) Send(context.Context, event.Event) error { p.sent.Add(1); return nil }

// fuzzNow is the time the fuzzed requests are verified at (the Slack docs example's).
var fuzzNow = time.Unix(slackDocTimestamp, 0)

func fuzzSecrets(name string) (string, bool) {
	v, ok := map[string]string{
		"GITHUB_WEBHOOK_SECRET":          githubSecret,
		"GITHUB_WEBHOOK_SECRET_PREVIOUS": githubPrevSecret,
		"STRIPE_WEBHOOK_SECRET":          stripeSecret,
		"SLACK_SIGNING_SECRET":           slackSecret,
		"SVIX_WEBHOOK_SECRET":            svixSecret,
		"SHOP_WEBHOOK_SECRET":            shopSecret,
		"MINIO_WEBHOOK_TOKEN":            minioToken,
	}[name]
	return v, ok
}

// githubGenuine is an oracle independent of the signature package: does the request carry
// a GitHub signature over exactly this body under one of the configured secrets?
func githubGenuine(h http.Header, body []byte) bool {
	for _, secret := range []string{githubSecret, githubPrevSecret} {
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		if strings.EqualFold(h.Get("X-Hub-Signature-256"), want) {
			return true
		}
	}
	return false
}

// FuzzHandle drives the whole request path with arbitrary methods, paths, headers ("Name:
// value" lines) and bodies. Invariants: no panic; nothing is claimed or published, and no 2xx
// is answered, unless the delivery verifies; a GitHub 2xx needs a signature that an
// independent HMAC check confirms.
func FuzzHandle(f *testing.F) {
	pushBody := `{"repository":{"full_name":"octo/hello"}}`
	f.Add("POST", "/github", headerLines(githubDelivery(githubSecret, "d-1", "push", pushBody)), []byte(pushBody))
	f.Add("POST", "/slack", "Content-Type: application/x-www-form-urlencoded\nX-Slack-Request-Timestamp: 1531420618\nX-Slack-Signature: "+slackDocSignature, []byte(slackDocBody))
	f.Add("POST", "/stripe", "Stripe-Signature: t=1531420618,v1=00", []byte(`{"id":"evt_1","type":"x"}`))
	f.Add("GET", "/", "", []byte(nil))
	// Multi-signature headers: an unusable entry before the genuine one.
	stripeBody := `{"id":"evt_2","type":"invoice.paid"}`
	stripeMulti := stripeDelivery(stripeSecret, fuzzNow, stripeBody)
	stripeMulti.Set("Stripe-Signature", strings.Replace(stripeMulti.Get("Stripe-Signature"), ",v1=", ",v1=zz,v1=", 1))
	f.Add("POST", "/stripe", headerLines(stripeMulti), []byte(stripeBody))
	svixKey, err := signature.DecodeStandardSecret(svixSecret)
	if err != nil {
		f.Fatal(err)
	}
	ts := strconv.FormatInt(fuzzNow.Unix(), 10)
	svixBody := `{"n":1}`
	svixSig := base64.StdEncoding.EncodeToString(signature.Sum(signature.SHA256, svixKey, []byte("msg_1."+ts+"."+svixBody)))
	f.Add("POST", "/svix", "Content-Type: application/json\nwebhook-id: msg_1\nwebhook-timestamp: "+ts+"\nwebhook-signature: v1,!!! v2,x v1,"+svixSig, []byte(svixBody))

	f.Add("POST", "/minio", "Authorization: Bearer "+minioToken, []byte(minioTwoRecords))

	srcs, err := source.Load("testdata/sources.yaml", fuzzSecrets)
	if err != nil {
		f.Fatal(err)
	}
	f.Fuzz(func(t *testing.T, method, path, headers string, body []byte) {
		if !validMethod(method) || !strings.HasPrefix(path, "/") {
			return
		}
		req, err := http.NewRequest(method, "http://webhook.local"+path, strings.NewReader(string(body)))
		if err != nil {
			return
		}
		sc := bufio.NewScanner(strings.NewReader(headers))
		for sc.Scan() {
			if k, v, ok := strings.Cut(sc.Text(), ":"); ok {
				req.Header.Add(strings.TrimSpace(k), strings.TrimSpace(v))
			}
		}
		claims, pub := &stubClaims{}, &stubPublisher{}
		fn := &Function{log: discardLogger(), now: func() time.Time { return fuzzNow }}
		fn.install(Config{PublishTimeout: time.Second, RetryAfter: time.Second}, srcs, claims, pub, nil)
		rec := httptest.NewRecorder()
		fn.Handle(rec, req)

		name := strings.TrimPrefix(req.URL.Path, "/")
		src, known := srcs[name]
		verified := known && method == http.MethodPost && src.Verifier.Verify(req.Header, body, fuzzNow) == nil
		if rec.Code < 300 && !verified {
			t.Fatalf("%s %s answered %d without a verified signature", method, path, rec.Code)
		}
		if (claims.claims.Load() > 0 || pub.sent.Load() > 0) && !verified {
			t.Fatalf("%s %s claimed or published without a verified signature", method, path)
		}
		if name == "github" && rec.Code < 300 && !githubGenuine(req.Header, body) {
			t.Fatalf("github delivery accepted that an independent HMAC check refuses")
		}
		allowed := int32(1) // one event per request, or one per part of an S3 notification
		if verified {
			if d, err := src.Describe(req.Header, body); err == nil && len(d.Parts) > 0 {
				allowed = int32(len(d.Parts))
			}
		}
		if pub.sent.Load() > allowed {
			t.Fatalf("one request published %d times, want at most %d", pub.sent.Load(), allowed)
		}
	})
}

func validMethod(m string) bool {
	switch m {
	case http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete, http.MethodPatch, http.MethodHead, http.MethodOptions:
		return true
	}
	return false
}

func headerLines(h http.Header) string {
	var b strings.Builder
	for k, vs := range h {
		for _, v := range vs {
			b.WriteString(k + ": " + v + "\n")
		}
	}
	return b.String()
}
