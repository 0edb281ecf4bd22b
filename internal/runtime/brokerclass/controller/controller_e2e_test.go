//go:build e2e

package controller

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	cehttp "github.com/cloudevents/sdk-go/v2/protocol/http"
	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/util/retry"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	eventingclient "knative.dev/eventing/pkg/client/clientset/versioned"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/configmap"
	pkgcontroller "knative.dev/pkg/controller"
	"knative.dev/pkg/injection"
	"knative.dev/pkg/ptr"

	"github.com/knfaas/knfaas/internal/harness/controlplanetest"
	"github.com/knfaas/knfaas/internal/harness/dataplanetest"
	"github.com/knfaas/knfaas/internal/harness/redistest"
	"github.com/knfaas/knfaas/internal/harness/runtimetest"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// controlPlane is a real etcd and kube-apiserver, built by hack/verify-apiserver.sh, with the
// Knative CRDs installed (internal/harness/controlplanetest).
type controlPlane struct {
	cfg *rest.Config
	// servingCert is the kube-apiserver's self-signed serving certificate (with its CA).
	servingCert string
}

func startControlPlane(t testing.TB) *controlPlane {
	t.Helper()
	cp := controlplanetest.Start(t)
	controlplanetest.InstallKnativeCRDs(t, cp.Config)
	return &controlPlane{cfg: cp.Config, servingCert: cp.ServingCert}
}

var ksvcGVR = controlplanetest.KsvcGVR

const (
	systemNS = "knfaas-broker"
	appNS    = "knfaas"
	// eventingNS is Knative Eventing's namespace, where the feature flags are.
	eventingNS = "knative-eventing"
)

// fixture is the control plane, Redis and a running controller.
type fixture struct {
	cp    *controlPlane
	kube  kubernetes.Interface
	ev    eventingclient.Interface
	dyn   dynamic.Interface
	redis *redistest.Server
}

func (f *fixture) broker(t testing.TB, name string) *eventingv1.Broker {
	t.Helper()
	b, err := f.ev.EventingV1().Brokers(appNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func (f *fixture) trigger(t testing.TB, name string) *eventingv1.Trigger {
	t.Helper()
	tr, err := f.ev.EventingV1().Triggers(appNS).Get(context.Background(), name, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	return tr
}

// waitCondition waits until cond of the object get returns has status and, if reason is set,
// that reason; it returns the last object.
func waitCondition[T any](t testing.TB, what string, get func() (T, *apis.Condition), status corev1.ConditionStatus, reason string) T {
	t.Helper()
	var obj T
	var last *apis.Condition
	deadline := time.Now().Add(60 * time.Second)
	for {
		obj, last = get()
		if last != nil && last.Status == status && (reason == "" || last.Reason == reason) {
			return obj
		}
		if time.Now().After(deadline) {
			t.Fatalf("%s: condition %+v, want status %s reason %q", what, last, status, reason)
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// updateBroker applies change to the latest Broker named name, again when the update
// conflicts with the controller's own writes (status, finalizers).
func (f *fixture) updateBroker(t testing.TB, name string, change func(*eventingv1.Broker)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		b := f.broker(t, name)
		change(b)
		_, err := f.ev.EventingV1().Brokers(appNS).Update(context.Background(), b, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("updating Broker %s: %v", name, err)
	}
}

// updateTrigger is updateBroker for a Trigger.
func (f *fixture) updateTrigger(t testing.TB, name string, change func(*eventingv1.Trigger)) {
	t.Helper()
	err := retry.RetryOnConflict(retry.DefaultRetry, func() error {
		tr := f.trigger(t, name)
		change(tr)
		_, err := f.ev.EventingV1().Triggers(appNS).Update(context.Background(), tr, metav1.UpdateOptions{})
		return err
	})
	if err != nil {
		t.Fatalf("updating Trigger %s: %v", name, err)
	}
}

func (f *fixture) brokerCond(t testing.TB, name string, typ apis.ConditionType) func() (*eventingv1.Broker, *apis.Condition) {
	return func() (*eventingv1.Broker, *apis.Condition) {
		b := f.broker(t, name)
		return b, b.Status.GetCondition(typ)
	}
}

func (f *fixture) triggerCond(t testing.TB, name string, typ apis.ConditionType) func() (*eventingv1.Trigger, *apis.Condition) {
	return func() (*eventingv1.Trigger, *apis.Condition) {
		tr := f.trigger(t, name)
		return tr, tr.Status.GetCondition(typ)
	}
}

func (f *fixture) contract(t testing.TB) *brokerclass.Contract {
	t.Helper()
	cm, err := f.kube.CoreV1().ConfigMaps(systemNS).Get(context.Background(), brokerclass.ContractConfigMap, metav1.GetOptions{})
	if err != nil {
		t.Fatal(err)
	}
	c, err := brokerclass.ParseContract([]byte(cm.Data[brokerclass.ContractKey]))
	if err != nil {
		t.Fatal(err)
	}
	return c
}

func (f *fixture) contractTrigger(t testing.TB, name string) (brokerclass.Trigger, bool) {
	for _, tr := range f.contract(t).Triggers {
		if tr.Namespace == appNS && tr.Name == name {
			return tr, true
		}
	}
	return brokerclass.Trigger{}, false
}

// readyEndpoints makes a data plane Service's endpoints ready, as the kubelet and the endpoint
// slice controller would once its pods are ready.
func (f *fixture) readyEndpoints(t testing.TB, service string) {
	t.Helper()
	_, err := f.kube.DiscoveryV1().EndpointSlices(systemNS).Create(context.Background(), &discoveryv1.EndpointSlice{
		ObjectMeta:  metav1.ObjectMeta{Name: service + "-abcde", Namespace: systemNS, Labels: map[string]string{discoveryv1.LabelServiceName: service}},
		AddressType: discoveryv1.AddressTypeIPv4,
		Endpoints:   []discoveryv1.Endpoint{{Addresses: []string{"10.0.0.1"}, Conditions: discoveryv1.EndpointConditions{Ready: ptr.Bool(true)}}},
	}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
}

func startFixture(t testing.TB) *fixture {
	cp := startControlPlane(t)
	f := &fixture{
		cp:   cp,
		kube: kubernetes.NewForConfigOrDie(cp.cfg), ev: eventingclient.NewForConfigOrDie(cp.cfg),
		dyn: dynamic.NewForConfigOrDie(cp.cfg), redis: redistest.Start(t, redistest.Options{}),
	}
	for _, ns := range []string{systemNS, appNS, eventingNS} {
		if _, err := f.kube.CoreV1().Namespaces().Create(context.Background(), &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
	}
	ctx, cancel := context.WithCancel(context.Background())
	ctx, informers := injection.Default.SetupInformers(WithInformerSelectors(ctx), cp.cfg)
	var impls []*pkgcontroller.Impl
	for _, ctor := range Constructors(systemNS, eventingNS, f.redis.Client()) {
		impls = append(impls, ctor(ctx, configmap.NewStaticWatcher()))
	}
	if err := pkgcontroller.StartInformers(ctx.Done(), informers...); err != nil {
		t.Fatal(err)
	}
	done := make(chan struct{})
	go func() { pkgcontroller.StartAll(ctx, impls...); close(done) }()
	t.Cleanup(func() { cancel(); <-done })
	return f
}

func newBroker(name string, dls *duckv1.Destination) *eventingv1.Broker {
	b := &eventingv1.Broker{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS, Annotations: map[string]string{"eventing.knative.dev/broker.class": brokerclass.ClassName}},
	}
	if dls != nil {
		linear := eventingduckv1.BackoffPolicyExponential
		b.Spec.Delivery = &eventingduckv1.DeliverySpec{DeadLetterSink: dls, Retry: ptr.Int32(3), BackoffPolicy: &linear, BackoffDelay: ptr.String("PT0.2S")}
	}
	return b
}

func newTrigger(name, brokerName string, sub duckv1.Destination) *eventingv1.Trigger {
	return &eventingv1.Trigger{
		ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: appNS},
		Spec: eventingv1.TriggerSpec{Broker: brokerName, Subscriber: sub,
			Filter: &eventingv1.TriggerFilter{Attributes: eventingv1.TriggerFilterAttributes{"type": "dev.knfaas.e2e." + name}}},
	}
}

func ref(kind, apiVersion, name string) duckv1.Destination {
	return duckv1.Destination{Ref: &duckv1.KReference{Kind: kind, APIVersion: apiVersion, Name: name, Namespace: appNS}}
}

// createKsvc creates a Knative Service and gives it the address Serving would.
func (f *fixture) createKsvc(t testing.TB, name string) string {
	t.Helper()
	ctx := context.Background()
	u := &unstructured.Unstructured{Object: map[string]any{
		"apiVersion": "serving.knative.dev/v1", "kind": "Service",
		"metadata": map[string]any{"name": name, "namespace": appNS},
		"spec":     map[string]any{"template": map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"image": "example.com/fn"}}}}},
	}}
	created, err := f.dyn.Resource(ksvcGVR).Namespace(appNS).Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	url := "http://" + name + "." + appNS + ".svc.cluster.local"
	created.Object["status"] = map[string]any{"url": url, "address": map[string]any{"url": url}}
	if _, err := f.dyn.Resource(ksvcGVR).Namespace(appNS).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return url
}

// TestControllerAgainstAPIServer runs the class's controller against a real kube-apiserver and
// etcd with the Knative CRDs, and a real redis-server, and checks what `kubectl get brokers,triggers`
// shows: addresses, resolved sinks, Ready and the reasons it is not, and the cleanup on delete.
func TestControllerAgainstAPIServer(t *testing.T) {
	f := startFixture(t)
	ctx := context.Background()
	rdb := f.redis.Client()
	dlsURL := f.createKsvc(t, "deadletter")
	fnURL := f.createKsvc(t, "fn")
	if _, err := f.kube.CoreV1().Services(appNS).Create(ctx, &corev1.Service{
		ObjectMeta: metav1.ObjectMeta{Name: "plain", Namespace: appNS},
		Spec:       corev1.ServiceSpec{Ports: []corev1.ServicePort{{Port: 80}}},
	}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	brokerAddress := "http://" + IngressService + "." + systemNS + ".svc.cluster.local/" + appNS + "/default"

	t.Run("broker not ready until the data plane is", func(t *testing.T) {
		if _, err := f.ev.EventingV1().Brokers(appNS).Create(ctx, newBroker("default", &duckv1.Destination{Ref: ref("Service", "serving.knative.dev/v1", "deadletter").Ref}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitCondition(t, "Broker default", f.brokerCond(t, "default", apis.ConditionReady), corev1.ConditionFalse, "")
		b := waitCondition(t, "Broker default", f.brokerCond(t, "default", eventingv1.BrokerConditionIngress), corev1.ConditionFalse, ReasonIngressUnavailable)
		if got := b.Status.Address; got == nil || got.URL.String() != brokerAddress {
			t.Errorf("status.address %v, want %s", got, brokerAddress)
		}
		if c := b.Status.GetCondition(eventingv1.BrokerConditionFilter); c == nil || c.Reason != ReasonDispatcherUnavailable {
			t.Errorf("FilterReady %+v, want reason %s", c, ReasonDispatcherUnavailable)
		}
	})

	t.Run("broker ready with its dead-letter sink resolved", func(t *testing.T) {
		start := time.Now()
		f.readyEndpoints(t, IngressService)
		f.readyEndpoints(t, DispatcherService)
		b := waitCondition(t, "Broker default", f.brokerCond(t, "default", apis.ConditionReady), corev1.ConditionTrue, "")
		t.Logf("Broker Ready %s after its data plane's endpoints became ready", time.Since(start).Round(time.Millisecond))
		if got := b.Status.DeliveryStatus.DeadLetterSinkURI; got == nil || got.String() != dlsURL {
			t.Errorf("status.deadLetterSinkUri %v, want %s", got, dlsURL)
		}
		if got := b.Status.Address.URL.String(); got != brokerAddress {
			t.Errorf("status.address.url %s, want %s", got, brokerAddress)
		}
		if c := f.contract(t); len(c.Brokers) != 1 || c.Brokers[0].Key() != appNS+"/default" {
			t.Errorf("contract brokers %+v, want knfaas/default", c.Brokers)
		}
	})

	t.Run("broker with a missing dead-letter sink", func(t *testing.T) {
		if _, err := f.ev.EventingV1().Brokers(appNS).Create(ctx, newBroker("nodls", &duckv1.Destination{Ref: ref("Service", "serving.knative.dev/v1", "nope").Ref}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitCondition(t, "Broker nodls", f.brokerCond(t, "nodls", eventingv1.BrokerConditionDeadLetterSinkResolved), corev1.ConditionFalse, ReasonDeadLetterSinkNotFound)
		waitCondition(t, "Broker nodls", f.brokerCond(t, "nodls", apis.ConditionReady), corev1.ConditionFalse, ReasonDeadLetterSinkNotFound)
	})

	t.Run("triggers to a ksvc, a plain Service and a URI", func(t *testing.T) {
		for name, tc := range map[string]struct {
			sub  duckv1.Destination
			want string
		}{
			"to-ksvc":    {sub: ref("Service", "serving.knative.dev/v1", "fn"), want: fnURL},
			"to-service": {sub: ref("Service", "v1", "plain"), want: "http://plain." + appNS + ".svc.cluster.local"},
			"to-uri":     {sub: duckv1.Destination{URI: apis.HTTP("sink.example.com")}, want: "http://sink.example.com"},
		} {
			if _, err := f.ev.EventingV1().Triggers(appNS).Create(ctx, newTrigger(name, "default", tc.sub), metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
			tr := waitCondition(t, "Trigger "+name, f.triggerCond(t, name, apis.ConditionReady), corev1.ConditionTrue, "")
			if got := tr.Status.SubscriberURI.String(); got != tc.want {
				t.Errorf("%s: status.subscriberUri %s, want %s", name, got, tc.want)
			}
			if got := tr.Status.DeliveryStatus.DeadLetterSinkURI; got == nil || got.String() != dlsURL {
				t.Errorf("%s: status.deadLetterSinkUri %v, want the Broker's %s", name, got, dlsURL)
			}
			ct, ok := f.contractTrigger(t, name)
			if !ok || ct.Subscriber != tc.want || ct.DeadLetterSink != dlsURL || ct.ReplyURL != brokerAddress {
				t.Errorf("%s: contract trigger %+v (present %v)", name, ct, ok)
			}
			// Ready means the group exists: nothing accepted from now on is missed.
			groups, err := rdb.XInfoGroups(ctx, broker.StreamKey(appNS, "default")).Result()
			if err != nil || !hasGroup(groups, ct.Group()) {
				t.Errorf("%s: Ready, but consumer group %s not in %+v (%v)", name, ct.Group(), groups, err)
			}
		}
	})

	t.Run("trigger with a missing subscriber", func(t *testing.T) {
		if _, err := f.ev.EventingV1().Triggers(appNS).Create(ctx, newTrigger("ghost", "default", ref("Service", "serving.knative.dev/v1", "ghost")), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitCondition(t, "Trigger ghost", f.triggerCond(t, "ghost", eventingv1.TriggerConditionSubscriberResolved), corev1.ConditionFalse, ReasonSubscriberNotFound)
		waitCondition(t, "Trigger ghost", f.triggerCond(t, "ghost", apis.ConditionReady), corev1.ConditionFalse, ReasonSubscriberNotFound)
		if _, ok := f.contractTrigger(t, "ghost"); ok {
			t.Error("an unresolved Trigger is in the contract")
		}
		f.createKsvc(t, "ghost")
		waitCondition(t, "Trigger ghost once its subscriber exists", f.triggerCond(t, "ghost", apis.ConditionReady), corev1.ConditionTrue, "")
	})

	t.Run("trigger update reaches the contract", func(t *testing.T) {
		f.updateTrigger(t, "to-uri", func(tr *eventingv1.Trigger) { tr.Spec.Subscriber.URI = apis.HTTP("other.example.com") })
		runtimetest.Eventually(t, time.Minute, "the new subscriber in the contract", func() bool {
			ct, _ := f.contractTrigger(t, "to-uri")
			return ct.Subscriber == "http://other.example.com"
		})
	})

	t.Run("the data plane runs the contract the controller wrote", func(t *testing.T) {
		bins := dataplanetest.Binaries(t)
		got := make(chan string, 10)
		sink := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
			got <- r.Header.Get("Ce-Id")
		}))
		defer sink.Close()
		if _, err := f.ev.EventingV1().Triggers(appNS).Create(ctx, newTrigger("to-local", "default", duckv1.Destination{URI: apis.HTTP(strings.TrimPrefix(sink.URL, "http://"))}), metav1.CreateOptions{}); err != nil {
			t.Fatal(err)
		}
		waitCondition(t, "Trigger to-local", f.triggerCond(t, "to-local", apis.ConditionReady), corev1.ConditionTrue, "")
		cm, err := f.kube.CoreV1().ConfigMaps(systemNS).Get(ctx, brokerclass.ContractConfigMap, metav1.GetOptions{})
		if err != nil {
			t.Fatal(err)
		}
		// As the kubelet mounts the ConfigMap key into the data plane's pods.
		path := filepath.Join(t.TempDir(), brokerclass.ContractKey)
		if err := os.WriteFile(path, []byte(cm.Data[brokerclass.ContractKey]), 0o644); err != nil {
			t.Fatal(err)
		}
		ingress, dispatcher := freeAddrString(t), freeAddrString(t)
		env := func(name, addr string) map[string]string {
			return map[string]string{"REDIS_URL": f.redis.URL(), "CONTRACT_PATH": path, "LISTEN_ADDRESS": addr, "POD_NAME": name}
		}
		dataplanetest.Start(t, "ingress", bins[brokerclass.ModeIngress], env("ingress-0", ingress))
		dataplanetest.Start(t, "dispatcher", bins[brokerclass.ModeDispatcher], env("dispatcher-0", dispatcher))
		dataplanetest.WaitReady(t, ingress)
		dataplanetest.WaitReady(t, dispatcher)
		e := runtimetest.NewEvent("via-contract-1", "dev.knfaas.e2e.to-local")
		req, err := cehttp.NewHTTPRequestFromEvent(ctx, "http://"+ingress+broker.Path(appNS, "default"), e)
		if err != nil {
			t.Fatal(err)
		}
		resp, err := http.DefaultClient.Do(req)
		if err != nil {
			t.Fatal(err)
		}
		resp.Body.Close()
		if resp.StatusCode != http.StatusAccepted {
			t.Fatalf("ingress answered %d, want 202", resp.StatusCode)
		}
		select {
		case id := <-got:
			if id != "via-contract-1" {
				t.Fatalf("the subscriber got %q", id)
			}
		case <-time.After(time.Minute):
			t.Fatal("the event never reached the Trigger's subscriber")
		}
	})

	t.Run("redis down", func(t *testing.T) {
		f.redis.Stop()
		defer f.redis.Cont()
		// Any change makes the controller look again; without one it does within recheck.
		f.updateBroker(t, "default", func(b *eventingv1.Broker) { b.Annotations["touch"] = "1" })
		waitCondition(t, "Broker default", f.brokerCond(t, "default", apis.ConditionReady), corev1.ConditionFalse, ReasonRedisUnreachable)
		waitCondition(t, "Trigger to-ksvc", f.triggerCond(t, "to-ksvc", eventingv1.TriggerConditionBroker), corev1.ConditionFalse, ReasonBrokerNotReady)
		f.redis.Cont()
		f.updateBroker(t, "default", func(b *eventingv1.Broker) { b.Annotations["touch"] = "2" })
		waitCondition(t, "Broker default after redis is back", f.brokerCond(t, "default", apis.ConditionReady), corev1.ConditionTrue, "")
	})

	t.Run("trigger delete cleans up its group unless kept", func(t *testing.T) {
		f.updateTrigger(t, "to-service", func(tr *eventingv1.Trigger) {
			tr.Annotations = map[string]string{KeepDataAnnotation: "true"}
		})
		for _, name := range []string{"to-uri", "to-service"} {
			if err := f.ev.EventingV1().Triggers(appNS).Delete(ctx, name, metav1.DeleteOptions{}); err != nil {
				t.Fatal(err)
			}
			runtimetest.Eventually(t, time.Minute, name+" gone", func() bool {
				_, err := f.ev.EventingV1().Triggers(appNS).Get(ctx, name, metav1.GetOptions{})
				return apierrors.IsNotFound(err)
			})
			if _, ok := f.contractTrigger(t, name); ok {
				t.Errorf("deleted Trigger %s still in the contract", name)
			}
		}
		groups, _ := rdb.XInfoGroups(ctx, broker.StreamKey(appNS, "default")).Result()
		if hasGroup(groups, "trigger:"+appNS+"/to-uri") {
			t.Error("the deleted Trigger's consumer group is still there")
		}
		if !hasGroup(groups, "trigger:"+appNS+"/to-service") {
			t.Errorf("the consumer group of a Trigger annotated %s was removed", KeepDataAnnotation)
		}
	})

	t.Run("100 triggers", func(t *testing.T) {
		const n = 100
		start := time.Now()
		for i := range n {
			tr := newTrigger(fmt.Sprintf("many-%03d", i), "default", duckv1.Destination{URI: apis.HTTP(fmt.Sprintf("sink-%d.example.com", i))})
			if _, err := f.ev.EventingV1().Triggers(appNS).Create(ctx, tr, metav1.CreateOptions{}); err != nil {
				t.Fatal(err)
			}
		}
		created := time.Since(start)
		runtimetest.Eventually(t, 2*time.Minute, "100 Triggers Ready and in the contract", func() bool {
			list, err := f.ev.EventingV1().Triggers(appNS).List(ctx, metav1.ListOptions{})
			if err != nil {
				return false
			}
			ready := 0
			for _, tr := range list.Items {
				if strings.HasPrefix(tr.Name, "many-") && tr.Status.IsReady() {
					ready++
				}
			}
			return ready == n
		})
		all := time.Since(start)
		inContract := 0
		for _, tr := range f.contract(t).Triggers {
			if strings.HasPrefix(tr.Name, "many-") {
				inContract++
			}
		}
		if inContract != n {
			t.Errorf("%d of %d Ready Triggers in the contract", inContract, n)
		}
		t.Logf("%d Triggers created in %s, all Ready (groups created, contract written) %s after the first create", n, created.Round(time.Millisecond), all.Round(time.Millisecond))
	})

	t.Run("broker delete removes its stream", func(t *testing.T) {
		if err := f.ev.EventingV1().Brokers(appNS).Delete(ctx, "default", metav1.DeleteOptions{}); err != nil {
			t.Fatal(err)
		}
		runtimetest.Eventually(t, time.Minute, "Broker gone", func() bool {
			_, err := f.ev.EventingV1().Brokers(appNS).Get(ctx, "default", metav1.GetOptions{})
			return apierrors.IsNotFound(err)
		})
		if n := rdb.Exists(ctx, broker.StreamKey(appNS, "default")).Val(); n != 0 {
			t.Error("the deleted Broker's stream is still in Redis")
		}
		for _, b := range f.contract(t).Brokers {
			if b.Name == "default" {
				t.Error("the deleted Broker is still in the contract")
			}
		}
	})
}

func freeAddrString(t testing.TB) string {
	return fmt.Sprintf("127.0.0.1:%d", controlplanetest.FreePort(t))
}

func hasGroup(groups []redis.XInfoGroup, name string) bool {
	for _, g := range groups {
		if g.Name == name {
			return true
		}
	}
	return false
}
