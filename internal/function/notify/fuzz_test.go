package notify

import (
	"bytes"
	"net/url"
	"strings"
	"testing"
	"time"
)

// FuzzParse feeds arbitrary documents to the endpoints parser. Invariants: no panic; every
// accepted endpoint has a valid URL, a signer with one or two keys, a bounded timeout and
// concurrency, and no header the delivery sets itself.
func FuzzParse(f *testing.F) {
	f.Add([]byte("endpoints:\n- name: a\n  url: https://a.example/x\n  types: [t.*]\n  secretEnv: [ORDERS, ORDERS_PREVIOUS]\n"))
	f.Add([]byte("endpoints:\n- {name: b, url: 'http://[::1]:80', types: ['*'], secretEnv: [ORDERS], timeout: 1s, concurrency: 3, headers: {X-K: v}}\n"))
	f.Add([]byte("endpoints: []\n"))
	f.Fuzz(func(t *testing.T, doc []byte) {
		eps, err := Parse(doc, secrets)
		if err != nil {
			return
		}
		for _, ep := range eps {
			if err := ValidateURL(ep.URL); err != nil {
				t.Fatalf("endpoint %q accepted with URL %q: %v", ep.Name, ep.URL, err)
			}
			if ep.Signer == nil || len(ep.Signer.keys) < 1 || len(ep.Signer.keys) > MaxSecrets {
				t.Fatalf("endpoint %q accepted without one or two keys", ep.Name)
			}
			if ep.Timeout <= 0 || ep.Timeout > MaxTimeout || ep.Concurrency < 1 || ep.Concurrency > MaxConcurrency {
				t.Fatalf("endpoint %q accepted with timeout %s, concurrency %d", ep.Name, ep.Timeout, ep.Concurrency)
			}
			for h := range ep.Headers {
				l := strings.ToLower(h)
				if strings.HasPrefix(l, "webhook-") || strings.HasPrefix(l, "ce-") || l == "content-type" || l == "host" {
					t.Fatalf("endpoint %q may set %q", ep.Name, h)
				}
			}
		}
	})
}

// FuzzValidateURL checks that an accepted URL parses to http or https with a host, no user
// info and no fragment.
func FuzzValidateURL(f *testing.F) {
	for _, s := range []string{"https://a.example/x", "http://127.0.0.1:1/", "https://u@h/", "http://[fe80::1%25eth0]/", "https://h/#f", "javascript:alert(1)"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, raw string) {
		if ValidateURL(raw) != nil {
			return
		}
		u, err := url.Parse(raw)
		if err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Hostname() == "" || u.User != nil || u.Fragment != "" {
			t.Fatalf("accepted %q (%+v, %v)", raw, u, err)
		}
	})
}

// FuzzEndpointRequest feeds arbitrary bodies to the API's request parser and validation.
// Invariants: no panic; an accepted request was at most MaxRequestBytes, names a valid
// endpoint (the same checks as a ConfigMap entry) and, when it carries a secret, a whsec_ one
// of at least 16 bytes; a refused one names at least one field.
func FuzzEndpointRequest(f *testing.F) {
	f.Add([]byte(`{"name":"a","url":"https://a.example/x","types":["t.*"]}`))
	f.Add([]byte(`{"name":"b","url":"http://[::1]:80","types":["*"],"timeout":"1s","concurrency":3,"headers":{"X-K":"v"},"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"}`))
	f.Add([]byte(`{"name":"c","url":"https://c.example","types":["x"],"rateLimit":-1,"extra":1}`))
	f.Fuzz(func(t *testing.T, body []byte) {
		var q EndpointRequest
		err := DecodeRequest(bytes.NewReader(body), &q)
		if err == nil {
			err = q.Validate(true)
		}
		if err != nil {
			if len(FieldErrors(err)) == 0 {
				t.Fatalf("refused %q without naming a field: %v", body, err)
			}
			return
		}
		if len(body) > MaxRequestBytes {
			t.Fatalf("accepted %d bytes", len(body))
		}
		if ValidateURL(q.URL) != nil || !namePattern.MatchString(q.Name) || len(q.Types) == 0 {
			t.Fatalf("accepted %+v", q)
		}
		if q.Secret != "" {
			if k, err := decodeSecret(q.Secret); err != nil || len(k) < 16 {
				t.Fatalf("accepted secret %q", q.Secret)
			}
		}
		now := time.Now()
		s := StoredEndpoint{Name: q.Name, URL: q.URL, Types: q.Types, Headers: q.Headers, Timeout: q.Timeout,
			Concurrency: q.Concurrency, RateLimit: q.RateLimit, Secret: NewSecret()}
		if _, _, err := s.Endpoint(now); err != nil {
			t.Fatalf("accepted request does not build: %v", err)
		}
	})
}

// FuzzRotateAndReplayRequest feeds arbitrary bodies to the rotation and replay parsers.
// Invariants: no panic; an accepted overlap is within [0, MaxRotationOverlap]; an accepted
// range has since before until; a refusal names a field.
func FuzzRotateAndReplayRequest(f *testing.F) {
	f.Add([]byte(`{"secret":"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw","overlap":"1h"}`), []byte(`{"since":"2026-01-01T00:00:00Z","until":"2026-01-02T00:00:00Z"}`))
	f.Add([]byte(`{"overlap":"-1s"}`), []byte(`{"since":"2026-01-02T00:00:00Z","until":"2026-01-01T00:00:00Z"}`))
	f.Add([]byte(`{}`), []byte(`{"since":"yesterday"}`))
	now := time.Date(2026, 6, 1, 0, 0, 0, 0, time.UTC)
	f.Fuzz(func(t *testing.T, rotate, replay []byte) {
		var rq RotateRequest
		if err := DecodeRequest(bytes.NewReader(rotate), &rq); err == nil {
			d, err := ParseOverlap(rq.Overlap)
			if err == nil && (d < 0 || d > MaxRotationOverlap) {
				t.Fatalf("overlap %q accepted as %s", rq.Overlap, d)
			}
			if err != nil && len(FieldErrors(err)) == 0 {
				t.Fatalf("overlap %q refused without a field: %v", rq.Overlap, err)
			}
		} else if len(FieldErrors(err)) == 0 {
			t.Fatalf("rotation %q refused without a field: %v", rotate, err)
		}
		var pq ReplayRequest
		if err := DecodeRequest(bytes.NewReader(replay), &pq); err != nil {
			if len(FieldErrors(err)) == 0 {
				t.Fatalf("replay %q refused without a field: %v", replay, err)
			}
			return
		}
		since, until, err := pq.Parse(now)
		if err != nil {
			if len(FieldErrors(err)) == 0 {
				t.Fatalf("replay %+v refused without a field: %v", pq, err)
			}
			return
		}
		if !since.Before(until) {
			t.Fatalf("replay %+v accepted with since %s not before until %s", pq, since, until)
		}
	})
}
