package cli

import (
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/httpstream/spdy"
	"k8s.io/apimachinery/pkg/util/intstr"
	dynamicfake "k8s.io/client-go/dynamic/fake"
	"k8s.io/client-go/kubernetes/fake"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/client-go/tools/portforward"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/harness/redistest"
)

// fakeKubelet answers the port-forward protocol as a kubelet does, over an in-memory SPDY
// connection: each data stream is joined to the address its port header maps to.
type fakeKubelet struct {
	remotes map[int]string // pod port -> address that plays the container
	mu      sync.Mutex
	ports   []string // the port headers seen on data streams
}

func (k *fakeKubelet) Dial(...string) (httpstream.Connection, string, error) {
	clientSide, serverSide := net.Pipe()
	go func() {
		_, _ = spdy.NewServerConnection(serverSide, func(stream httpstream.Stream, replySent <-chan struct{}) error {
			go k.serve(stream, replySent)
			return nil
		})
	}()
	conn, err := spdy.NewClientConnection(clientSide)
	if err != nil {
		return nil, "", err
	}
	return conn, portforward.PortForwardProtocolV1Name, nil
}

func (k *fakeKubelet) serve(stream httpstream.Stream, replySent <-chan struct{}) {
	<-replySent
	h := stream.Headers()
	if h.Get(corev1.StreamType) == corev1.StreamTypeError {
		stream.Close() // no error to report
		return
	}
	port := h.Get(corev1.PortHeader)
	k.mu.Lock()
	k.ports = append(k.ports, port)
	k.mu.Unlock()
	n, _ := strconv.Atoi(port)
	c, err := net.Dial("tcp", k.remotes[n])
	if err != nil {
		_ = stream.Reset()
		return
	}
	go func() { _, _ = io.Copy(c, stream); c.(*net.TCPConn).CloseWrite() }()
	_, _ = io.Copy(stream, c)
	stream.Close()
	c.Close()
}

// fakeCluster replaces the cluster connector with client-go's fakes holding objs (typed) and
// knative (unstructured Knative objects); port-forwards go to kubelet.
func fakeCluster(t *testing.T, kubelet *fakeKubelet, objs []runtime.Object, knative ...*unstructured.Unstructured) *[]clusterFlags {
	t.Helper()
	core := fake.NewSimpleClientset(objs...).CoreV1()
	var dynObjs []runtime.Object
	for _, u := range knative {
		dynObjs = append(dynObjs, u)
	}
	dyn := dynamicfake.NewSimpleDynamicClientWithCustomListKinds(runtime.NewScheme(), map[schema.GroupVersionResource]string{
		ksvcGVR: "ServiceList", brokerGVR: "BrokerList",
	}, dynObjs...)
	var seen []clusterFlags
	old := clusterConnector
	clusterConnector = func(f clusterFlags) (*cluster, error) {
		seen = append(seen, f)
		ns := f.namespace
		if ns == "" {
			ns = DefaultPlatformNamespace
		}
		return &cluster{config: &rest.Config{Host: "https://api.example.test:6443"}, core: core, dynamic: dyn, namespace: ns, contextName: "test",
			forward: func(ctx context.Context, _, _ string, port int) (string, func(), error) {
				return forwardPort(ctx, kubelet, port)
			}}, nil
	}
	t.Cleanup(func() { clusterConnector = old })
	return &seen
}

func redisObjects(ns, redisURL string, readyPod bool) []runtime.Object {
	labels := map[string]string{"app.kubernetes.io/name": "redis"}
	pod := func(name string, ready bool) *corev1.Pod {
		status := corev1.ConditionFalse
		if ready {
			status = corev1.ConditionTrue
		}
		return &corev1.Pod{ObjectMeta: metav1.ObjectMeta{Name: name, Namespace: ns, Labels: labels},
			Spec:   corev1.PodSpec{Containers: []corev1.Container{{Name: "redis", Ports: []corev1.ContainerPort{{Name: "redis", ContainerPort: 6379}}}}},
			Status: corev1.PodStatus{Phase: corev1.PodRunning, Conditions: []corev1.PodCondition{{Type: corev1.PodReady, Status: status}}}}
	}
	return []runtime.Object{
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: ns}},
		&corev1.Namespace{ObjectMeta: metav1.ObjectMeta{Name: "kube-system"}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "redis", Namespace: ns},
			Spec: corev1.ServiceSpec{Selector: labels, Ports: []corev1.ServicePort{{Name: "redis", Port: 6379, TargetPort: intstr.FromString("redis")}}}},
		pod("redis-0", false),
		pod("redis-1", readyPod),
		&corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "redis", Namespace: ns}, Data: map[string][]byte{"url": []byte(redisURL)}},
	}
}

func TestClusterDLQThroughPortForward(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Password: "s3cret"})
	store := deadletter.NewStore(srv.Client(), deadletter.Options{})
	ids := seedLetters(t, store, [3]string{"e1", "com.example.order", "503"}, [3]string{"e2", "com.example.order", "500"})
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1/0") // must be ignored on a cluster
	t.Setenv(EnvAddr, "")
	kubelet := &fakeKubelet{remotes: map[int]string{6379: srv.Addr()}}
	seen := fakeCluster(t, kubelet, redisObjects("platform", "redis://:s3cret@redis.platform.svc.cluster.local:6379/0", true))

	out, err := runCLI(t, "dlq", "list", "-n", "platform", "-o", "json", "-v", "--context", "prod")
	if err != nil {
		t.Fatalf("dlq list on the cluster: %v\n%s", err, out)
	}
	for _, want := range []string{
		"redis: port-forward 127.0.0.1:",
		"-> pod platform/redis-1:6379 (Service platform/redis) through the Kubernetes API at https://api.example.test:6443 (context test)",
		"url and password from Secret platform/redis",
	} {
		if !strings.Contains(out, want) {
			t.Errorf("verbose output lacks %q:\n%s", want, out)
		}
	}
	for _, id := range ids {
		if !strings.Contains(out, `"letter": "`+id+`"`) {
			t.Errorf("letter %s not listed:\n%s", id, out)
		}
	}
	if got := (*seen)[0]; got != (clusterFlags{namespace: "platform", context: "prod"}) {
		t.Errorf("connector got %+v", got)
	}
	kubelet.mu.Lock()
	defer kubelet.mu.Unlock()
	if len(kubelet.ports) == 0 || kubelet.ports[0] != "6379" {
		t.Errorf("data streams for ports %v, want 6379 (the container port named redis)", kubelet.ports)
	}
}

func knativeObject(gvr schema.GroupVersionResource, kind, ns, name string, status map[string]any) *unstructured.Unstructured {
	u := &unstructured.Unstructured{Object: map[string]any{"status": status}}
	u.SetAPIVersion(gvr.Group + "/" + gvr.Version)
	u.SetKind(kind)
	u.SetNamespace(ns)
	u.SetName(name)
	return u
}

func TestClusterErrorsNameTheMissingObject(t *testing.T) {
	t.Setenv(EnvAddr, "")
	tests := []struct {
		name    string
		objs    []runtime.Object
		knative []*unstructured.Unstructured
		args    []string
		want    string
	}{
		{"no redis service", nil, nil, []string{"dlq", "list", "-n", "knfaas"},
			"dead letters are read from Redis: Service knfaas/redis not found on the Kubernetes API at https://api.example.test:6443 (context test): is knfaas installed in this namespace? (-n)"},
		{"default namespace", nil, nil, []string{"process", "list", "--kubeconfig", "kc"}, "Service knfaas/redis not found"},
		{"no ready redis pod", redisObjects("knfaas", "", false), nil, []string{"events", "drop", "-n", "knfaas", "--model", "orders", "--projector", "orders-projector"},
			"Service knfaas/redis has no running, ready pod (selector app.kubernetes.io/name=redis)"},
		{"no ksvc", nil, nil, []string{"send", "-n", "knfaas", "--service", "knfaas/webhook", "--type", "t"},
			"Knative Service knfaas/webhook not found on the Kubernetes API"},
		{"ksvc without ready revision", nil, []*unstructured.Unstructured{knativeObject(ksvcGVR, "Service", "knfaas", "webhook", map[string]any{})},
			[]string{"send", "--context", "c", "--webhook", "github"}, "Knative Service knfaas/webhook has no ready revision"},
		{"revision service missing", nil, []*unstructured.Unstructured{knativeObject(ksvcGVR, "Service", "knfaas", "webhook", map[string]any{"latestReadyRevisionName": "webhook-00001"})},
			[]string{"send", "-n", "knfaas", "--service", "knfaas/webhook", "--type", "t"}, "Service knfaas/webhook-00001 not found on the Kubernetes API at https://api.example.test:6443 (context test): the Service of revision webhook-00001"},
		{"no broker", nil, nil, []string{"send", "-n", "knfaas", "--type", "t"}, "Broker knfaas/default not found"},
		{"broker without address", nil, []*unstructured.Unstructured{knativeObject(brokerGVR, "Broker", "knfaas", "default", map[string]any{})},
			[]string{"dlq", "redrive", "-n", "knfaas"}, "Broker knfaas/default has no address yet"},
		{"broker ingress service missing", nil, []*unstructured.Unstructured{knativeObject(brokerGVR, "Broker", "knfaas", "default",
			map[string]any{"address": map[string]any{"url": "http://broker-ingress.knative-eventing.svc.cluster.local/knfaas/default"}})},
			[]string{"events", "replay", "-n", "knfaas", "--broker", "knfaas/default"}, "Service knative-eventing/broker-ingress not found on the Kubernetes API at https://api.example.test:6443 (context test): the ingress of Broker knfaas/default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fakeCluster(t, &fakeKubelet{}, tc.objs, tc.knative...)
			out, err := runCLI(t, tc.args...)
			if err == nil || !strings.Contains(err.Error(), tc.want) {
				t.Errorf("err = %v, want one containing %q\n%s", err, tc.want, out)
			}
		})
	}
}

func TestClusterServiceProxyURLs(t *testing.T) {
	t.Setenv(EnvAddr, "")
	fakeCluster(t, &fakeKubelet{}, []runtime.Object{
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "webhook-00002", Namespace: "knfaas"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}, {Name: "https", Port: 443}}}},
		&corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "rsb-ingress", Namespace: "knfaas-broker"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 8080}}}},
	},
		knativeObject(ksvcGVR, "Service", "knfaas", "webhook", map[string]any{"latestReadyRevisionName": "webhook-00002"}),
		knativeObject(brokerGVR, "Broker", "knfaas", "default", map[string]any{"address": map[string]any{"url": "http://rsb-ingress.knfaas-broker.svc.cluster.local:8080/knfaas/default"}}),
	)
	c, err := clusterConnector(clusterFlags{namespace: "knfaas"})
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct {
		name string
		get  func() (httpTarget, error)
		want string
	}{
		{"ksvc", func() (httpTarget, error) {
			return c.serviceTarget(context.Background(), "knfaas", "webhook", "/github", io.Discard)
		},
			"https://api.example.test:6443/api/v1/namespaces/knfaas/services/webhook-00002:80/proxy/github"},
		{"broker", func() (httpTarget, error) {
			return c.brokerTarget(context.Background(), "knfaas", "default", io.Discard)
		},
			"https://api.example.test:6443/api/v1/namespaces/knfaas-broker/services/rsb-ingress:8080/proxy/knfaas/default"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			got, err := tc.get()
			if err != nil {
				t.Fatal(err)
			}
			if got.url != tc.want {
				t.Errorf("url = %s, want %s", got.url, tc.want)
			}
		})
	}
}

func TestServiceOfHost(t *testing.T) {
	tests := []struct {
		host, name, ns string
		ok             bool
	}{
		{"broker-ingress.knative-eventing.svc.cluster.local", "broker-ingress", "knative-eventing", true},
		{"broker-ingress.knative-eventing.svc", "broker-ingress", "knative-eventing", true},
		{"broker-ingress.knative-eventing", "broker-ingress", "knative-eventing", true},
		{"broker.example.com", "", "", false},
		{"localhost", "", "", false},
	}
	for _, tc := range tests {
		t.Run(tc.host, func(t *testing.T) {
			name, ns, ok := serviceOfHost(tc.host)
			if name != tc.name || ns != tc.ns || ok != tc.ok {
				t.Errorf("serviceOfHost(%q) = %q, %q, %v", tc.host, name, ns, ok)
			}
		})
	}
}

func TestNamespaceCompletionFromTheCluster(t *testing.T) {
	fakeCluster(t, &fakeKubelet{}, redisObjects("knfaas", "", true))
	for _, args := range [][]string{{"__complete", "dlq", "list", "-n", ""}, {"__complete", "send", "--namespace", ""}} {
		out, err := runCLI(t, args...)
		if err != nil {
			t.Fatal(err)
		}
		if !strings.HasPrefix(out, "knfaas\nkube-system\n") {
			t.Errorf("%v completes:\n%s", args, out)
		}
	}
}

// writeKubeconfig writes a kubeconfig with the named contexts, each on its own server and
// namespace, and current as its current context.
func writeKubeconfig(t *testing.T, path, current string, contexts map[string][2]string) {
	t.Helper()
	cfg := clientcmdapi.NewConfig()
	for name, sn := range contexts {
		cfg.Clusters[name] = &clientcmdapi.Cluster{Server: sn[0]}
		cfg.AuthInfos[name] = &clientcmdapi.AuthInfo{Token: "t"}
		cfg.Contexts[name] = &clientcmdapi.Context{Cluster: name, AuthInfo: name, Namespace: sn[1]}
	}
	cfg.CurrentContext = current
	if err := clientcmd.WriteToFile(*cfg, path); err != nil {
		t.Fatal(err)
	}
}

func TestKubeconfigLoadingRules(t *testing.T) {
	dir := t.TempDir()
	a, b := filepath.Join(dir, "a"), filepath.Join(dir, "b")
	writeKubeconfig(t, a, "dev", map[string][2]string{"dev": {"https://dev:6443", ""}, "prod": {"https://prod:6443", "team"}})
	writeKubeconfig(t, b, "other", map[string][2]string{"other": {"https://other:6443", "apps"}})
	tests := []struct {
		name       string
		env        string
		flags      clusterFlags
		host, ns   string
		ctx        string
		wantErrSub string
	}{
		{"--kubeconfig, current context, no namespace in it", "", clusterFlags{kubeconfig: a}, "https://dev:6443", DefaultPlatformNamespace, "dev", ""},
		{"--context picks one and its namespace", "", clusterFlags{kubeconfig: a, context: "prod"}, "https://prod:6443", "team", "prod", ""},
		{"-n wins over the context's namespace", "", clusterFlags{kubeconfig: a, context: "prod", namespace: "x"}, "https://prod:6443", "x", "prod", ""},
		{"KUBECONFIG", b, clusterFlags{namespace: "knfaas"}, "https://other:6443", "knfaas", "other", ""},
		{"KUBECONFIG list merged, --context from the second file", a + string(os.PathListSeparator) + b, clusterFlags{context: "other"}, "https://other:6443", "apps", "other", ""},
		{"unknown context", "", clusterFlags{kubeconfig: a, context: "nope"}, "", "", "", `context "nope" does not exist`},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(clientcmd.RecommendedConfigPathEnvVar, tc.env)
			c, err := connectCluster(tc.flags)
			if tc.wantErrSub != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErrSub) {
					t.Fatalf("err = %v, want %q", err, tc.wantErrSub)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if c.config.Host != tc.host || c.namespace != tc.ns || c.contextName != tc.ctx {
				t.Errorf("got host %s ns %s context %s", c.config.Host, c.namespace, c.contextName)
			}
		})
	}
}

func TestClusterFlagsOnEveryRunCommand(t *testing.T) {
	for _, path := range [][]string{{"send"}, {"dlq", "list"}, {"dlq", "show"}, {"dlq", "redrive"}, {"dlq", "purge"}, {"process", "list"}, {"process", "show"}, {"events", "replay"}} {
		root := NewRootCommand("kn faas")
		cmd, _, err := root.Find(path)
		if err != nil {
			t.Fatal(err)
		}
		for _, flag := range []string{"namespace", "kubeconfig", "context", "verbose"} {
			if cmd.Flags().Lookup(flag) == nil {
				t.Errorf("%v has no --%s", path, flag)
			}
		}
		if f := cmd.Flags().Lookup("namespace"); f != nil && f.Shorthand != "n" {
			t.Errorf("%v: --namespace shorthand %q, want n", path, f.Shorthand)
		}
	}
}

// TestClusterSendWebhookSignsWithTheClusterSecret: on a cluster, send --webhook signs with the
// key of the cluster's Secret webhook-secrets and posts through the service proxy of the
// webhook function's revision; a template value or a missing Secret is refused by name.
func TestClusterSendWebhookSignsWithTheClusterSecret(t *testing.T) {
	t.Setenv(EnvAddr, "")
	type got struct {
		path, revision, signature string
		body                      []byte
	}
	received := make(chan got, 1)
	api := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		body, _ := io.ReadAll(r.Body)
		received <- got{r.URL.Path, r.Header.Get("Knative-Serving-Revision"), r.Header.Get("X-Hub-Signature-256"), body}
		w.WriteHeader(http.StatusAccepted)
	}))
	t.Cleanup(api.Close)
	ksvc := knativeObject(ksvcGVR, "Service", "knfaas", "webhook", map[string]any{"latestReadyRevisionName": "webhook-00003"})
	revision := &corev1.Service{ObjectMeta: metav1.ObjectMeta{Name: "webhook-00003", Namespace: "knfaas"}, Spec: corev1.ServiceSpec{Ports: []corev1.ServicePort{{Name: "http", Port: 80}}}}
	secret := func(v string) *corev1.Secret {
		return &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: "webhook-secrets", Namespace: "knfaas"}, Data: map[string][]byte{"github": []byte(v)}}
	}
	tests := []struct {
		name    string
		objs    []runtime.Object
		wantErr string
	}{
		{"signed with the cluster's key", []runtime.Object{revision, secret("cluster-key")}, ""},
		{"template value", []runtime.Object{revision, secret("CHANGE-ME-github")}, "Secret knfaas/webhook-secrets key github is still the template's CHANGE-ME"},
		{"no Secret", []runtime.Object{revision}, "Secret knfaas/webhook-secrets not found on the Kubernetes API"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			fakeCluster(t, &fakeKubelet{}, tc.objs, ksvc)
			fake := clusterConnector
			clusterConnector = func(f clusterFlags) (*cluster, error) {
				c, err := fake(f)
				if c != nil {
					c.config = &rest.Config{Host: api.URL}
				}
				return c, err
			}
			t.Cleanup(func() { clusterConnector = fake })
			out, err := runCLI(t, "send", "-n", "knfaas", "--webhook", "github", "--type", "push", "--id", "d-1")
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatalf("%v\n%s", err, out)
			}
			g := <-received
			mac := hmac.New(sha256.New, []byte("cluster-key"))
			mac.Write(g.body)
			if want := "sha256=" + hex.EncodeToString(mac.Sum(nil)); g.signature != want {
				t.Errorf("signature %s, want %s (HMAC with the cluster's key)", g.signature, want)
			}
			if g.path != "/api/v1/namespaces/knfaas/services/webhook-00003:80/proxy/github" || g.revision != "webhook-00003" {
				t.Errorf("posted to %s (revision header %q)", g.path, g.revision)
			}
		})
	}
}

func TestContextCompletionFromTheKubeconfig(t *testing.T) {
	kc := filepath.Join(t.TempDir(), "config")
	writeKubeconfig(t, kc, "dev", map[string][2]string{"dev": {"https://dev:6443", ""}, "prod": {"https://prod:6443", "team"}})
	out, err := runCLI(t, "__complete", "dlq", "list", "--kubeconfig", kc, "--context", "")
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(out, "dev\nprod\n") {
		t.Errorf("--context completes:\n%s", out)
	}
}
