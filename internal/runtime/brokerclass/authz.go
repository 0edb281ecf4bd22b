package brokerclass

import (
	"context"
	"log/slog"
	"maps"
	"net/http"
	"os"
	"strings"
	"sync"

	"github.com/redis/go-redis/v9"
	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/eventing/pkg/auth"
	"knative.dev/pkg/configmap"
	"knative.dev/pkg/injection"

	"github.com/knfaas/knfaas/internal/function/eventsize"
)

// Authorizer enforces Knative's Broker authorization at the ingress, with Knative's own verifier
// (knative.dev/eventing/pkg/auth): when the contract's features enable OIDC authentication, a
// request must carry a token for its Broker's audience, issued by the cluster's OIDC issuer
// (401 otherwise), from a subject that one of the EventPolicies applying to the Broker allows,
// or, with none applying, that Knative's default authorization mode allows (403 otherwise).
//
// The controller resolves the applying EventPolicies into the contract, so the ingress reads no
// Kubernetes object; it only fetches the issuer's OIDC discovery document and keys, through the
// Kubernetes API's service-account issuer discovery when the discovery URL is Knative's default.
type Authorizer struct {
	next     http.Handler
	log      *slog.Logger
	verifier *auth.Verifier
	watcher  *configmap.ManualWatcher
	replies  *replyKeys

	mu       sync.RWMutex
	flags    feature.Flags
	features map[string]string
	brokers  map[string]Broker
}

// featuresNamespace names the ConfigMap the verifier's feature store is handed; the data plane
// has no ConfigMap of that name: it comes from the contract.
const featuresNamespace = "contract"

// NewAuthorizer wraps next. kube reaches the Kubernetes API for the OIDC discovery at Knative's
// default discovery URL (the pod's in-cluster configuration); nil means none. rdb holds the
// key of the dispatchers' reply credentials.
func NewAuthorizer(ctx context.Context, kube *rest.Config, rdb redis.UniversalClient, next http.Handler, log *slog.Logger) *Authorizer {
	if kube == nil {
		kube = &rest.Config{}
	}
	a := &Authorizer{next: next, log: log, watcher: &configmap.ManualWatcher{Namespace: featuresNamespace}, replies: &replyKeys{rdb: rdb}}
	a.verifier = auth.NewVerifier(injection.WithConfig(ctx, kube), nil, nil, a.watcher)
	return a
}

// KubeConfig is the configuration for the Kubernetes API: the kubeconfig file KUBECONFIG names
// when it is set (a data plane run outside a pod), else the pod's in-cluster configuration, else
// nil.
func KubeConfig(log *slog.Logger) *rest.Config {
	if path := os.Getenv("KUBECONFIG"); path != "" {
		cfg, err := clientcmd.BuildConfigFromFlags("", path)
		if err != nil {
			log.Error("KUBECONFIG cannot be read: no access to the Kubernetes API", "path", path, "error", err)
			return nil
		}
		return cfg
	}
	cfg, err := rest.InClusterConfig()
	if err != nil {
		return nil
	}
	return cfg
}

// Apply takes the features and Brokers of c. A change of features makes the verifier load the
// OIDC issuer's discovery document again.
func (a *Authorizer) Apply(c *Contract) {
	flags, err := c.Flags()
	if err != nil { // ParseContract refuses this first
		a.log.Error("the contract's features do not parse; authorization keeps the previous ones", "error", err)
		return
	}
	brokers := make(map[string]Broker, len(c.Brokers))
	for _, b := range c.Brokers {
		brokers[b.Key()] = b
	}
	a.mu.Lock()
	changed := !maps.Equal(a.features, c.Features)
	a.flags, a.features, a.brokers = flags, maps.Clone(c.Features), brokers
	a.mu.Unlock()
	if changed || (flags.IsOIDCAuthentication() && !a.verifier.IsReady()) {
		a.loadFeatures(c.Features)
	}
}

// Ready reports whether requests can be authorized: OIDC authentication is off, or the OIDC
// provider is loaded.
func (a *Authorizer) Ready() bool {
	a.mu.RLock()
	oidc := a.flags.IsOIDCAuthentication()
	a.mu.RUnlock()
	return !oidc || a.verifier.IsReady()
}

// Retry loads the OIDC provider again while authentication is on and it is not loaded (the
// issuer was unreachable when the features changed).
func (a *Authorizer) Retry() {
	a.mu.RLock()
	oidc, features := a.flags.IsOIDCAuthentication(), a.features
	a.mu.RUnlock()
	if oidc && !a.verifier.IsReady() {
		a.loadFeatures(features)
	}
}

func (a *Authorizer) loadFeatures(features map[string]string) {
	data := map[string]string{}
	for k, v := range features {
		data[k] = v
	}
	a.watcher.OnChange(&corev1.ConfigMap{
		ObjectMeta: metav1.ObjectMeta{Name: feature.FlagsConfigName, Namespace: featuresNamespace},
		Data:       data,
	})
}

// ServeHTTP verifies the request for the Broker of its path, then hands it on. Requests for
// unknown Brokers and every request while OIDC authentication is off pass unchanged; a reply
// from the class's dispatcher passes with its reply credential.
func (a *Authorizer) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	a.mu.RLock()
	flags := a.flags
	b, known := a.brokers[strings.Trim(r.URL.Path, "/")]
	a.mu.RUnlock()
	if !known || !flags.IsOIDCAuthentication() {
		a.next.ServeHTTP(w, r)
		return
	}
	// An applying EventPolicy's filters read the event, so the verifier reads the body: it is
	// bounded as the ingress bounds it (twice the maximum, for a structured-mode event).
	limit := b.MaxEventBytes
	if limit <= 0 {
		limit = eventsize.DefaultMaxEventBytes
	}
	r.Body = http.MaxBytesReader(w, r.Body, 2*limit)
	if user, password, ok := r.BasicAuth(); ok && user == replyUser {
		key, err := a.replies.get(r.Context())
		if err != nil {
			a.log.Error("a reply cannot be verified", "broker", b.Key(), "error", err)
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		if !isReply(key, user, password, b.Namespace, b.Name) {
			a.log.Info("request refused: a wrong reply credential", "broker", b.Key())
			w.WriteHeader(http.StatusUnauthorized)
			return
		}
		r.Header.Del("Authorization")
		a.next.ServeHTTP(w, r)
		return
	}
	if r.Header.Get("Authorization") == "" {
		// Proxied by the Kubernetes API server (`knfaas dlq redrive` on a cluster), which
		// consumes the Authorization header: the sender's token comes in this one instead and
		// is verified exactly as if it came in Authorization.
		if tok := r.Header.Get(ProxiedAuthorizationHeader); tok != "" {
			r.Header.Set("Authorization", tok)
		}
	}
	r.Header.Del(ProxiedAuthorizationHeader)
	audience := b.Audience
	if err := a.verifier.VerifyRequestFromSubjectsWithFilters(r.Context(), flags, &audience, b.Policies, b.Namespace, r, w); err != nil {
		// The verifier has answered 401, 403 or 500; the reason is logged, not told the sender.
		a.log.Info("request refused by the Broker's authorization", "broker", b.Key(), "error", err)
		return
	}
	a.next.ServeHTTP(w, r)
}
