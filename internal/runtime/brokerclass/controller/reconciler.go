// Package controller reconciles the Brokers of class RedisStreamBroker and their Triggers: it
// resolves their addresses, owns their Redis consumer groups and writes the data plane's contract.
package controller

import (
	"context"
	"fmt"
	"strings"
	"sync"
	"time"

	"github.com/redis/go-redis/v9"
	discoveryv1 "k8s.io/api/discovery/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/kubernetes"
	corev1listers "k8s.io/client-go/listers/core/v1"
	discoverylisters "k8s.io/client-go/listers/discovery/v1"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/auth"
	eventinglisters "knative.dev/eventing/pkg/client/listers/eventing/v1"
	eventingv1alpha1listers "knative.dev/eventing/pkg/client/listers/eventing/v1alpha1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	pkgcontroller "knative.dev/pkg/controller"
	"knative.dev/pkg/logging"
	"knative.dev/pkg/ptr"
	pkgreconciler "knative.dev/pkg/reconciler"
	"knative.dev/pkg/resolver"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// KeepDataAnnotation on a Broker or Trigger, set to "true", keeps its Redis data when it is
// deleted: the Broker's stream (and every group on it), or the Trigger's consumer group.
const KeepDataAnnotation = "knfaas.dev/keep-data"

// Reasons of the conditions this class sets, each naming what an operator can check.
const (
	ReasonRedisUnreachable       = "RedisUnreachable"
	ReasonIngressUnavailable     = "IngressUnavailable"
	ReasonDispatcherUnavailable  = "DispatcherUnavailable"
	ReasonDeadLetterSinkNotFound = "DeadLetterSinkNotFound"
	ReasonSubscriberNotFound     = "SubscriberNotFound"
	ReasonBrokerNotReady         = "BrokerNotReady"
	ReasonBrokerNotFound         = "BrokerNotFound"
	ReasonConsumerGroupFailed    = "ConsumerGroupFailed"
	ReasonContractNotWritten     = "ContractNotWritten"
	ReasonFeaturesInvalid        = "FeaturesInvalid"
)

var brokerGVK = eventingv1.SchemeGroupVersion.WithKind("Broker")

// Services of the data plane, in the controller's namespace.
const (
	IngressService    = "redis-broker-ingress"
	DispatcherService = "redis-broker-dispatcher"
)

// recheckNotReady is how soon a Broker or Trigger that is not Ready is looked at again: the
// conditions it waits for (Redis, the data plane, a sink) do not all send events.
const recheckNotReady = 10 * time.Second

// recheckReady is how often a Ready Trigger's consumer group is made sure of: a Redis that lost
// its data gets it back.
const recheckReady = 5 * time.Minute

// shared is what both reconcilers use.
type shared struct {
	namespace string
	rdb       redis.UniversalClient
	contract  *contractWriter
	endpoints discoverylisters.EndpointSliceLister
	brokers   eventinglisters.BrokerLister
	// eventPolicies and features decide the Brokers' authorization.
	eventPolicies eventingv1alpha1listers.EventPolicyLister
	features      *featureWatcher

	// streamsMu orders creating consumer groups against deleting streams: a Trigger reconciled
	// while its Broker is being deleted must not bring the stream back (XGROUP CREATE MKSTREAM).
	streamsMu sync.Mutex
	// deleted holds the Brokers (namespace/name) whose stream was deleted and that have not
	// been reconciled since.
	deleted map[string]bool
}

// ensureGroup creates a Trigger's consumer group unless its Broker was deleted; it reports
// whether the Broker still exists.
func (s *shared) ensureGroup(ctx context.Context, t brokerclass.Trigger) (bool, error) {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	if s.deleted[t.Namespace+"/"+t.Broker] {
		return false, nil
	}
	return true, broker.EnsureGroup(ctx, s.rdb, t.Stream(), t.Group())
}

// brokerLives forgets that a Broker was deleted: one of that name exists again.
func (s *shared) brokerLives(key string) {
	s.streamsMu.Lock()
	delete(s.deleted, key)
	s.streamsMu.Unlock()
}

// deleteStream deletes keys, the data of the Broker key, and remembers that it is gone.
func (s *shared) deleteStream(ctx context.Context, key string, keys []string) error {
	s.streamsMu.Lock()
	defer s.streamsMu.Unlock()
	s.deleted[key] = true
	return s.rdb.Del(ctx, keys...).Err()
}

// ingressBaseURL is the ingress Service's cluster address.
func (s *shared) ingressBaseURL() string {
	return "http://" + IngressService + "." + s.namespace + ".svc.cluster.local"
}

func (s *shared) brokerURL(b *eventingv1.Broker) *apis.URL {
	u, _ := apis.ParseURL(s.ingressBaseURL() + broker.Path(b.Namespace, b.Name))
	return u
}

func (s *shared) slices(service string) []*discoveryv1.EndpointSlice {
	sel := labels.SelectorFromSet(labels.Set{discoveryv1.LabelServiceName: service})
	out, err := s.endpoints.EndpointSlices(s.namespace).List(sel)
	if err != nil {
		return nil
	}
	return out
}

// redisAnswers pings Redis within a short bound.
func (s *shared) redisAnswers(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
	defer cancel()
	return redisconn.Ping(ctx, s.rdb)
}

// brokerReconciler reconciles Brokers of class RedisStreamBroker.
type brokerReconciler struct {
	*shared
	resolver *resolver.URIResolver
}

// ReconcileKind sets the Broker's address, resolves its dead-letter sink, checks Redis and the
// data plane, and adds the Broker to the contract.
func (r *brokerReconciler) ReconcileKind(ctx context.Context, b *eventingv1.Broker) pkgreconciler.Event {
	b.Status.InitializeConditions()
	r.brokerLives(b.Namespace + "/" + b.Name)
	maxBytes, err := broker.MaxEventBytesOf(b.Annotations)
	if err != nil {
		return pkgcontroller.NewPermanentError(err)
	}
	// Knative's feature flags decide authorization, as they do for Knative's own brokers: with
	// OIDC authentication the address carries the audience senders' tokens must be for.
	if !r.features.HasSynced() {
		return pkgcontroller.NewRequeueAfter(time.Second)
	}
	flags, features, err := r.features.flags()
	if err != nil {
		b.Status.MarkEventPoliciesFailed(ReasonFeaturesInvalid, "ConfigMap %s/config-features does not parse: %v", r.features.namespace, err)
		return err
	}
	address := &duckv1.Addressable{URL: r.brokerURL(b)}
	contractBroker := brokerclass.Broker{Namespace: b.Namespace, Name: b.Name, MaxEventBytes: maxBytes}
	if flags.IsOIDCAuthentication() {
		contractBroker.Audience = auth.GetAudience(brokerGVK, b.ObjectMeta)
		address.Audience = &contractBroker.Audience
	}
	b.Status.SetAddress(address)
	if err := auth.UpdateStatusWithEventPolicies(flags, &b.Status.AppliedEventPoliciesStatus, &b.Status, r.eventPolicies, brokerGVK, b.ObjectMeta); err != nil {
		return err
	}
	if flags.IsOIDCAuthentication() {
		// The data plane reads no EventPolicy: it gets their subjects and filters.
		contractBroker.Policies, err = auth.SubjectWithFiltersFromPolicyRef(r.eventPolicies, b.Namespace, b.Status.Policies)
		if err != nil {
			b.Status.MarkEventPoliciesFailed("EventPoliciesGetFailed", "reading the applying EventPolicies: %v", err)
			return err
		}
	}
	r.contract.setFeatures(features)

	if b.Spec.Delivery != nil && b.Spec.Delivery.DeadLetterSink != nil {
		u, err := r.resolver.URIFromDestinationV1(ctx, *b.Spec.Delivery.DeadLetterSink, b)
		if err != nil {
			b.Status.MarkDeadLetterSinkResolvedFailed(ReasonDeadLetterSinkNotFound, "spec.delivery.deadLetterSink: %v", err)
		} else {
			b.Status.MarkDeadLetterSinkResolvedSucceeded(eventingduckv1.DeliveryStatus{DeadLetterSinkURI: u})
		}
	} else {
		b.Status.MarkDeadLetterSinkNotConfigured()
	}

	// The Triggers' "channel" of this class is the Broker's Redis stream.
	if err := r.redisAnswers(ctx); err != nil {
		b.Status.MarkTriggerChannelFailed(ReasonRedisUnreachable, "Redis does not answer (check the redis Secret's REDIS_URL and the Redis Service): %v", err)
	} else {
		b.Status.GetConditionSet().Manage(&b.Status).MarkTrue(eventingv1.BrokerConditionTriggerChannel)
	}
	b.Status.PropagateIngressAvailability(r.slices(IngressService))
	if c := b.Status.GetCondition(eventingv1.BrokerConditionIngress); c != nil && c.IsFalse() {
		b.Status.MarkIngressFailed(ReasonIngressUnavailable, "no ready endpoint of Service %s/%s: check Deployment %s", r.namespace, IngressService, IngressService)
	}
	b.Status.PropagateFilterAvailability(r.slices(DispatcherService))
	if c := b.Status.GetCondition(eventingv1.BrokerConditionFilter); c != nil && c.IsFalse() {
		b.Status.MarkFilterFailed(ReasonDispatcherUnavailable, "no ready endpoint of Service %s/%s: check Deployment %s", r.namespace, DispatcherService, DispatcherService)
	}

	r.contract.setBroker(contractBroker)
	if err := r.contract.write(ctx); err != nil {
		b.Status.MarkIngressFailed(ReasonContractNotWritten, "writing the data plane contract: %v", err)
		return err
	}
	if !b.IsReady() && !b.Status.GetTopLevelCondition().IsTrue() {
		return pkgcontroller.NewRequeueAfter(recheckNotReady)
	}
	return nil
}

// FinalizeKind removes the Broker from the contract and, unless KeepDataAnnotation says
// otherwise, deletes its stream with every consumer group on it.
func (r *brokerReconciler) FinalizeKind(ctx context.Context, b *eventingv1.Broker) pkgreconciler.Event {
	r.contract.removeBroker(b.Namespace + "/" + b.Name)
	if err := r.contract.write(ctx); err != nil {
		return err
	}
	if b.Annotations[KeepDataAnnotation] == "true" {
		logging.FromContext(ctx).Infow("Broker deleted; its stream is kept", "annotation", KeepDataAnnotation)
		return nil
	}
	stream := broker.StreamKey(b.Namespace, b.Name)
	groups, err := r.rdb.XInfoGroups(ctx, stream).Result()
	if err != nil && !strings.Contains(err.Error(), "no such key") {
		return fmt.Errorf("listing the consumer groups of %s: %w", stream, err)
	}
	keys := []string{stream, broker.TrimLeaseKey(stream)}
	for _, g := range groups {
		keys = append(keys, broker.RoundsKey(stream, g.Name))
	}
	if err := r.deleteStream(ctx, b.Namespace+"/"+b.Name, keys); err != nil {
		return fmt.Errorf("deleting the stream of Broker %s/%s: %w", b.Namespace, b.Name, err)
	}
	return nil
}

// triggerReconciler reconciles the Triggers of Brokers of class RedisStreamBroker.
type triggerReconciler struct {
	*shared
	resolver *resolver.URIResolver
	// kube and serviceAccounts manage the Triggers' OIDC ServiceAccounts.
	kube            kubernetes.Interface
	serviceAccounts corev1listers.ServiceAccountLister
}

var triggerGVK = eventingv1.SchemeGroupVersion.WithKind("Trigger")

// ReconcileKind resolves the Trigger's subscriber and dead-letter sink, creates its consumer
// group, adds it to the contract and only then marks it Ready: an event accepted after Ready is
// in the group, whichever dispatcher replica delivers it.
func (r *triggerReconciler) ReconcileKind(ctx context.Context, t *eventingv1.Trigger) pkgreconciler.Event {
	t.Status.InitializeConditions()
	t.Status.MarkDependencySucceeded() // this class has no dependency annotation
	if !r.features.HasSynced() {
		return pkgcontroller.NewRequeueAfter(time.Second)
	}
	flags, _, err := r.features.flags()
	if err != nil {
		t.Status.MarkOIDCIdentityCreatedFailed(ReasonFeaturesInvalid, "%v", err)
		return pkgcontroller.NewRequeueAfter(recheckNotReady)
	}
	// As Knative's Trigger reconciler: with OIDC authentication the Trigger gets its own
	// ServiceAccount (status.auth), whose tokens the dispatcher sends to the subscriber.
	if err := auth.SetupOIDCServiceAccount(ctx, flags, r.serviceAccounts, r.kube, triggerGVK, t.ObjectMeta, &t.Status, func(as *duckv1.AuthStatus) {
		t.Status.Auth = as
	}); err != nil {
		return err
	}
	b, err := r.brokers.Brokers(t.Namespace).Get(t.Spec.Broker)
	if apierrors.IsNotFound(err) || (err == nil && b.DeletionTimestamp != nil) {
		t.Status.MarkBrokerFailed(ReasonBrokerNotFound, "Broker %s/%s does not exist", t.Namespace, t.Spec.Broker)
		return nil
	}
	if err != nil {
		return err
	}
	if bc := b.Status.GetTopLevelCondition(); bc == nil || !bc.IsTrue() {
		t.Status.MarkBrokerFailed(ReasonBrokerNotReady, "Broker %s/%s is not Ready: %s", b.Namespace, b.Name, conditionText(bc))
	} else {
		t.Status.PropagateBrokerCondition(bc)
	}

	subAddr, err := r.resolver.AddressableFromDestinationV1(ctx, t.Spec.Subscriber, t)
	if err != nil {
		t.Status.SubscriberURI, t.Status.SubscriberAudience = nil, nil
		t.Status.MarkSubscriberResolvedFailed(ReasonSubscriberNotFound, "spec.subscriber: %v", err)
		t.Status.MarkNotSubscribed(ReasonSubscriberNotFound, "the subscriber is not resolved")
		return pkgcontroller.NewRequeueAfter(recheckNotReady)
	}
	sub := subAddr.URL
	t.Status.SubscriberURI, t.Status.SubscriberAudience = sub, subAddr.Audience
	t.Status.MarkSubscriberResolvedSucceeded()

	delivery := t.Spec.Delivery
	if delivery == nil {
		delivery = b.Spec.Delivery
	}
	contractTrigger := brokerclass.Trigger{
		Namespace: t.Namespace, Name: t.Name, Broker: t.Spec.Broker,
		Filter: t.Spec.Filter, Filters: t.Spec.Filters,
		Subscriber: sub.String(), ReplyURL: r.brokerURL(b).String(),
		SubscriberAudience: ptr.StringValue(subAddr.Audience),
	}
	if t.Status.Auth != nil && t.Status.Auth.ServiceAccountName != nil {
		contractTrigger.ServiceAccount = *t.Status.Auth.ServiceAccountName
	}
	if delivery != nil {
		d := delivery.DeepCopy()
		d.DeadLetterSink = nil
		contractTrigger.Delivery = d
	}
	t.Status.DeliveryStatus = eventingduckv1.DeliveryStatus{}
	if delivery != nil && delivery.DeadLetterSink != nil {
		dls, err := r.resolver.AddressableFromDestinationV1(ctx, *delivery.DeadLetterSink, t)
		if err != nil {
			t.Status.MarkDeadLetterSinkResolvedFailed(ReasonDeadLetterSinkNotFound, "delivery.deadLetterSink: %v", err)
			t.Status.MarkNotSubscribed(ReasonDeadLetterSinkNotFound, "the dead-letter sink is not resolved")
			return pkgcontroller.NewRequeueAfter(recheckNotReady)
		}
		t.Status.DeliveryStatus.DeadLetterSinkURI = dls.URL
		t.Status.DeliveryStatus.DeadLetterSinkAudience = dls.Audience
		t.Status.MarkDeadLetterSinkResolvedSucceeded()
		contractTrigger.DeadLetterSink = dls.URL.String()
		contractTrigger.DeadLetterSinkAudience = ptr.StringValue(dls.Audience)
	} else {
		t.Status.MarkDeadLetterSinkNotConfigured()
	}
	if _, err := contractTrigger.Consumer(); err != nil {
		return pkgcontroller.NewPermanentError(err)
	}

	exists, err := r.ensureGroup(ctx, contractTrigger)
	if err != nil {
		t.Status.MarkNotSubscribed(ReasonRedisUnreachable, "creating the consumer group: %v", err)
		return pkgcontroller.NewRequeueAfter(recheckNotReady)
	}
	if !exists {
		t.Status.MarkBrokerFailed(ReasonBrokerNotFound, "Broker %s/%s was deleted", t.Namespace, t.Spec.Broker)
		return nil
	}
	r.contract.setTrigger(contractTrigger)
	if err := r.contract.write(ctx); err != nil {
		t.Status.MarkNotSubscribed(ReasonContractNotWritten, "writing the data plane contract: %v", err)
		return err
	}
	t.GetConditionSet().Manage(&t.Status).MarkTrue(eventingv1.TriggerConditionSubscribed)
	if !t.Status.IsReady() {
		return pkgcontroller.NewRequeueAfter(recheckNotReady)
	}
	return pkgcontroller.NewRequeueAfter(recheckReady)
}

// FinalizeKind removes the Trigger from the contract and, unless KeepDataAnnotation says
// otherwise, destroys its consumer group. Dispatchers never recreate a group
// (broker.ConsumerOptions.ExternalGroups), so one still running the Trigger until it reads the
// new contract cannot bring it back.
func (r *triggerReconciler) FinalizeKind(ctx context.Context, t *eventingv1.Trigger) pkgreconciler.Event {
	r.contract.removeTrigger(t.Namespace + "/" + t.Name)
	if err := r.contract.write(ctx); err != nil {
		return err
	}
	if t.Annotations[KeepDataAnnotation] == "true" {
		return nil
	}
	ct := brokerclass.Trigger{Namespace: t.Namespace, Name: t.Name, Broker: t.Spec.Broker}
	err := r.rdb.XGroupDestroy(ctx, ct.Stream(), ct.Group()).Err()
	if err != nil && !strings.Contains(err.Error(), "no such key") && !redis.HasErrorPrefix(err, "NOGROUP") {
		return fmt.Errorf("destroying the consumer group of Trigger %s/%s: %w", t.Namespace, t.Name, err)
	}
	if err := r.rdb.Del(ctx, broker.RoundsKey(ct.Stream(), ct.Group())).Err(); err != nil {
		return fmt.Errorf("deleting the failed rounds of Trigger %s/%s: %w", t.Namespace, t.Name, err)
	}
	return nil
}

func conditionText(c *apis.Condition) string {
	if c == nil {
		return "no Ready condition yet"
	}
	if c.Reason == "" {
		return string(c.Status)
	}
	return c.Reason + ": " + c.Message
}
