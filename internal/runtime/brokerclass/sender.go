package brokerclass

import (
	"context"
	"fmt"
	"net/http"
	"sync"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
)

// ProxiedAuthorizationHeader carries a sender's "Bearer <token>" when its request reaches the
// ingress through the Kubernetes API server's service proxy: the API server authenticates the
// caller by the Authorization header and removes it before proxying. The ingress verifies a
// token in this header exactly as one in Authorization (which wins when both are set).
const ProxiedAuthorizationHeader = "Knfaas-Broker-Authorization"

// RedriveServiceAccount is the ServiceAccount, in the platform's namespace, whose identity
// `knfaas dlq redrive` presents to a Broker that requires OIDC authentication: the install
// manifests create it, and an EventPolicy allows it like any other sender
// (system:serviceaccount:<namespace>:knfaas-redrive). Whoever may create tokens for it
// (serviceaccounts/token) may redrive.
const RedriveServiceAccount = "knfaas-redrive"

// tokenLifetime is how long a requested token is valid; renewAhead is how long before its
// expiry it is replaced.
const (
	tokenLifetime = time.Hour
	renewAhead    = 10 * time.Minute
)

// TokenTransport sends every request with a token of a ServiceAccount for an audience in a
// header, as "Bearer <token>". It requests the token from the Kubernetes API (TokenRequest)
// on first use and again shortly before it expires.
type TokenTransport struct {
	next     http.RoundTripper
	accounts corev1client.ServiceAccountsGetter
	sa       types.NamespacedName
	audience string
	header   string
	now      func() time.Time

	mu      sync.Mutex
	token   string
	expires time.Time
}

// NewTokenTransport returns a TokenTransport over next for ServiceAccount sa, audience and
// header (Authorization, or ProxiedAuthorizationHeader through the API server's proxy).
func NewTokenTransport(accounts corev1client.ServiceAccountsGetter, sa types.NamespacedName, audience, header string, next http.RoundTripper) *TokenTransport {
	return &TokenTransport{next: next, accounts: accounts, sa: sa, audience: audience, header: header, now: time.Now}
}

// Token returns a token valid for at least renewAhead, requesting a new one when needed.
func (t *TokenTransport) Token(ctx context.Context) (string, error) {
	t.mu.Lock()
	defer t.mu.Unlock()
	if t.token != "" && t.now().Add(renewAhead).Before(t.expires) {
		return t.token, nil
	}
	seconds := int64(tokenLifetime / time.Second)
	tr, err := t.accounts.ServiceAccounts(t.sa.Namespace).CreateToken(ctx, t.sa.Name, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{t.audience}, ExpirationSeconds: &seconds},
	}, metav1.CreateOptions{})
	if err != nil {
		return "", fmt.Errorf("requesting a token of ServiceAccount %s for audience %s: %w", t.sa, t.audience, err)
	}
	t.token, t.expires = tr.Status.Token, tr.Status.ExpirationTimestamp.Time
	return t.token, nil
}

// RoundTrip implements http.RoundTripper.
func (t *TokenTransport) RoundTrip(r *http.Request) (*http.Response, error) {
	tok, err := t.Token(r.Context())
	if err != nil {
		if r.Body != nil {
			_ = r.Body.Close()
		}
		return nil, err
	}
	r = r.Clone(r.Context())
	r.Header.Set(t.header, "Bearer "+tok)
	return t.next.RoundTrip(r)
}
