package brokerclass

import (
	"context"
	"io"
	"log/slog"
	"net/http"
	"net/http/httptest"
	"strings"
	"testing"
)

// TestAuthorizerWithoutIssuer: the authorizer passes everything while OIDC authentication is off
// and requests for Brokers it does not know; with it on, a request without a token, or with one
// that cannot be verified (the issuer's keys are not loaded), never reaches the ingress. The
// verification of real tokens is TestIngressAuthorizationAgainstAPIServer's (e2e).
func TestAuthorizerWithoutIssuer(t *testing.T) {
	log := slog.New(slog.NewTextHandler(io.Discard, nil))
	oidcOn := map[string]string{"authentication-oidc": "enabled", "oidc-discovery-base-url": "http://127.0.0.1:1"}
	secure := Broker{Namespace: "ns", Name: "b", Audience: "eventing.knative.dev/broker/ns/b"}
	for _, tc := range []struct {
		name      string
		features  map[string]string
		path      string
		token     string
		want      int
		wantReady bool
	}{
		{name: "OIDC off: no token reaches the ingress", path: "/ns/b", want: http.StatusAccepted, wantReady: true},
		{name: "OIDC on: unknown Broker reaches the ingress", features: oidcOn, path: "/ns/other", want: http.StatusAccepted},
		{name: "OIDC on: no token", features: oidcOn, path: "/ns/b", want: http.StatusUnauthorized},
		{name: "OIDC on: token the issuer cannot verify", features: oidcOn, path: "/ns/b", token: "a.b.c", want: http.StatusUnauthorized},
	} {
		t.Run(tc.name, func(t *testing.T) {
			reached := false
			next := http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
				reached = true
				w.WriteHeader(http.StatusAccepted)
			})
			a := NewAuthorizer(context.Background(), nil, nil, next, log)
			a.Apply(&Contract{Features: tc.features, Brokers: []Broker{secure}})
			if got := a.Ready(); got != tc.wantReady {
				t.Errorf("Ready() = %v, want %v", got, tc.wantReady)
			}
			req := httptest.NewRequest(http.MethodPost, tc.path, strings.NewReader("{}"))
			if tc.token != "" {
				req.Header.Set("Authorization", "Bearer "+tc.token)
			}
			rec := httptest.NewRecorder()
			a.ServeHTTP(rec, req)
			if rec.Code != tc.want {
				t.Errorf("answered %d, want %d", rec.Code, tc.want)
			}
			if reached != (tc.want == http.StatusAccepted) {
				t.Errorf("request reached the ingress: %v", reached)
			}
		})
	}
}
