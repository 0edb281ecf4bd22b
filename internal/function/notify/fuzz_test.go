package notify

import (
	"net/url"
	"strings"
	"testing"
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
