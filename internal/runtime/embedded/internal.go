package embedded

import (
	"context"
	"crypto/rand"
	"crypto/subtle"
	"fmt"
	"net"
	"net/http"
	"net/url"
	"strings"
	"time"

	"knative.dev/networking/pkg/apis/networking"
	knativeserving "knative.dev/serving/pkg/apis/serving"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// How Services and Brokers are reached besides the public listener.
//
// The runtime's own clients (Trigger deliveries, replies, dead letters) use the addresses
// Knative gives inside a cluster, http://<name>.<namespace>.svc.cluster.local and
// http://broker-ingress.knative-eventing.svc.cluster.local/<namespace>/<broker>. No resolver
// knows these names: the runtime's clients call the Service's pool or the ingress handler for
// them in process (routeDeliveriesInProcess), so they cannot be reached from outside the
// process, stay the same across restarts (dead letters name the failed subscriber as on a
// cluster), and need no listener that shutdown could close under a delivery.
//
// Function processes (K_SINK, PingSource sinks) need a network address. They get a capability
// URL on one internal loopback listener, http://127.0.0.1:<port>/_knfaas/<token>/services/
// <namespace>/<name>/… and …/_knfaas/<token>/brokers/<namespace>/<broker>, where <token> is 130
// random bits drawn per run; without it the listener answers 403. A capability URL rather than
// a Unix socket in a 0700 directory: functions, func-go and the CloudEvents SDK speak plain
// HTTP to a URL from K_SINK, and a Unix socket would need a custom dialer in every function.
// The token keeps out other local users and web pages that can reach loopback (DNS rebinding,
// cross-site POSTs); processes of the same user can read a function's environment anyway.
const (
	// brokerIngressHost is the host of Knative's multi-tenant broker ingress.
	brokerIngressHost = "broker-ingress.knative-eventing.svc.cluster.local"
	// capabilityRoot starts every path on the internal listener.
	capabilityRoot = "/_knfaas/"
)

// inProcessServiceURL is the cluster-local address Knative gives a ksvc.
func inProcessServiceURL(namespace, name string) string {
	return "http://" + serviceHost(namespace, name)
}

func serviceHost(namespace, name string) string {
	return name + "." + namespace + ".svc.cluster.local"
}

// inProcessBrokerURL is the address of a Broker on Knative's broker ingress.
func inProcessBrokerURL(namespace, name string) string {
	return "http://" + brokerIngressHost + "/" + namespace + "/" + name
}

// isClusterLocal reports whether a ksvc carries networking.knative.dev/visibility: cluster-local.
func isClusterLocal(s *servingv1.Service) bool {
	return s.Labels[networking.VisibilityLabelKey] == knativeserving.VisibilityClusterLocal
}

// notPublic answers a request for a cluster-local ksvc on the public listener.
func notPublic(w http.ResponseWriter, key string) {
	http.Error(w, fmt.Sprintf("Knative Service %s is cluster-local (label %s: %s): it is not served on the public listener", key, networking.VisibilityLabelKey, knativeserving.VisibilityClusterLocal), http.StatusNotFound)
}

// newToken returns the per-run capability: 26 base32 characters, 130 random bits.
func newToken() string { return rand.Text() }

// capabilityBase is http://127.0.0.1:<port>/_knfaas/<token>.
func (r *Runtime) capabilityBase() string {
	return "http://" + r.internalAddr + capabilityRoot + r.token
}

// forFunctions turns an in-process address into the capability URL a function process can use;
// any other URL is returned unchanged.
func (r *Runtime) forFunctions(u *url.URL) *url.URL {
	if u.Scheme != "http" {
		return u
	}
	host := strings.TrimSuffix(u.Host, ":80")
	var prefix string
	switch {
	case host == brokerIngressHost:
		prefix = capabilityRoot + r.token + "/brokers"
	case r.serviceHosts[host] != "":
		prefix = capabilityRoot + r.token + "/services/" + r.serviceHosts[host]
	default:
		return u
	}
	out := *u
	out.Host = r.internalAddr
	out.Path = prefix + u.Path
	if u.RawPath != "" {
		out.RawPath = prefix + u.RawPath
	}
	return &out
}

// internalHandler serves the internal listener: the capability, then services/<ns>/<name>/…
// (the prefix is stripped before the ksvc sees the request) or brokers/<ns>/<broker>.
func (r *Runtime) internalHandler() http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		rest, ok := strings.CutPrefix(req.URL.Path, capabilityRoot)
		token, rest, _ := strings.Cut(rest, "/")
		if !ok || subtle.ConstantTimeCompare([]byte(token), []byte(r.token)) != 1 {
			http.Error(w, "knfaas internal listener: the path must start with this run's capability /_knfaas/<token>/ (functions get it in K_SINK)", http.StatusForbidden)
			return
		}
		kind, rest, _ := strings.Cut(rest, "/")
		ns, rest, _ := strings.Cut(rest, "/")
		name, _, _ := strings.Cut(rest, "/")
		switch kind {
		case "services":
			svc, ok := r.services[ns+"/"+name]
			if !ok {
				http.Error(w, fmt.Sprintf("no Knative Service %s/%s (internal paths are %sservices/<namespace>/<name>/…)", ns, name, capabilityRoot+"<token>/"), http.StatusNotFound)
				return
			}
			svc.ServeHTTP(w, stripPrefix(req, capabilityRoot+token+"/services/"+ns+"/"+name))
		case "brokers":
			r.ingress.ServeHTTP(w, stripPrefix(req, capabilityRoot+token+"/brokers"))
		case strings.TrimPrefix(otlpPath, "/"):
			if r.traces == nil {
				http.Error(w, "tracing is disabled in this run (OTEL_SDK_DISABLED or OTEL_TRACES_EXPORTER=none)", http.StatusNotFound)
				return
			}
			r.traces.ServeHTTP(w, stripPrefix(req, capabilityRoot+token+otlpPath))
		default:
			http.Error(w, fmt.Sprintf("internal path %q: want %s<token>/services/<namespace>/<name>/… or %s<token>/brokers/<namespace>/<broker>", kind, capabilityRoot, capabilityRoot), http.StatusNotFound)
		}
	})
}

// stripPrefix returns req with prefix removed from its path, as http.StripPrefix does.
func stripPrefix(req *http.Request, prefix string) *http.Request {
	r2 := new(http.Request)
	*r2 = *req
	r2.URL = new(url.URL)
	*r2.URL = *req.URL
	r2.URL.Path = strings.TrimPrefix(req.URL.Path, prefix)
	if r2.URL.Path == "" {
		r2.URL.Path = "/"
	}
	r2.URL.RawPath = ""
	if rp, ok := strings.CutPrefix(req.URL.RawPath, prefix); ok && rp != "" {
		r2.URL.RawPath = rp
	}
	r2.RequestURI = r2.URL.RequestURI()
	return r2
}

// pipeAddr names an in-process address.
type pipeAddr string

func (a pipeAddr) Network() string { return "pipe" }
func (a pipeAddr) String() string  { return string(a) }

// maxInProcessResponse bounds an answer a Service or the broker ingress gives the runtime's own
// clients in process (a reply event is bounded further by its Broker's event size).
const maxInProcessResponse = 64 << 20

// routeDeliveriesInProcess makes the runtime's own HTTP clients reach Services and the broker
// ingress at their cluster-local addresses without the network. Knative's dispatcher builds its
// clients from a clone of http.DefaultTransport, so that transport is the only way in: it is
// replaced by one that calls the Service's pool or the ingress handler directly
// (serving.InProcess: no HTTP encoding, no connection), the URLs staying the cluster-local ones.
// Should this Go's net/http not take that route, the runtime keeps the transport it had, whose
// dial function connects those addresses to in-memory pipes served by an http.Server (serve).
// Other addresses pass through to the network unchanged, and no proxy from the environment is
// used for the in-process ones.
func (r *Runtime) routeDeliveriesInProcess() {
	r.pipes = map[string]*serving.PipeListener{}
	byAddr := map[string]*serving.PipeListener{}
	for key := range r.services {
		ns, name, _ := strings.Cut(key, "/")
		addr := serviceHost(ns, name) + ":80"
		pl := serving.NewPipeListener(pipeAddr(addr))
		r.pipes[key] = pl
		byAddr[addr] = pl
	}
	r.brokerPipe = serving.NewPipeListener(pipeAddr(brokerIngressHost + ":80"))
	byAddr[brokerIngressHost+":80"] = r.brokerPipe
	t, ok := http.DefaultTransport.(*http.Transport)
	if !ok {
		return
	}
	network := t.DialContext
	if network == nil {
		network = (&net.Dialer{Timeout: 30 * time.Second, KeepAlive: 30 * time.Second}).DialContext
	}
	t.DialContext = func(ctx context.Context, netw, addr string) (net.Conn, error) {
		if pl, ok := byAddr[addr]; ok {
			return pl.Dial(ctx)
		}
		return network(ctx, netw, addr)
	}
	proxy := t.Proxy
	t.Proxy = func(req *http.Request) (*url.URL, error) {
		addr := req.URL.Host
		if req.URL.Port() == "" {
			addr += ":80"
		}
		if _, ok := byAddr[addr]; ok || proxy == nil {
			return nil, nil
		}
		return proxy(req)
	}
	direct := serving.NewInProcess(maxInProcessResponse, r.log)
	for key, pool := range r.services {
		ns, name, _ := strings.Cut(key, "/")
		direct.Handle(serviceHost(ns, name)+":80", pool)
	}
	direct.Handle(brokerIngressHost+":80", r.ingress)
	routed, err := direct.Route(t)
	if err != nil {
		r.log.Warn("deliveries reach Services and Brokers through in-memory HTTP pipes", "reason", err)
		return
	}
	http.DefaultTransport = routed
}
