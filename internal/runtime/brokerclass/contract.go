// Package brokerclass is the RedisStreamBroker Knative Broker class: the contract its controller
// writes for its data plane, and the data plane's ingress and dispatcher around the broker package.
package brokerclass

import (
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"slices"
	"strings"

	"k8s.io/apimachinery/pkg/types"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/eventing/pkg/auth"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"

	"github.com/knfaas/knfaas/internal/runtime/broker"
)

// ComponentLabel set to ComponentValue marks the class's own objects in the install manifests
// (Deployments, Services, RBAC): `knfaas up` reports them as stood in for by its own broker.
const (
	ComponentLabel = "app.kubernetes.io/component"
	ComponentValue = "redis-broker"
)

// ClassName is the value of the eventing.knative.dev/broker.class annotation this class serves.
const ClassName = "RedisStreamBroker"

// The contract is the one ConfigMap the controller writes in its own namespace and the data
// plane reads, mounted as a file: which Brokers the ingress accepts events for, and the
// Triggers the dispatcher delivers to, with every reference already resolved to a URL. The data
// plane therefore needs no access to the Kubernetes API; a change reaches its pods when the
// kubelet refreshes the mounted file (about a minute at most), and the data plane reads the file
// again every few seconds.
const (
	// ContractConfigMap names the ConfigMap.
	ContractConfigMap = "redis-broker-contract"
	// ContractKey is the ConfigMap key holding the contract as JSON.
	ContractKey = "contract.json"
)

// Contract is what the data plane serves.
type Contract struct {
	// Generation grows with every change the controller writes.
	Generation int64 `json:"generation"`
	// Features are the Knative Eventing feature flags the data plane honours, as the controller
	// read them from Knative's config-features ConfigMap (authentication-oidc,
	// default-authorization-mode, oidc-discovery-base-url); none means Knative's defaults.
	Features map[string]string `json:"features,omitempty"`
	Brokers  []Broker          `json:"brokers"`
	Triggers []Trigger         `json:"triggers"`
}

// FeatureKeys are the keys of Knative's config-features that reach the contract.
var FeatureKeys = []string{feature.OIDCAuthentication, feature.AuthorizationDefaultMode, feature.OIDCDiscoveryBaseURL}

// Flags are the contract's Features as Knative's feature flags.
func (c *Contract) Flags() (feature.Flags, error) {
	flags, err := feature.NewFlagsConfigFromMap(c.Features)
	if err != nil {
		return nil, fmt.Errorf("the broker contract's features: %w", err)
	}
	return flags, nil
}

// Broker is a Broker the ingress accepts events for at /<namespace>/<name>.
type Broker struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	// MaxEventBytes bounds its events (broker.MaxEventBytesAnnotation); 0 is the default bound.
	MaxEventBytes int64 `json:"maxEventBytes,omitempty"`
	// Audience is the OIDC audience a sender's token must carry (the Broker's
	// status.address.audience); it is set when OIDC authentication is enabled.
	Audience string `json:"audience,omitempty"`
	// Policies are the subjects and filters of the Ready EventPolicies that apply to the Broker
	// (its status.policies, resolved by the controller); with none, Knative's default
	// authorization mode decides.
	Policies []auth.SubjectsWithFilters `json:"policies,omitempty"`
}

// Key is namespace/name.
func (b Broker) Key() string { return b.Namespace + "/" + b.Name }

// Trigger is a Trigger the dispatcher delivers to, resolved.
type Trigger struct {
	Namespace string `json:"namespace"`
	Name      string `json:"name"`
	Broker    string `json:"broker"`
	// Filter and Filters are the Trigger's spec.filter and spec.filters, applied with Knative's
	// own filters (broker.TriggerFilter).
	Filter  *eventingv1.TriggerFilter           `json:"filter,omitempty"`
	Filters []eventingv1.SubscriptionsAPIFilter `json:"filters,omitempty"`
	// Subscriber is the resolved subscriber URI.
	Subscriber string `json:"subscriber"`
	// Delivery is the effective delivery (the Trigger's, or its Broker's when it has none); its
	// deadLetterSink is not read: DeadLetterSink holds it resolved.
	Delivery *eventingduckv1.DeliverySpec `json:"delivery,omitempty"`
	// DeadLetterSink is the resolved dead-letter sink URI, empty for none.
	DeadLetterSink string `json:"deadLetterSink,omitempty"`
	// SubscriberAudience and DeadLetterSinkAudience are the OIDC audiences of the subscriber and
	// of the dead-letter sink (the Trigger's status.subscriberAudience and
	// status.deadLetterSinkAudience), empty for none.
	SubscriberAudience     string `json:"subscriberAudience,omitempty"`
	DeadLetterSinkAudience string `json:"deadLetterSinkAudience,omitempty"`
	// ServiceAccount is the Trigger's OIDC identity in its namespace (its
	// status.auth.serviceAccountName), set when OIDC authentication is enabled: the dispatcher
	// sends a token of it to a subscriber or dead-letter sink that has an audience.
	ServiceAccount string `json:"serviceAccount,omitempty"`
	// ReplyURL is the Broker's ingress address, where replies go.
	ReplyURL string `json:"replyURL"`
}

// Key is namespace/name.
func (t Trigger) Key() string { return t.Namespace + "/" + t.Name }

// Group is the trigger's consumer group on its Broker's stream, as broker.Trigger.Group names it.
func (t Trigger) Group() string {
	return (&broker.Trigger{Namespace: t.Namespace, Name: t.Name}).Group()
}

// Stream is the Redis stream of the trigger's Broker.
func (t Trigger) Stream() string { return broker.StreamKey(t.Namespace, t.Broker) }

// Consumer turns t into what a broker.Consumer delivers.
func (t Trigger) Consumer() (broker.Trigger, error) {
	sub, err := parseURL(t.Subscriber)
	if err != nil {
		return broker.Trigger{}, fmt.Errorf("trigger %s: subscriber: %w", t.Key(), err)
	}
	c := broker.Trigger{
		Namespace: t.Namespace, Name: t.Name, Broker: t.Broker,
		Filter:     broker.TriggerFilter(t.Filter, t.Filters),
		Subscriber: duckv1.Addressable{URL: sub, Audience: optional(t.SubscriberAudience)},
		Retry:      kncloudevents.NoRetries(),
		ReplyURL:   t.ReplyURL,
	}
	if t.Delivery != nil {
		rc, err := kncloudevents.RetryConfigFromDeliverySpec(*t.Delivery)
		if err != nil {
			return broker.Trigger{}, fmt.Errorf("trigger %s: delivery: %w", t.Key(), err)
		}
		c.Retry = rc
	}
	if t.DeadLetterSink != "" {
		dls, err := parseURL(t.DeadLetterSink)
		if err != nil {
			return broker.Trigger{}, fmt.Errorf("trigger %s: dead-letter sink: %w", t.Key(), err)
		}
		c.DeadLetter = &duckv1.Addressable{URL: dls, Audience: optional(t.DeadLetterSinkAudience)}
	}
	if t.ServiceAccount != "" {
		c.OIDCServiceAccount = &types.NamespacedName{Namespace: t.Namespace, Name: t.ServiceAccount}
	}
	return c, nil
}

// optional is nil for "", else &s.
func optional(s string) *string {
	if s == "" {
		return nil
	}
	return &s
}

func parseURL(raw string) (*apis.URL, error) {
	u, err := apis.ParseURL(raw)
	if err != nil {
		return nil, fmt.Errorf("%q: %w", raw, err)
	}
	if u == nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("%q is no absolute http(s) URL", raw)
	}
	return u, nil
}

// ParseContract reads and checks a contract: every Trigger names a Broker of the contract, has
// a subscriber, and no two objects share a name.
func ParseContract(b []byte) (*Contract, error) {
	var c Contract
	if len(strings.TrimSpace(string(b))) == 0 {
		return &c, nil // an empty file: nothing to serve yet
	}
	if err := json.Unmarshal(b, &c); err != nil {
		return nil, fmt.Errorf("reading the broker contract: %w", err)
	}
	if err := c.check(); err != nil {
		return nil, err
	}
	return &c, nil
}

func (c *Contract) check() error {
	var errs []error
	flags, err := c.Flags()
	if err != nil {
		errs = append(errs, err)
	}
	brokers := map[string]bool{}
	for _, b := range c.Brokers {
		if b.Namespace == "" || b.Name == "" {
			errs = append(errs, fmt.Errorf("broker %q: namespace and name are required", b.Key()))
		}
		if flags.IsOIDCAuthentication() && b.Audience == "" {
			errs = append(errs, fmt.Errorf("broker %s: OIDC authentication is enabled, but the broker has no audience", b.Key()))
		}
		if brokers[b.Key()] {
			errs = append(errs, fmt.Errorf("broker %s listed twice", b.Key()))
		}
		brokers[b.Key()] = true
	}
	triggers := map[string]bool{}
	for _, t := range c.Triggers {
		if triggers[t.Key()] {
			errs = append(errs, fmt.Errorf("trigger %s listed twice", t.Key()))
		}
		triggers[t.Key()] = true
		if !brokers[t.Namespace+"/"+t.Broker] {
			errs = append(errs, fmt.Errorf("trigger %s: broker %s/%s is not in the contract", t.Key(), t.Namespace, t.Broker))
		}
		if _, err := t.Consumer(); err != nil {
			errs = append(errs, err)
		}
		if _, err := url.Parse(t.ReplyURL); err != nil || t.ReplyURL == "" {
			errs = append(errs, fmt.Errorf("trigger %s: replyURL %q is no URL", t.Key(), t.ReplyURL))
		}
	}
	if err := errors.Join(errs...); err != nil {
		return fmt.Errorf("the broker contract is invalid: %w", err)
	}
	return nil
}

// Encode writes c as JSON, Brokers and Triggers sorted by key, so that the same objects always
// give the same bytes and an unchanged contract is never rewritten.
func (c *Contract) Encode() ([]byte, error) {
	out := Contract{Generation: c.Generation, Features: c.Features, Brokers: slices.Clone(c.Brokers), Triggers: slices.Clone(c.Triggers)}
	slices.SortFunc(out.Brokers, func(a, b Broker) int { return strings.Compare(a.Key(), b.Key()) })
	slices.SortFunc(out.Triggers, func(a, b Trigger) int { return strings.Compare(a.Key(), b.Key()) })
	if out.Brokers == nil {
		out.Brokers = []Broker{}
	}
	if out.Triggers == nil {
		out.Triggers = []Trigger{}
	}
	b, err := json.MarshalIndent(out, "", " ")
	if err != nil {
		return nil, fmt.Errorf("encoding the broker contract: %w", err)
	}
	return b, nil
}
