//go:build e2e

package controller

import (
	"context"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/util/retry"
	"knative.dev/eventing/pkg/apis/eventing/v1alpha1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/ptr"

	"github.com/knfaas/knfaas/internal/harness/dataplanetest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// setFeatures writes Knative Eventing's config-features ConfigMap.
func (f *fixture) setFeatures(t *testing.T, data map[string]string) {
	t.Helper()
	ctx := context.Background()
	cms := f.kube.CoreV1().ConfigMaps(eventingNS)
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		cm, err := cms.Get(ctx, feature.FlagsConfigName, metav1.GetOptions{})
		if err != nil {
			_, err = cms.Create(ctx, &corev1.ConfigMap{ObjectMeta: metav1.ObjectMeta{Name: feature.FlagsConfigName, Namespace: eventingNS}, Data: data}, metav1.CreateOptions{})
			return err
		}
		cm.Data = data
		_, err = cms.Update(ctx, cm, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("writing config-features: %v", err)
	}
}

// token asks the kube-apiserver for a token of ServiceAccount sa with audience.
func (f *fixture) token(t *testing.T, sa, audience string) string {
	t.Helper()
	tr, err := f.kube.CoreV1().ServiceAccounts(appNS).CreateToken(context.Background(), sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{Audiences: []string{audience}, ExpirationSeconds: ptr.Int64(3600)},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("TokenRequest for %s: %v", sa, err)
	}
	return tr.Status.Token
}

// writeContract writes the contract ConfigMap's key to path, as the kubelet mounts it. The
// Triggers' reply address, the ingress Service's cluster name, is replaced by ingressAddr (when
// set), where cluster DNS would have led.
func (f *fixture) writeContract(t *testing.T, path, ingressAddr string) *brokerclass.Contract {
	t.Helper()
	cm, err := f.kube.CoreV1().ConfigMaps(systemNS).Get(context.Background(), brokerclass.ContractConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	data := cm.Data[brokerclass.ContractKey]
	if ingressAddr != "" {
		data = strings.ReplaceAll(data, IngressService+"."+systemNS+".svc.cluster.local", ingressAddr)
	}
	c, err := brokerclass.ParseContract([]byte(data))
	if err != nil {
		t.Fatal(err)
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, []byte(data), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
	return c
}

// TestIngressAuthorizationAgainstAPIServer: with Knative's OIDC authentication enabled, the
// controller puts the Broker's audience in its status and the applying EventPolicies' subjects
// in the contract, and the ingress, started with that contract, verifies ServiceAccount tokens
// the real kube-apiserver issued against its OIDC discovery: 401 without a valid token for the
// Broker's audience, 403 for a subject no EventPolicy allows, 202 for one that is allowed.
// Turning the feature off again opens the ingress as before.
func TestIngressAuthorizationAgainstAPIServer(t *testing.T) {
	f := startFixture(t)
	ctx := context.Background()
	f.readyEndpoints(t, IngressService)
	f.readyEndpoints(t, DispatcherService)
	// Knative's documented step for an OIDC discovery URL other than the in-cluster default: the
	// verifier fetches the discovery document and keys without credentials.
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: "oidc-reviewer"},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: "system:service-account-issuer-discovery"},
		Subjects:   []rbacv1.Subject{{APIGroup: "rbac.authorization.k8s.io", Kind: "Group", Name: "system:unauthenticated"}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	f.setFeatures(t, map[string]string{
		feature.OIDCAuthentication: string(feature.Enabled),
		// The kube-apiserver of this test is not behind https://kubernetes.default.svc.
		feature.OIDCDiscoveryBaseURL: f.cp.cfg.Host,
	})
	for _, sa := range []string{"allowed", "other"} {
		if _, err := f.kube.CoreV1().ServiceAccounts(appNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: appNS}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	allowedSubject := "system:serviceaccount:" + appNS + ":allowed"
	policy, err := f.ev.EventingV1alpha1().EventPolicies(appNS).Create(ctx, &v1alpha1.EventPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "only-allowed", Namespace: appNS},
		Spec: v1alpha1.EventPolicySpec{
			To:   []v1alpha1.EventPolicySpecTo{{Ref: &v1alpha1.EventPolicyToReference{APIVersion: "eventing.knative.dev/v1", Kind: "Broker", Name: "secure"}}},
			From: []v1alpha1.EventPolicySpecFrom{{Sub: ptr.String(allowedSubject)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// As Knative Eventing's EventPolicy controller resolves spec.from into status.from.
	policy.Status.From = []string{allowedSubject}
	policy.Status.InitializeConditions()
	policy.Status.MarkOIDCAuthenticationEnabled()
	policy.Status.MarkSubjectsResolvedSucceeded()
	if _, err := f.ev.EventingV1alpha1().EventPolicies(appNS).UpdateStatus(ctx, policy, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}

	if _, err := f.ev.EventingV1().Brokers(appNS).Create(ctx, newBroker("secure", nil), metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	audience := "eventing.knative.dev/broker/" + appNS + "/secure"
	b := waitCondition(t, "Broker secure", f.brokerCond(t, "secure", apis.ConditionReady), corev1.ConditionTrue, "")
	if got := b.Status.Address.Audience; got == nil || *got != audience {
		t.Errorf("status.address.audience %v, want %s", got, audience)
	}
	if len(b.Status.Policies) != 1 || b.Status.Policies[0].Name != "only-allowed" {
		t.Errorf("status.policies %+v, want only-allowed", b.Status.Policies)
	}

	// A subscriber that answers with a reply, and one for the replies: a reply re-enters the
	// Broker through the ingress with the dispatcher's reply credential, not a token.
	answers := make(chan string, 10)
	asker := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.Header().Set("Ce-Specversion", "1.0")
		w.Header().Set("Ce-Id", "answer-to-"+r.Header.Get("Ce-Id"))
		w.Header().Set("Ce-Type", "dev.knfaas.e2e.answers")
		w.Header().Set("Ce-Source", "/e2e/asker")
		w.WriteHeader(http.StatusOK)
	}))
	defer asker.Close()
	answerSink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		answers <- r.Header.Get("Ce-Id")
	}))
	defer answerSink.Close()
	for name, sink := range map[string]string{"asker": asker.URL, "answers": answerSink.URL} {
		if _, err := f.ev.EventingV1().Triggers(appNS).Create(ctx, newTrigger(name, "secure", duckv1.Destination{URI: apis.HTTP(strings.TrimPrefix(sink, "http://"))}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitCondition(t, "Trigger "+name, f.triggerCond(t, name, apis.ConditionReady), corev1.ConditionTrue, "")
	}

	path := filepath.Join(t.TempDir(), brokerclass.ContractKey)
	addr := freeAddrString(t)
	c := f.writeContract(t, path, addr)
	if len(c.Brokers) != 1 || c.Brokers[0].Audience != audience || len(c.Brokers[0].Policies) != 1 || c.Brokers[0].Policies[0].Subjects[0] != allowedSubject {
		t.Fatalf("contract brokers %+v, want secure with its audience and the policy's subject", c.Brokers)
	}
	dataplanetest.Start(t, "ingress", dataplanetest.Binaries(t)[brokerclass.ModeIngress], map[string]string{
		"REDIS_URL": f.redis.URL(), "CONTRACT_PATH": path, "LISTEN_ADDRESS": addr, "POD_NAME": "ingress-0",
		"CONTRACT_POLL_INTERVAL": "200ms",
		// The discovery document is fetched over TLS: trust the kube-apiserver's self-signed
		// certificate, as a cluster's trust bundle would.
		"SSL_CERT_FILE": f.cp.servingCert,
	})
	dataplanetest.WaitReady(t, addr) // ready includes the OIDC provider loaded
	dispatcherAddr := freeAddrString(t)
	dataplanetest.Start(t, "dispatcher", dataplanetest.Binaries(t)[brokerclass.ModeDispatcher], map[string]string{
		"REDIS_URL": f.redis.URL(), "CONTRACT_PATH": path, "LISTEN_ADDRESS": dispatcherAddr, "POD_NAME": "dispatcher-0",
		"CONTRACT_POLL_INTERVAL": "200ms",
	})
	dataplanetest.WaitReady(t, dispatcherAddr)

	post := func(id, token string) int {
		t.Helper()
		req, err := cehttp.NewHTTPRequestFromEvent(ctx, "http://"+addr+broker.Path(appNS, "secure"), runtimetest.NewEvent(id, "dev.knfaas.e2e.asker"))
		if err != nil {
			t.Fatal(err)
		}
		if token != "" {
			req.Header.Set("Authorization", token)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		return resp.StatusCode
	}
	for _, tc := range []struct {
		name  string
		token string
		want  int
	}{
		{name: "allowed ServiceAccount", token: "Bearer " + f.token(t, "allowed", audience), want: http.StatusAccepted},
		{name: "ServiceAccount no EventPolicy allows", token: "Bearer " + f.token(t, "other", audience), want: http.StatusForbidden},
		{name: "no token", want: http.StatusUnauthorized},
		{name: "token for another audience", token: "Bearer " + f.token(t, "allowed", "eventing.knative.dev/broker/"+appNS+"/other"), want: http.StatusUnauthorized},
		{name: "not a token", token: "Bearer not-a-jwt", want: http.StatusUnauthorized},
		{name: "forged reply credential", token: "Basic a25mYWFzLXJlcGx5OmZvcmdlZA==", want: http.StatusUnauthorized}, // knfaas-reply:forged
	} {
		t.Run(tc.name, func(t *testing.T) {
			if got := post("authz-"+tc.name, tc.token); got != tc.want {
				t.Errorf("ingress answered %d, want %d", got, tc.want)
			}
		})
	}
	select {
	case id := <-answers:
		if id != "answer-to-authz-allowed ServiceAccount" {
			t.Errorf("the replies' subscriber got %q", id)
		}
	case <-time.After(time.Minute):
		t.Fatal("the reply to the allowed event never reached its Trigger: the ingress refused the dispatcher's reply")
	}
	if n := f.redis.Client().XLen(ctx, broker.StreamKey(appNS, "secure")).Val(); n != 2 {
		t.Errorf("the Broker's stream holds %d events, want the allowed sender's and its reply", n)
	}

	t.Run("feature off: open as before", func(t *testing.T) {
		f.setFeatures(t, map[string]string{feature.OIDCAuthentication: string(feature.Disabled)})
		runtimetest.Eventually(t, time.Minute, "the Broker's audience gone from its status and the contract", func() bool {
			b := f.broker(t, "secure")
			c := f.contract(t)
			return b.Status.Address.Audience == nil && len(c.Brokers) == 1 && c.Brokers[0].Audience == "" && c.Features[feature.OIDCAuthentication] == string(feature.Disabled)
		})
		waitCondition(t, "Broker secure", f.brokerCond(t, "secure", apis.ConditionReady), corev1.ConditionTrue, "")
		f.writeContract(t, path, addr)
		runtimetest.Eventually(t, time.Minute, "the ingress accepts an event without a token", func() bool {
			return post("authz-off", "") == http.StatusAccepted
		})
	})
}
