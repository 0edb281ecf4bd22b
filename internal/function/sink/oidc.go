package sink

import (
	"net/http"
	"os"
	"strings"
	"sync"
	"time"
)

// OIDCTokenFile is where a SinkBinding mounts its OIDC token when Knative's OIDC authentication
// is enabled; the sender must present it to the sink (the Broker) as a bearer token, which is
// what the Broker's EventPolicies authorise (docs/eventpolicy).
const OIDCTokenFile = "/oidc/token"

// oidcReread bounds how stale the token may be: Knative renews the Secret well before expiry and
// the kubelet refreshes the mounted file within about a minute.
const oidcReread = 30 * time.Second

// oidcTransport adds "Authorization: Bearer <token>" from a file when the file exists; without
// the file (knfaas up, OIDC disabled) requests go out unchanged.
type oidcTransport struct {
	next http.RoundTripper
	path string
	now  func() time.Time

	mu     sync.Mutex
	token  string
	readAt time.Time
}

func withOIDCToken(next http.RoundTripper, path string) http.RoundTripper {
	return &oidcTransport{next: next, path: path, now: time.Now}
}

func (t *oidcTransport) current() string {
	t.mu.Lock()
	defer t.mu.Unlock()
	if now := t.now(); t.readAt.IsZero() || now.Sub(t.readAt) >= oidcReread {
		b, err := os.ReadFile(t.path)
		if err != nil {
			b = nil // absent: OIDC is off for this sender
		}
		t.token, t.readAt = strings.TrimSpace(string(b)), now
	}
	return t.token
}

// RoundTrip implements http.RoundTripper.
func (t *oidcTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	tok := t.current()
	if tok == "" || r.Header.Get("Authorization") != "" {
		return t.next.RoundTrip(r)
	}
	r = r.Clone(r.Context())
	r.Header.Set("Authorization", "Bearer "+tok)
	return t.next.RoundTrip(r)
}
