//go:build e2e

package controller

import (
	"context"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	authenticationv1 "k8s.io/api/authentication/v1"
	corev1 "k8s.io/api/core/v1"
	rbacv1 "k8s.io/api/rbac/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/util/retry"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/eventing/v1alpha1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/ptr"
	"sigs.k8s.io/yaml"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	eventsink "github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/harness/controlplanetest"
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

// recorder answers status and records the Authorization header of each event id it receives.
type recorder struct {
	srv    *httptest.Server
	status atomic.Int32
	mu     sync.Mutex
	got    map[string]string
}

func newRecorder(t *testing.T) *recorder {
	r := &recorder{got: map[string]string{}}
	r.status.Store(http.StatusOK)
	r.srv = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		r.mu.Lock()
		r.got[req.Header.Get("Ce-Id")] = req.Header.Get("Authorization")
		r.mu.Unlock()
		w.WriteHeader(int(r.status.Load()))
	}))
	t.Cleanup(r.srv.Close)
	return r
}

// auth is the Authorization header the event id came with ("" if it did not come).
func (r *recorder) auth(id string) string {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.got[id]
}

// dispatcherKubeconfig writes a kubeconfig for the dispatcher process: a token of a
// ServiceAccount bound to exactly the dispatcher's ClusterRole of the install manifests.
func (f *fixture) dispatcherKubeconfig(t *testing.T) string {
	t.Helper()
	ctx := context.Background()
	b, err := os.ReadFile(filepath.Join(runtimetest.ModuleRoot(t), "config", "broker", "200-rbac.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	const role = "knfaas-redis-broker-dispatcher"
	var found bool
	for _, doc := range strings.Split(string(b), "\n---") {
		var cr rbacv1.ClusterRole
		if err := yaml.Unmarshal([]byte(doc), &cr); err != nil {
			t.Fatal(err)
		}
		if cr.Kind != "ClusterRole" || cr.Name != role {
			continue
		}
		found = true
		cr.ResourceVersion = ""
		if _, err := f.kube.RbacV1().ClusterRoles().Create(ctx, &cr, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	if !found {
		t.Fatalf("config/broker/200-rbac.yaml has no ClusterRole %s", role)
	}
	const sa = "redis-broker-dispatcher"
	if _, err := f.kube.CoreV1().ServiceAccounts(systemNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	if _, err := f.kube.RbacV1().ClusterRoleBindings().Create(ctx, &rbacv1.ClusterRoleBinding{
		ObjectMeta: metav1.ObjectMeta{Name: role},
		RoleRef:    rbacv1.RoleRef{APIGroup: "rbac.authorization.k8s.io", Kind: "ClusterRole", Name: role},
		Subjects:   []rbacv1.Subject{{Kind: "ServiceAccount", Name: sa, Namespace: systemNS}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	tr, err := f.kube.CoreV1().ServiceAccounts(systemNS).CreateToken(ctx, sa, &authenticationv1.TokenRequest{
		Spec: authenticationv1.TokenRequestSpec{ExpirationSeconds: ptr.Int64(3600)}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: f.cp.cfg.Host, CertificateAuthority: f.cp.servingCert}
	cfg.AuthInfos["dispatcher"] = &clientcmdapi.AuthInfo{Token: tr.Status.Token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "dispatcher"}
	cfg.CurrentContext = "e2e"
	path := filepath.Join(t.TempDir(), "kubeconfig")
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
	return path
}

// nonLoopbackIPv4 is an address of this machine that kube-apiserver accepts in Endpoints (its
// service proxy refuses loopback and link-local ones).
func nonLoopbackIPv4(t *testing.T) net.IP {
	t.Helper()
	addrs, err := net.InterfaceAddrs()
	if err != nil {
		t.Fatal(err)
	}
	for _, a := range addrs {
		if n, ok := a.(*net.IPNet); ok && n.IP.To4() != nil && !n.IP.IsLoopback() && !n.IP.IsLinkLocalUnicast() {
			return n.IP.To4()
		}
	}
	t.Skip("this machine has no non-loopback IPv4 address, and kube-apiserver proxies to no loopback endpoint")
	return nil
}

// proxiedIngress makes the ingress Service's port 80 lead to ip:port through the API server's
// service proxy: the Service, a running pod with that IP (no kubelet runs here, so the test
// writes its status) and the Endpoints the proxy reads (no controller-manager fills them).
func (f *fixture) proxiedIngress(t *testing.T, ip net.IP, port int32) {
	t.Helper()
	ctx := context.Background()
	// The pod's ServiceAccount (no controller-manager creates the namespace's default one).
	if _, err := f.kube.CoreV1().ServiceAccounts(systemNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil && !apierrors.IsAlreadyExists(err) {
		t.Fatal(err)
	}
	if _, err := f.kube.CoreV1().Services(systemNS).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: IngressService},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(port)}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod, err := f.kube.CoreV1().Pods(systemNS).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: IngressService + "-0"},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "ingress", Image: "example.test/ingress"}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if _, err := f.kube.CoreV1().Pods(systemNS).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	//nolint:staticcheck // the service proxy of kube-apiserver reads the Endpoints API
	if _, err := f.kube.CoreV1().Endpoints(systemNS).Create(ctx, &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: IngressService},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: ip.String(), TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: systemNS, Name: pod.Name}}},
			Ports:     []corev1.EndpointPort{{Name: "http", Port: port}},
		}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// TestIngressAuthorizationAgainstAPIServer: with Knative's OIDC authentication enabled, the
// controller puts the Broker's audience in its status and the applying EventPolicies' subjects
// in the contract, and the ingress, started with that contract, verifies ServiceAccount tokens
// the real kube-apiserver issued against its OIDC discovery: 401 without a valid token for the
// Broker's audience, 403 for a subject no EventPolicy allows, 202 for one that is allowed.
// Dead letters redriven through the API server's service proxy (which consumes Authorization)
// are refused without a token (401) and as a ServiceAccount no policy allows (403), and accepted
// with a token of the platform's redrive ServiceAccount in the proxied header. Turning the
// feature off again opens the ingress as before.
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
	for _, sa := range []string{"allowed", "other", brokerclass.RedriveServiceAccount} {
		if _, err := f.kube.CoreV1().ServiceAccounts(appNS).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: sa, Namespace: appNS}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	allowedSubject := "system:serviceaccount:" + appNS + ":allowed"
	redriveSubject := "system:serviceaccount:" + appNS + ":" + brokerclass.RedriveServiceAccount
	policy, err := f.ev.EventingV1alpha1().EventPolicies(appNS).Create(ctx, &v1alpha1.EventPolicy{
		ObjectMeta: metav1.ObjectMeta{Name: "only-allowed", Namespace: appNS},
		Spec: v1alpha1.EventPolicySpec{
			To:   []v1alpha1.EventPolicySpecTo{{Ref: &v1alpha1.EventPolicyToReference{APIVersion: "eventing.knative.dev/v1", Kind: "Broker", Name: "secure"}}},
			From: []v1alpha1.EventPolicySpecFrom{{Sub: ptr.String(allowedSubject)}, {Sub: ptr.String(redriveSubject)}},
		},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	// As Knative Eventing's EventPolicy controller resolves spec.from into status.from.
	policy.Status.From = []string{allowedSubject, redriveSubject}
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

	// A subscriber and a dead-letter sink with OIDC audiences: the dispatcher sends each a token
	// of the Trigger's own ServiceAccount for its audience, as Knative's brokers do.
	audienced := newRecorder(t)
	audiencedDLS := newRecorder(t)
	withAudience := newTrigger("audienced", "secure", duckv1.Destination{URI: apis.HTTP(strings.TrimPrefix(audienced.srv.URL, "http://")), Audience: ptr.String("e2e-subscriber")})
	withAudience.Spec.Delivery = &eventingduckv1.DeliverySpec{Retry: ptr.Int32(0),
		DeadLetterSink: &duckv1.Destination{URI: apis.HTTP(strings.TrimPrefix(audiencedDLS.srv.URL, "http://")), Audience: ptr.String("e2e-dead-letters")}}
	if _, err := f.ev.EventingV1().Triggers(appNS).Create(ctx, withAudience, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	audiencedTrigger := waitCondition(t, "Trigger audienced", f.triggerCond(t, "audienced", apis.ConditionReady), corev1.ConditionTrue, "")

	path := filepath.Join(t.TempDir(), brokerclass.ContractKey)
	// The ingress listens where the API server's service proxy can reach it (no loopback).
	ip := nonLoopbackIPv4(t)
	ingressPort := controlplanetest.FreePort(t)
	addr := net.JoinHostPort(ip.String(), fmt.Sprint(ingressPort))
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
		// Outside a pod, the dispatcher reaches the API server as its ServiceAccount would.
		"KUBECONFIG": f.dispatcherKubeconfig(t),
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

	t.Run("subscriber and dead-letter sink get the Trigger's OIDC token for their audience", func(t *testing.T) {
		st := audiencedTrigger.Status
		if st.Auth == nil || st.Auth.ServiceAccountName == nil {
			t.Fatalf("status.auth %+v, want the Trigger's OIDC ServiceAccount", st.Auth)
		}
		saName := *st.Auth.ServiceAccountName
		if _, err := f.kube.CoreV1().ServiceAccounts(appNS).Get(ctx, saName, metav1.GetOptions{}); err != nil {
			t.Fatalf("the Trigger's OIDC ServiceAccount %s: %v", saName, err)
		}
		if c := st.GetCondition(eventingv1.TriggerConditionOIDCIdentityCreated); c == nil || !c.IsTrue() {
			t.Errorf("condition OIDCIdentityCreated %+v, want True", c)
		}
		if ptr.StringValue(st.SubscriberAudience) != "e2e-subscriber" || ptr.StringValue(st.DeliveryStatus.DeadLetterSinkAudience) != "e2e-dead-letters" {
			t.Errorf("status.subscriberAudience %v, status.deadLetterSinkAudience %v; want e2e-subscriber and e2e-dead-letters",
				ptr.StringValue(st.SubscriberAudience), ptr.StringValue(st.DeliveryStatus.DeadLetterSinkAudience))
		}
		audienced.status.Store(http.StatusOK)
		audiencedDLS.status.Store(http.StatusAccepted)
		allowed := "Bearer " + f.token(t, "allowed", audience)
		for _, id := range []string{"oidc-delivered", "oidc-dead-lettered"} {
			if id == "oidc-dead-lettered" {
				audienced.status.Store(http.StatusInternalServerError)
			}
			req, err := cehttp.NewHTTPRequestFromEvent(ctx, "http://"+addr+broker.Path(appNS, "secure"), runtimetest.NewEvent(id, "dev.knfaas.e2e.audienced"))
			if err != nil {
				t.Fatal(err)
			}
			req.Header.Set("Authorization", allowed)
			resp, err := http.DefaultClient.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			resp.Body.Close()
			if resp.StatusCode != http.StatusAccepted {
				t.Fatalf("publishing %s: %d", id, resp.StatusCode)
			}
			runtimetest.Eventually(t, time.Minute, id+" delivered", func() bool { return audienced.auth(id) != "" })
		}
		runtimetest.Eventually(t, time.Minute, "the dead letter", func() bool { return audiencedDLS.auth("oidc-dead-lettered") != "" })
		want := "system:serviceaccount:" + appNS + ":" + saName
		for _, tc := range []struct {
			name, authorization, audience string
		}{
			{name: "subscriber", authorization: audienced.auth("oidc-delivered"), audience: "e2e-subscriber"},
			{name: "subscriber, failed delivery", authorization: audienced.auth("oidc-dead-lettered"), audience: "e2e-subscriber"},
			{name: "dead-letter sink", authorization: audiencedDLS.auth("oidc-dead-lettered"), audience: "e2e-dead-letters"},
		} {
			t.Run(tc.name, func(t *testing.T) {
				tok, ok := strings.CutPrefix(tc.authorization, "Bearer ")
				if !ok {
					t.Fatalf("Authorization %q, want a bearer token", tc.authorization)
				}
				// The API server that issued it says whose it is and for which audience.
				rev, err := f.kube.AuthenticationV1().TokenReviews().Create(ctx, &authenticationv1.TokenReview{
					Spec: authenticationv1.TokenReviewSpec{Token: tok, Audiences: []string{tc.audience}}}, metav1.CreateOptions{})
				if err != nil {
					t.Fatal(err)
				}
				if !rev.Status.Authenticated || rev.Status.User.Username != want {
					t.Errorf("token review for audience %s: authenticated %v as %q (%s), want %s", tc.audience, rev.Status.Authenticated, rev.Status.User.Username, rev.Status.Error, want)
				}
			})
		}
	})

	t.Run("dead letters redriven through the API server's service proxy", func(t *testing.T) {
		f.proxiedIngress(t, ip, int32(ingressPort))
		// What `knfaas dlq redrive -n knfaas --broker knfaas/secure` posts to: the API server's
		// proxy, authenticated as the operator; the API server consumes that Authorization.
		proxyURL := fmt.Sprintf("%s/api/v1/namespaces/%s/services/%s:80/proxy%s", f.cp.cfg.Host, systemNS, IngressService, broker.Path(appNS, "secure"))
		operator, err := rest.TransportFor(f.cp.cfg)
		if err != nil {
			t.Fatal(err)
		}
		store := deadletter.NewStore(f.redis.Client(), deadletter.Options{})
		before := f.redis.Client().XLen(ctx, broker.StreamKey(appNS, "secure")).Val()
		for _, tc := range []struct {
			name string
			// serviceAccount is who redrive sends as; "" sends no token (before this change).
			serviceAccount string
			want           int
		}{
			{name: "no token: 401", want: http.StatusUnauthorized},
			{name: "a ServiceAccount no EventPolicy allows: 403", serviceAccount: "other", want: http.StatusForbidden},
			{name: "the platform's redrive ServiceAccount: accepted", serviceAccount: brokerclass.RedriveServiceAccount, want: http.StatusAccepted},
		} {
			t.Run(tc.name, func(t *testing.T) {
				e := runtimetest.NewEvent("redrive-"+strings.ReplaceAll(tc.name, " ", "-"), "dev.knfaas.e2e.redriven") // no Trigger replies to it
				e.SetExtension("knativeerrordest", "http://subscriber.example/")
				e.SetExtension("knativeerrorcode", "500")
				l, err := deadletter.FromEvent(e)
				if err != nil {
					t.Fatal(err)
				}
				if l.ID, _, err = store.Add(ctx, l); err != nil {
					t.Fatal(err)
				}
				rt := operator
				if tc.serviceAccount != "" {
					rt = brokerclass.NewTokenTransport(f.kube.CoreV1(), types.NamespacedName{Namespace: appNS, Name: tc.serviceAccount}, audience, brokerclass.ProxiedAuthorizationHeader, operator)
				}
				pub, err := eventsink.NewWithTransport(proxyURL, 10*time.Second, rt)
				if err != nil {
					t.Fatal(err)
				}
				rep, err := deadletter.Redrive(ctx, store, pub, []deadletter.Letter{l}, deadletter.RedriveOptions{})
				if tc.want == http.StatusAccepted {
					if err != nil || rep.Accepted != 1 {
						t.Fatalf("redrive: %+v, %v; want the letter accepted", rep, err)
					}
					if _, err := store.Get(ctx, l.ID); err == nil {
						t.Error("the accepted letter is still stored")
					}
					return
				}
				if got := eventsink.StatusCode(err); got != tc.want {
					t.Fatalf("redrive: %+v, %v (status %d); want it refused with %d", rep, err, got, tc.want)
				}
				if _, err := store.Get(ctx, l.ID); err != nil {
					t.Errorf("the refused letter is gone: %v", err)
				}
			})
		}
		if n := f.redis.Client().XLen(ctx, broker.StreamKey(appNS, "secure")).Val(); n != before+1 {
			t.Errorf("the Broker's stream grew by %d events, want the one redrive the policy allows", n-before)
		}
	})

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
