//go:build e2e

package cli

import (
	"context"
	"net"
	"net/http"
	"net/http/httptest"
	"path/filepath"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"

	"github.com/knfaas/knfaas/internal/harness/controlplanetest"
)

// nonLoopbackIPv4 is an address of this machine that kube-apiserver accepts in Endpoints (it
// refuses loopback and link-local ones for its service proxy).
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

// recordedRequest is what the in-cluster workload played by a local server received.
type recordedRequest struct {
	path, ceType, revision string
}

type requestLog struct {
	mu   sync.Mutex
	reqs []recordedRequest
}

func (l *requestLog) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	l.mu.Lock()
	l.reqs = append(l.reqs, recordedRequest{path: r.URL.Path, ceType: r.Header.Get("Ce-Type"), revision: r.Header.Get("Knative-Serving-Revision")})
	l.mu.Unlock()
	w.WriteHeader(http.StatusAccepted)
}

func (l *requestLog) last() recordedRequest {
	l.mu.Lock()
	defer l.mu.Unlock()
	if len(l.reqs) == 0 {
		return recordedRequest{}
	}
	return l.reqs[len(l.reqs)-1]
}

// selectorlessService creates Service ns/name on port 80 whose only endpoint is a pod with
// address ip:port. The API server's service proxy reads Endpoints (no controller-manager runs
// to fill them, so the test writes them) and proxies only to an address that a pod of the
// namespace has as its IP.
func selectorlessService(t *testing.T, kube kubernetes.Interface, ns, name string, ip net.IP, port int32) {
	t.Helper()
	ctx := context.Background()
	if _, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: name},
		Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80, TargetPort: intstr.FromInt32(port)}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	pod := runningPod(t, kube, ns, name+"-pod", nil, ip)
	//nolint:staticcheck // the service proxy of kube-apiserver reads the Endpoints API
	if _, err := kube.CoreV1().Endpoints(ns).Create(ctx, &corev1.Endpoints{ObjectMeta: metav1.ObjectMeta{Name: name},
		Subsets: []corev1.EndpointSubset{{
			Addresses: []corev1.EndpointAddress{{IP: ip.String(), TargetRef: &corev1.ObjectReference{Kind: "Pod", Namespace: ns, Name: pod.Name}}},
			Ports:     []corev1.EndpointPort{{Name: "http", Port: port}},
		}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
}

// runningPod creates a pod on a node that does not exist and marks it running and ready with
// ip as its address.
func runningPod(t *testing.T, kube kubernetes.Interface, ns, name string, labels map[string]string, ip net.IP) *corev1.Pod {
	t.Helper()
	ctx := context.Background()
	pod, err := kube.CoreV1().Pods(ns).Create(ctx, &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Labels: labels},
		Spec: corev1.PodSpec{NodeName: "node-1", Containers: []corev1.Container{{Name: "main", Image: "example.test/main", Ports: []corev1.ContainerPort{{Name: "redis", ContainerPort: 6379}}}}}}, metav1.CreateOptions{})
	if err != nil {
		t.Fatal(err)
	}
	pod.Status = corev1.PodStatus{Phase: corev1.PodRunning, PodIP: ip.String(), PodIPs: []corev1.PodIP{{IP: ip.String()}},
		Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: corev1.ConditionTrue}}}
	if pod, err = kube.CoreV1().Pods(ns).UpdateStatus(ctx, pod, metav1.UpdateOptions{}); err != nil {
		t.Fatal(err)
	}
	return pod
}

// createWithStatus creates a Knative object and then writes its status subresource.
func createWithStatus(t *testing.T, dyn dynamic.Interface, u *unstructured.Unstructured, spec map[string]any) {
	t.Helper()
	ctx := context.Background()
	status := u.Object["status"]
	u.Object["spec"] = spec
	delete(u.Object, "status")
	gvr := ksvcGVR
	if u.GetKind() == "Broker" {
		gvr = brokerGVR
	}
	created, err := dyn.Resource(gvr).Namespace(u.GetNamespace()).Create(ctx, u, metav1.CreateOptions{})
	if err != nil {
		t.Fatalf("creating %s %s: %v", u.GetKind(), u.GetName(), err)
	}
	created.Object["status"] = status
	if _, err := dyn.Resource(gvr).Namespace(u.GetNamespace()).UpdateStatus(ctx, created, metav1.UpdateOptions{}); err != nil {
		t.Fatalf("status of %s %s: %v", u.GetKind(), u.GetName(), err)
	}
}

// TestClusterCommandsAgainstAPIServer runs the CLI with only a kubeconfig against a real
// kube-apiserver: send reaches a Knative Service and a Broker through the API server's service
// proxy (to a local server standing in for the revision and the broker ingress), and dlq list's
// port-forward request reaches the pods/portforward subresource (no kubelet runs here, so it
// ends at the API server, with its answer in the error).
func TestClusterCommandsAgainstAPIServer(t *testing.T) {
	ip := nonLoopbackIPv4(t)
	cp := controlplanetest.Start(t)
	controlplanetest.InstallKnativeCRDs(t, cp.Config)
	kube := kubernetes.NewForConfigOrDie(cp.Config)
	dyn := dynamic.NewForConfigOrDie(cp.Config)
	ctx := context.Background()
	const ns = "fnapp"
	if _, err := kube.CoreV1().Namespaces().Create(ctx, &corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	// No controller-manager creates the namespace's default ServiceAccount that pods need.
	if _, err := kube.CoreV1().ServiceAccounts(ns).Create(ctx, &corev1.ServiceAccount{ObjectMeta: metav1.ObjectMeta{Name: "default"}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}

	workload := &requestLog{}
	l, err := net.Listen("tcp", net.JoinHostPort(ip.String(), "0"))
	if err != nil {
		t.Fatal(err)
	}
	srv := httptest.NewUnstartedServer(workload)
	srv.Listener.Close()
	srv.Listener = l
	srv.Start()
	t.Cleanup(srv.Close)
	port := int32(l.Addr().(*net.TCPAddr).Port)

	createWithStatus(t, dyn, knativeObject(ksvcGVR, "Service", ns, "hello", map[string]any{"latestReadyRevisionName": "hello-00001"}),
		map[string]any{"template": map[string]any{"spec": map[string]any{"containers": []any{map[string]any{"image": "example.test/hello"}}}}})
	selectorlessService(t, kube, ns, "hello-00001", ip, port)
	createWithStatus(t, dyn, knativeObject(brokerGVR, "Broker", ns, "default", map[string]any{"address": map[string]any{"url": "http://ingress." + ns + ".svc.cluster.local/" + ns + "/default"}}), map[string]any{})
	selectorlessService(t, kube, ns, "ingress", ip, port)

	// The Redis Service and its pod, which the API server believes runs on a node.
	labels := map[string]string{"app.kubernetes.io/name": "redis"}
	if _, err := kube.CoreV1().Services(ns).Create(ctx, &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "redis"},
		Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "redis", Port: 6379, TargetPort: intstr.FromString("redis")}}}}, metav1.CreateOptions{}); err != nil {
		t.Fatal(err)
	}
	runningPod(t, kube, ns, "redis-0", labels, ip)

	// Only a kubeconfig: its current context is a broken one; --context picks the real one.
	kc := filepath.Join(t.TempDir(), "config")
	cfg := clientcmdapi.NewConfig()
	cfg.Clusters["e2e"] = &clientcmdapi.Cluster{Server: cp.Config.Host, InsecureSkipTLSVerify: true}
	cfg.AuthInfos["e2e"] = &clientcmdapi.AuthInfo{Token: cp.Token}
	cfg.Contexts["e2e"] = &clientcmdapi.Context{Cluster: "e2e", AuthInfo: "e2e", Namespace: ns}
	cfg.Clusters["gone"] = &clientcmdapi.Cluster{Server: "https://127.0.0.1:1"}
	cfg.Contexts["gone"] = &clientcmdapi.Context{Cluster: "gone", AuthInfo: "e2e"}
	cfg.CurrentContext = "gone"
	if err := clientcmd.WriteToFile(*cfg, kc); err != nil {
		t.Fatal(err)
	}
	t.Setenv(clientcmd.RecommendedConfigPathEnvVar, kc)
	t.Setenv(EnvAddr, "")

	tests := []struct {
		name    string
		args    []string
		wantOut []string
		want    recordedRequest
		wantErr string
	}{
		{"send to a Knative Service", []string{"send", "--context", "e2e", "-v", "--service", ns + "/hello", "--path", "/orders", "--type", "dev.test.ksvc"},
			[]string{"http: Knative Service fnapp/hello, revision hello-00001: service proxy of the Kubernetes API at " + cp.Config.Host + " (context e2e)"},
			recordedRequest{path: "/orders", ceType: "dev.test.ksvc", revision: "hello-00001"}, ""},
		{"send to a Broker", []string{"send", "--context", "e2e", "-v", "--broker", ns + "/default", "--type", "dev.test.broker"},
			[]string{"http: Broker fnapp/default at http://ingress.fnapp.svc.cluster.local/fnapp/default: service proxy"},
			recordedRequest{path: "/fnapp/default", ceType: "dev.test.broker"}, ""},
		{"missing Knative Service", []string{"send", "--context", "e2e", "--service", ns + "/nope", "--type", "t"}, nil, recordedRequest{},
			"Knative Service fnapp/nope not found on the Kubernetes API at " + cp.Config.Host + " (context e2e)"},
		{"port-forward reaches the API server", []string{"dlq", "list", "--context", "e2e"}, nil, recordedRequest{},
			"dead letters are read from Redis: port-forward to pod fnapp/redis-0:6379 (Service fnapp/redis) through the Kubernetes API at " + cp.Config.Host + " (context e2e): error upgrading connection: "}, // then the API server's answer: the node does not exist},
		{"wrong namespace", []string{"process", "list", "--context", "e2e", "-n", "default"}, nil, recordedRequest{},
			"Service default/redis not found on the Kubernetes API"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			out, err := runCLI(t, tc.args...)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q\n%s", err, tc.wantErr, out)
				}
				t.Logf("error as the user sees it: %v", err)
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			for _, w := range tc.wantOut {
				if !strings.Contains(out, w) {
					t.Errorf("output lacks %q:\n%s", w, out)
				}
			}
			if got := workload.last(); got != tc.want {
				t.Errorf("the workload got %+v, want %+v", got, tc.want)
			}
		})
	}

	out, err := runCLI(t, "__complete", "dlq", "list", "--context", "e2e", "-n", "")
	if err != nil || !strings.Contains(out, ns+"\n") || !strings.Contains(out, "kube-system\n") {
		t.Errorf("namespace completion from the API server: %v\n%s", err, out)
	}
}
