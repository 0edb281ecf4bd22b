package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"sort"
	"strconv"
	"strings"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/apis/meta/v1/unstructured"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/apimachinery/pkg/types"
	"k8s.io/apimachinery/pkg/util/httpstream"
	"k8s.io/apimachinery/pkg/util/intstr"
	"k8s.io/client-go/dynamic"
	corev1client "k8s.io/client-go/kubernetes/typed/core/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"k8s.io/client-go/tools/portforward"
	"k8s.io/client-go/transport/spdy"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// DefaultPlatformNamespace is where the platform's own objects (Redis, the functions) live on a
// cluster when neither -n nor the kubeconfig context names a namespace.
const DefaultPlatformNamespace = "knfaas"

// redisServiceName is the Service of the state store (config/500-redis-service.yaml); the
// Secret of the same name holds its URL and password (config/300-redis-secret.yaml).
const redisServiceName = "redis"

var (
	ksvcGVR   = schema.GroupVersionResource{Group: "serving.knative.dev", Version: "v1", Resource: "services"}
	brokerGVR = schema.GroupVersionResource{Group: "eventing.knative.dev", Version: "v1", Resource: "brokers"}
)

// clusterFlags are kn's conventions: -n/--namespace, --kubeconfig and --context. Any of them
// set makes a command reach the platform on a cluster through the Kubernetes API instead of a
// local knfaas up.
type clusterFlags struct {
	namespace  string
	kubeconfig string
	context    string
}

func addClusterFlags(cmd *cobra.Command, f *clusterFlags) {
	fl := cmd.Flags()
	fl.StringVarP(&f.namespace, "namespace", "n", "", "namespace of the platform on a cluster (default: the kubeconfig context's, else "+DefaultPlatformNamespace+"); reaches the cluster instead of knfaas up")
	fl.StringVar(&f.kubeconfig, "kubeconfig", "", "kubeconfig file (default: $KUBECONFIG, else ~/.kube/config); reaches the cluster instead of knfaas up")
	fl.StringVar(&f.context, "context", "", "kubeconfig context to use; reaches the cluster instead of knfaas up")
	_ = cmd.RegisterFlagCompletionFunc("namespace", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		c, err := clusterConnector(*f)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		names, err := c.namespaces(context.Background())
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		return names, cobra.ShellCompDirectiveNoFileComp
	})
	_ = cmd.RegisterFlagCompletionFunc("context", func(*cobra.Command, []string, string) ([]string, cobra.ShellCompDirective) {
		raw, err := f.clientConfig().RawConfig()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var names []string
		for name := range raw.Contexts {
			names = append(names, name)
		}
		sort.Strings(names)
		return names, cobra.ShellCompDirectiveNoFileComp
	})
}

// onCluster says whether a kn convention flag was given.
func (f clusterFlags) onCluster() bool {
	return f.namespace != "" || f.kubeconfig != "" || f.context != ""
}

// clientConfig follows clientcmd's loading rules: --kubeconfig, else $KUBECONFIG (a list),
// else ~/.kube/config; --context overrides the current context.
func (f clusterFlags) clientConfig() clientcmd.ClientConfig {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	rules.ExplicitPath = f.kubeconfig
	overrides := &clientcmd.ConfigOverrides{CurrentContext: f.context}
	return clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules, overrides)
}

// cluster is a connection to the Kubernetes API of a cluster that runs the platform.
type cluster struct {
	config      *rest.Config
	core        corev1client.CoreV1Interface
	dynamic     dynamic.Interface
	namespace   string // the platform's namespace
	contextName string
	// forward opens a port-forward to port of a pod and returns the local address.
	forward func(ctx context.Context, namespace, pod string, port int) (addr string, stop func(), err error)
}

// clusterConnector connects to the cluster the flags name; tests replace it with fakes.
var clusterConnector = connectCluster

func connectCluster(f clusterFlags) (*cluster, error) {
	cc := f.clientConfig()
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	raw, err := cc.RawConfig()
	if err != nil {
		return nil, fmt.Errorf("kubeconfig: %w", err)
	}
	contextName := f.context
	if contextName == "" {
		contextName = raw.CurrentContext
	}
	ns := f.namespace
	if ns == "" {
		if kc := raw.Contexts[contextName]; kc != nil && kc.Namespace != "" {
			ns = kc.Namespace
		} else {
			ns = DefaultPlatformNamespace
		}
	}
	core, err := corev1client.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	dyn, err := dynamic.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("kubernetes client: %w", err)
	}
	c := &cluster{config: cfg, core: core, dynamic: dyn, namespace: ns, contextName: contextName}
	c.forward = func(ctx context.Context, namespace, pod string, port int) (string, func(), error) {
		dialer, err := podPortForwardDialer(cfg, core, namespace, pod)
		if err != nil {
			return "", nil, err
		}
		return forwardPort(ctx, dialer, port)
	}
	return c, nil
}

// where names the API server and context for messages.
func (c *cluster) where() string {
	if c.contextName == "" {
		return "the Kubernetes API at " + c.config.Host
	}
	return fmt.Sprintf("the Kubernetes API at %s (context %s)", c.config.Host, c.contextName)
}

func (c *cluster) namespaces(ctx context.Context) ([]string, error) {
	list, err := c.core.Namespaces().List(ctx, metav1.ListOptions{})
	if err != nil {
		return nil, fmt.Errorf("listing namespaces on %s: %w", c.where(), err)
	}
	names := make([]string, 0, len(list.Items))
	for _, n := range list.Items {
		names = append(names, n.Name)
	}
	sort.Strings(names)
	return names, nil
}

// notFound turns an API NotFound into "Kind ns/name not found on …", other errors into a wrapped
// one.
func (c *cluster) notFound(err error, kind, ns, name, hint string) error {
	if apierrors.IsNotFound(err) {
		msg := fmt.Sprintf("%s %s/%s not found on %s", kind, ns, name, c.where())
		if hint != "" {
			msg += ": " + hint
		}
		return errors.New(msg)
	}
	return fmt.Errorf("reading %s %s/%s on %s: %w", kind, ns, name, c.where(), err)
}

// podPortForwardDialer is the SPDY dialer of the pods/portforward subresource, as kubectl
// port-forward uses.
func podPortForwardDialer(cfg *rest.Config, core corev1client.CoreV1Interface, namespace, pod string) (httpstream.Dialer, error) {
	rt, upgrader, err := spdy.RoundTripperFor(cfg)
	if err != nil {
		return nil, fmt.Errorf("port-forward transport: %w", err)
	}
	u := core.RESTClient().Post().Resource("pods").Namespace(namespace).Name(pod).SubResource("portforward").URL()
	return spdy.NewDialer(upgrader, &http.Client{Transport: rt}, http.MethodPost, u), nil
}

// forwardPort listens on a free port of 127.0.0.1 and forwards its connections over dialer to
// port; it stops when stop is called or ctx ends.
func forwardPort(ctx context.Context, dialer httpstream.Dialer, port int) (addr string, stop func(), err error) {
	stopCh, ready := make(chan struct{}), make(chan struct{})
	var once sync.Once
	stop = func() { once.Do(func() { close(stopCh) }) }
	var errOut strings.Builder
	fw, err := portforward.NewOnAddresses(dialer, []string{"127.0.0.1"}, []string{fmt.Sprintf("0:%d", port)}, stopCh, ready, io.Discard, &syncWriter{w: &errOut})
	if err != nil {
		return "", nil, fmt.Errorf("port-forward: %w", err)
	}
	done := make(chan error, 1)
	go func() { done <- fw.ForwardPorts() }()
	select {
	case <-ready:
	case err := <-done:
		if err == nil {
			err = errors.New("stopped before it was ready")
		}
		return "", nil, err
	case <-ctx.Done():
		stop()
		return "", nil, ctx.Err()
	}
	context.AfterFunc(ctx, stop)
	ports, err := fw.GetPorts()
	if err != nil || len(ports) != 1 {
		stop()
		return "", nil, fmt.Errorf("port-forward: no local port (%v)", err)
	}
	return net.JoinHostPort("127.0.0.1", strconv.Itoa(int(ports[0].Local))), stop, nil
}

// syncWriter serialises writes from the forwarder's goroutines.
type syncWriter struct {
	mu sync.Mutex
	w  io.Writer
}

func (s *syncWriter) Write(p []byte) (int, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.w.Write(p)
}

// redisPod finds a running, ready pod behind the Service redis in the platform namespace and
// the container port its "redis" Service port targets.
func (c *cluster) redisPod(ctx context.Context) (*corev1.Pod, int, error) {
	ns := c.namespace
	svc, err := c.core.Services(ns).Get(ctx, redisServiceName, metav1.GetOptions{})
	if err != nil {
		return nil, 0, c.notFound(err, "Service", ns, redisServiceName, "is knfaas installed in this namespace? (-n)")
	}
	if len(svc.Spec.Ports) == 0 {
		return nil, 0, fmt.Errorf("Service %s/%s has no ports", ns, redisServiceName)
	}
	sp := svc.Spec.Ports[0]
	for _, p := range svc.Spec.Ports {
		if p.Name == "redis" {
			sp = p
		}
	}
	if len(svc.Spec.Selector) == 0 {
		return nil, 0, fmt.Errorf("Service %s/%s has no selector, so no pod to forward to", ns, redisServiceName)
	}
	sel := labels.SelectorFromSet(svc.Spec.Selector).String()
	pods, err := c.core.Pods(ns).List(ctx, metav1.ListOptions{LabelSelector: sel})
	if err != nil {
		return nil, 0, fmt.Errorf("listing the pods of Service %s/%s on %s: %w", ns, redisServiceName, c.where(), err)
	}
	sort.Slice(pods.Items, func(i, j int) bool { return pods.Items[i].Name < pods.Items[j].Name })
	for i := range pods.Items {
		pod := &pods.Items[i]
		if pod.DeletionTimestamp != nil || pod.Status.Phase != corev1.PodRunning || !podReady(pod) {
			continue
		}
		port, err := targetPort(pod, sp)
		if err != nil {
			return nil, 0, fmt.Errorf("Service %s/%s: %w", ns, redisServiceName, err)
		}
		return pod, port, nil
	}
	return nil, 0, fmt.Errorf("Service %s/%s has no running, ready pod (selector %s) on %s", ns, redisServiceName, sel, c.where())
}

func podReady(pod *corev1.Pod) bool {
	for _, cond := range pod.Status.Conditions {
		if cond.Type == corev1.PodReady {
			return cond.Status == corev1.ConditionTrue
		}
	}
	return false
}

// targetPort resolves a Service port's targetPort (a number or a container port's name) in pod.
func targetPort(pod *corev1.Pod, sp corev1.ServicePort) (int, error) {
	tp := sp.TargetPort
	switch {
	case tp.Type == intstr.Int && tp.IntVal != 0:
		return int(tp.IntVal), nil
	case tp.Type == intstr.String && tp.StrVal != "":
		for _, ctr := range pod.Spec.Containers {
			for _, p := range ctr.Ports {
				if p.Name == tp.StrVal {
					return int(p.ContainerPort), nil
				}
			}
		}
		return 0, fmt.Errorf("pod %s has no container port named %q", pod.Name, tp.StrVal)
	}
	return int(sp.Port), nil
}

// redisURL opens a port-forward to the platform's Redis and returns a URL for it: the Secret
// redis's url (its password and database) on the forwarded address, else a URL without password
// (REDIS_PASSWORD applies). log gets the path taken.
func (c *cluster) redisURL(ctx context.Context, log io.Writer) (string, func(), error) {
	pod, port, err := c.redisPod(ctx)
	if err != nil {
		return "", nil, err
	}
	addr, stop, err := c.forward(ctx, pod.Namespace, pod.Name, port)
	if err != nil {
		return "", nil, fmt.Errorf("port-forward to pod %s/%s:%d (Service %s/%s) through %s: %w", pod.Namespace, pod.Name, port, c.namespace, redisServiceName, c.where(), err)
	}
	fmt.Fprintf(log, "redis: port-forward %s -> pod %s/%s:%d (Service %s/%s) through %s\n", addr, pod.Namespace, pod.Name, port, c.namespace, redisServiceName, c.where())
	u := &url.URL{Scheme: "redis", Host: addr, Path: "/0"}
	secret, err := c.core.Secrets(c.namespace).Get(ctx, redisServiceName, metav1.GetOptions{})
	switch {
	case err == nil && len(secret.Data["url"]) > 0:
		su, perr := url.Parse(string(secret.Data["url"]))
		if perr != nil {
			stop()
			return "", nil, fmt.Errorf("Secret %s/%s: key url: %w", c.namespace, redisServiceName, perr)
		}
		su.Host = addr
		if su.Scheme == "rediss" {
			// TLS is terminated by the pod's server; the certificate names the Service, not
			// 127.0.0.1, so REDIS_CA_FILE and the server name must fit. Keep the scheme.
			fmt.Fprintf(log, "redis: TLS to a forwarded address; the certificate must be valid for the Service name\n")
		}
		u = su
		fmt.Fprintf(log, "redis: url and password from Secret %s/%s\n", c.namespace, redisServiceName)
	case err == nil || apierrors.IsNotFound(err):
		fmt.Fprintf(log, "redis: no url in Secret %s/%s; REDIS_PASSWORD applies\n", c.namespace, redisServiceName)
	default:
		stop()
		return "", nil, fmt.Errorf("reading Secret %s/%s on %s: %w", c.namespace, redisServiceName, c.where(), err)
	}
	return u.String(), stop, nil
}

// httpTarget is where a command posts and with what transport.
type httpTarget struct {
	url       string
	transport http.RoundTripper
	// audience is a Broker's status.address.audience: set when it requires OIDC authentication.
	audience string
}

// serviceProxyURL is the API server's proxy to port of Service ns/name, plus path.
func (c *cluster) serviceProxyURL(ns, name string, port int32, path string) string {
	host := strings.TrimSuffix(c.config.Host, "/")
	if !strings.Contains(host, "://") {
		host = "https://" + host
	}
	return fmt.Sprintf("%s%s/api/v1/namespaces/%s/services/%s:%d/proxy/%s", host, strings.TrimSuffix(c.config.APIPath, "/"), url.PathEscape(ns), url.PathEscape(name), port, strings.TrimPrefix(path, "/"))
}

// apiTransport is the authenticated transport to the API server, with extra headers.
func (c *cluster) apiTransport(headers http.Header) (http.RoundTripper, error) {
	rt, err := rest.TransportFor(c.config)
	if err != nil {
		return nil, fmt.Errorf("transport to %s: %w", c.where(), err)
	}
	if len(headers) == 0 {
		return rt, nil
	}
	return headerTransport{next: rt, headers: headers}, nil
}

// transportOr is the target's transport, else def.
func (t httpTarget) transportOr(def http.RoundTripper) http.RoundTripper {
	if t.transport != nil {
		return t.transport
	}
	return def
}

type headerTransport struct {
	next    http.RoundTripper
	headers http.Header
}

func (h headerTransport) RoundTrip(req *http.Request) (*http.Response, error) {
	req = req.Clone(req.Context())
	for k, vs := range h.headers {
		req.Header[k] = vs
	}
	return h.next.RoundTrip(req)
}

// serviceTarget reaches Knative Service ns/name's HTTP API through the API server's service
// proxy: to the Service of its latest ready revision (the activator or the pods, as Knative
// routes it), with the Knative-Serving-Namespace/-Revision headers the activator routes by, as
// the ingress sets them.
func (c *cluster) serviceTarget(ctx context.Context, ns, name, path string, log io.Writer) (httpTarget, error) {
	ksvc, err := c.dynamic.Resource(ksvcGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return httpTarget{}, c.notFound(err, "Knative Service", ns, name, "")
	}
	rev, _, _ := unstructured.NestedString(ksvc.Object, "status", "latestReadyRevisionName")
	if rev == "" {
		return httpTarget{}, fmt.Errorf("Knative Service %s/%s has no ready revision (status.latestReadyRevisionName is empty)", ns, name)
	}
	svc, err := c.core.Services(ns).Get(ctx, rev, metav1.GetOptions{})
	if err != nil {
		return httpTarget{}, c.notFound(err, "Service", ns, rev, fmt.Sprintf("the Service of revision %s of Knative Service %s/%s", rev, ns, name))
	}
	port := int32(80)
	for _, p := range svc.Spec.Ports {
		if p.Name == "http" || len(svc.Spec.Ports) == 1 {
			port = p.Port
		}
	}
	rt, err := c.apiTransport(http.Header{"Knative-Serving-Namespace": {ns}, "Knative-Serving-Revision": {rev}})
	if err != nil {
		return httpTarget{}, err
	}
	t := httpTarget{url: c.serviceProxyURL(ns, rev, port, path), transport: rt}
	fmt.Fprintf(log, "http: Knative Service %s/%s, revision %s: service proxy of %s: %s\n", ns, name, rev, c.where(), t.url)
	return t, nil
}

// brokerTarget reaches Broker ns/name's ingress through the API server's service proxy to the
// in-cluster Service its status.address.url names.
func (c *cluster) brokerTarget(ctx context.Context, ns, name string, log io.Writer) (httpTarget, error) {
	b, err := c.dynamic.Resource(brokerGVR).Namespace(ns).Get(ctx, name, metav1.GetOptions{})
	if err != nil {
		return httpTarget{}, c.notFound(err, "Broker", ns, name, "")
	}
	addr, _, _ := unstructured.NestedString(b.Object, "status", "address", "url")
	if addr == "" {
		return httpTarget{}, fmt.Errorf("Broker %s/%s has no address yet (status.address.url is empty): is it ready?", ns, name)
	}
	u, err := url.Parse(addr)
	if err != nil {
		return httpTarget{}, fmt.Errorf("Broker %s/%s: status.address.url %q: %w", ns, name, addr, err)
	}
	svcName, svcNS, ok := serviceOfHost(u.Hostname())
	if !ok {
		return httpTarget{}, fmt.Errorf("Broker %s/%s: address %s is not an in-cluster Service (<name>.<namespace>.svc…), so the service proxy cannot reach it", ns, name, addr)
	}
	port := int32(80)
	if u.Scheme == "https" {
		port = 443
	}
	if p := u.Port(); p != "" {
		n, err := strconv.ParseInt(p, 10, 32)
		if err != nil {
			return httpTarget{}, fmt.Errorf("Broker %s/%s: address %s: port: %w", ns, name, addr, err)
		}
		port = int32(n)
	}
	if _, err := c.core.Services(svcNS).Get(ctx, svcName, metav1.GetOptions{}); err != nil {
		return httpTarget{}, c.notFound(err, "Service", svcNS, svcName, fmt.Sprintf("the ingress of Broker %s/%s", ns, name))
	}
	rt, err := c.apiTransport(nil)
	if err != nil {
		return httpTarget{}, err
	}
	audience, _, _ := unstructured.NestedString(b.Object, "status", "address", "audience")
	t := httpTarget{url: c.serviceProxyURL(svcNS, svcName, port, u.Path), transport: rt, audience: audience}
	fmt.Fprintf(log, "http: Broker %s/%s at %s: service proxy of %s: %s\n", ns, name, addr, c.where(), t.url)
	return t, nil
}

// withToken makes t's requests carry a token of ServiceAccount serviceAccount of the platform's
// namespace for t's audience, in the header the class's ingress reads behind the API server's
// proxy (which consumes Authorization).
func (c *cluster) withToken(t httpTarget, serviceAccount string, log io.Writer) httpTarget {
	sa := types.NamespacedName{Namespace: c.namespace, Name: serviceAccount}
	fmt.Fprintf(log, "http: the Broker requires OIDC authentication (audience %s): sending as ServiceAccount %s\n", t.audience, sa)
	t.transport = brokerclass.NewTokenTransport(c.core, sa, t.audience, brokerclass.ProxiedAuthorizationHeader, t.transport)
	return t
}

// serviceOfHost reads name.namespace[.svc[.cluster.local]].
func serviceOfHost(host string) (name, namespace string, ok bool) {
	parts := strings.Split(host, ".")
	if len(parts) < 2 || (len(parts) > 2 && parts[2] != "svc") {
		return "", "", false
	}
	return parts[0], parts[1], true
}

// verboseWriter is w when verbose, else a sink.
func verboseWriter(verbose bool, w io.Writer) io.Writer {
	if verbose {
		return w
	}
	return io.Discard
}

// webhookSecret reads key provider of the Secret webhook-secrets in namespace: the secret the
// cluster's webhook function verifies signatures with. A template value (CHANGE-ME) is refused.
func (c *cluster) webhookSecret(ctx context.Context, namespace, provider string, log io.Writer) (string, error) {
	s, err := c.core.Secrets(namespace).Get(ctx, webhookSecrets, metav1.GetOptions{})
	if err != nil {
		return "", c.notFound(err, "Secret", namespace, webhookSecrets, "or pass --webhook-secret")
	}
	v := strings.TrimSpace(string(s.Data[provider]))
	if v == "" {
		return "", fmt.Errorf("Secret %s/%s has no key %s on %s: pass --webhook-secret", namespace, webhookSecrets, provider, c.where())
	}
	if strings.Contains(v, "CHANGE-ME") {
		return "", fmt.Errorf("Secret %s/%s key %s is still the template's CHANGE-ME on %s: set a real secret", namespace, webhookSecrets, provider, c.where())
	}
	fmt.Fprintf(log, "webhook: signing with key %s of Secret %s/%s\n", provider, namespace, webhookSecrets)
	return v, nil
}
