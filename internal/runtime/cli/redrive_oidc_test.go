package cli

import (
	"context"
	"io"
	"net/http"
	"net/http/httptest"
	"testing"
	"time"

	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	k8stesting "k8s.io/client-go/testing"

	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// TestRedriveSendsAsTheRedriveServiceAccount: on a cluster, a Broker whose status has an
// audience (OIDC authentication on) gets redrive's events with a token of the platform's
// redrive ServiceAccount for that audience, in the header the class's ingress reads behind the
// API server's proxy; a Broker without one gets them as before, without a token.
func TestRedriveSendsAsTheRedriveServiceAccount(t *testing.T) {
	for _, tc := range []struct {
		name         string
		audience     string
		wantHeader   string
		wantRequests []string
	}{
		{name: "OIDC off: no token", wantHeader: ""},
		{name: "OIDC on: the redrive ServiceAccount's token for the Broker's audience", audience: "eventing.knative.dev/broker/knfaas/default",
			wantHeader: "Bearer issued", wantRequests: []string{"knfaas/knfaas-redrive eventing.knative.dev/broker/knfaas/default"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			kube := fake.NewSimpleClientset(&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "redis-broker-ingress", Namespace: "knfaas"}})
			var requests []string
			kube.PrependReactor("create", "serviceaccounts", func(a k8stesting.Action) (bool, runtime.Object, error) {
				create := a.(k8stesting.CreateActionImpl)
				tr := create.GetObject().(*authenticationv1.TokenRequest)
				requests = append(requests, create.GetNamespace()+"/"+create.Name+" "+tr.Spec.Audiences[0])
				return true, &authenticationv1.TokenRequest{Status: authenticationv1.TokenRequestStatus{Token: "issued", ExpirationTimestamp: metav1.NewTime(time.Now().Add(time.Hour))}}, nil
			})
			address := map[string]any{"url": "http://redis-broker-ingress.knfaas.svc.cluster.local/knfaas/default"}
			if tc.audience != "" {
				address["audience"] = tc.audience
			}
			dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{brokerGVR: "BrokerList"},
				knativeObject(brokerGVR, "Broker", "knfaas", "default", map[string]any{"address": address}))
			var got []string
			proxy := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				got = append(got, r.Header.Get(brokerclass.ProxiedAuthorizationHeader))
				w.WriteHeader(http.StatusAccepted)
			}))
			defer proxy.Close()
			old := clusterConnector
			clusterConnector = func(clusterFlags) (*cluster, error) {
				return &cluster{config: &rest.Config{Host: proxy.URL}, core: kube.CoreV1(), dynamic: dyn, namespace: "knfaas", contextName: "test"}, nil
			}
			defer func() { clusterConnector = old }()

			run := runFlags{cluster: clusterFlags{namespace: "knfaas"}}
			target, err := run.brokerTargetAs("knfaas/default", brokerclass.RedriveServiceAccount)
			if err != nil {
				t.Fatal(err)
			}
			req, err := http.NewRequestWithContext(context.Background(), http.MethodPost, target.url, http.NoBody)
			if err != nil {
				t.Fatal(err)
			}
			resp, err := (&http.Client{Transport: target.transportOr(http.DefaultTransport)}).Do(req)
			if err != nil {
				t.Fatal(err)
			}
			_, _ = io.Copy(io.Discard, resp.Body)
			resp.Body.Close()
			if len(got) != 1 || got[0] != tc.wantHeader {
				t.Errorf("the ingress got %s %q, want %q", brokerclass.ProxiedAuthorizationHeader, got, tc.wantHeader)
			}
			if len(requests) != len(tc.wantRequests) || (len(requests) == 1 && requests[0] != tc.wantRequests[0]) {
				t.Errorf("TokenRequests %q, want %q", requests, tc.wantRequests)
			}
		})
	}
}
