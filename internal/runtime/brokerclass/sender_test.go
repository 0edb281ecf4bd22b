package brokerclass

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/client-go/kubernetes/fake"
	k8stesting "k8s.io/client-go/testing"
)

// TestTokenTransport: requests carry a token of the ServiceAccount for the audience in the
// header asked for; the token is requested once and again only when it nears its expiry; a
// refused TokenRequest fails the request before anything is sent.
func TestTokenTransport(t *testing.T) {
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var requests []string
	refuse := false
	kube := fake.NewSimpleClientset()
	kube.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
		if a.GetSubresource() != "token" {
			return false, nil, nil
		}
		if refuse {
			return true, nil, fmt.Errorf("forbidden")
		}
		create := a.(k8stesting.CreateActionImpl)
		tr := create.GetObject().(*authenticationv1.TokenRequest)
		requests = append(requests, create.GetNamespace()+"/"+create.Name+" "+tr.Spec.Audiences[0])
		return true, &authenticationv1.TokenRequest{Status: authenticationv1.TokenRequestStatus{
			Token: fmt.Sprint("token-", len(requests)), ExpirationTimestamp: metav1.NewTime(now.Add(time.Hour))}}, nil
	})
	var got []string
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		got = append(got, r.Header.Get(ProxiedAuthorizationHeader))
	}))
	defer srv.Close()
	tt := NewTokenTransport(kube.CoreV1(), types.NamespacedName{Namespace: "knfaas", Name: RedriveServiceAccount}, "aud", ProxiedAuthorizationHeader, http.DefaultTransport)
	tt.now = func() time.Time { return now }
	client := &http.Client{Transport: tt}
	for _, step := range []struct {
		name      string
		advance   time.Duration
		refuse    bool
		wantToken string
		wantErr   bool
	}{
		{name: "first request asks for a token", wantToken: "Bearer token-1"},
		{name: "the token is reused", advance: 30 * time.Minute, wantToken: "Bearer token-1"},
		{name: "near its expiry a new one is asked for", advance: 21 * time.Minute, wantToken: "Bearer token-2"},
		{name: "a refused TokenRequest sends nothing", advance: time.Hour, refuse: true, wantErr: true},
	} {
		t.Run(step.name, func(t *testing.T) {
			now = now.Add(step.advance)
			refuse = step.refuse
			sent := len(got)
			resp, err := client.Get(srv.URL)
			if step.wantErr {
				if err == nil {
					resp.Body.Close()
					t.Fatal("the request was sent")
				}
				if len(got) != sent {
					t.Error("the server received a request")
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if last := got[len(got)-1]; last != step.wantToken {
				t.Errorf("header %q, want %q", last, step.wantToken)
			}
		})
	}
	for _, r := range requests {
		if r != "knfaas/"+RedriveServiceAccount+" aud" {
			t.Errorf("TokenRequest %q, want one for knfaas/%s and audience aud", r, RedriveServiceAccount)
		}
	}
	if len(requests) != 2 {
		t.Errorf("%d TokenRequests, want 2", len(requests))
	}
}
