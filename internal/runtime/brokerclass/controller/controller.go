package controller

import (
	"context"

	"github.com/redis/go-redis/v9"
	"k8s.io/apimachinery/pkg/labels"
	"k8s.io/client-go/tools/cache"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/auth"
	brokerinformer "knative.dev/eventing/pkg/client/injection/informers/eventing/v1/broker"
	triggerinformer "knative.dev/eventing/pkg/client/injection/informers/eventing/v1/trigger"
	eventpolicyinformer "knative.dev/eventing/pkg/client/injection/informers/eventing/v1alpha1/eventpolicy"
	brokerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/broker"
	triggerreconciler "knative.dev/eventing/pkg/client/injection/reconciler/eventing/v1/trigger"
	eventinglisters "knative.dev/eventing/pkg/client/listers/eventing/v1"
	kubeclient "knative.dev/pkg/client/injection/kube/client"
	serviceaccountinformer "knative.dev/pkg/client/injection/kube/informers/core/v1/serviceaccount/filtered"
	endpointsliceinformer "knative.dev/pkg/client/injection/kube/informers/discovery/v1/endpointslice"
	kubefilteredfactory "knative.dev/pkg/client/injection/kube/informers/factory/filtered"
	"knative.dev/pkg/configmap"
	pkgcontroller "knative.dev/pkg/controller"
	"knative.dev/pkg/injection"
	pkgreconciler "knative.dev/pkg/reconciler"
	"knative.dev/pkg/resolver"

	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// WithInformerSelectors adds to ctx the label selectors of the filtered informers the
// controllers use (the Triggers' OIDC ServiceAccounts, as Knative's controllers watch them); it
// must wrap the context before the informers are set up.
func WithInformerSelectors(ctx context.Context) context.Context {
	return kubefilteredfactory.WithSelectors(ctx, auth.OIDCLabelSelector)
}

// Constructors returns the Broker and Trigger controllers of the class for sharedmain. They share
// rdb, and one contract written to ConfigMap brokerclass.ContractConfigMap in namespace (the
// controller's own, where the data plane runs). Knative Eventing's feature flags are read from
// its config-features ConfigMap in eventingNamespace.
func Constructors(namespace, eventingNamespace string, rdb redis.UniversalClient) []injection.ControllerConstructor {
	var s *shared
	var brokerImpl *pkgcontroller.Impl
	get := func(ctx context.Context) *shared {
		if s == nil {
			s = &shared{
				namespace: namespace, rdb: rdb,
				contract:      newContractWriter(kubeclient.Get(ctx), namespace),
				endpoints:     endpointsliceinformer.Get(ctx).Lister(),
				brokers:       brokerinformer.Get(ctx).Lister(),
				eventPolicies: eventpolicyinformer.Get(ctx).Lister(),
				deleted:       map[string]bool{},
			}
			// A change of the feature flags is every Broker's.
			s.features = newFeatureWatcher(ctx, kubeclient.Get(ctx), eventingNamespace, func() {
				if brokerImpl != nil {
					brokerImpl.FilteredGlobalResync(classFilter, brokerinformer.Get(ctx).Informer())
				}
			})
		}
		return s
	}
	return []injection.ControllerConstructor{
		func(ctx context.Context, _ configmap.Watcher) *pkgcontroller.Impl {
			brokerImpl = newBrokerController(ctx, get(ctx))
			return brokerImpl
		},
		func(ctx context.Context, _ configmap.Watcher) *pkgcontroller.Impl {
			return newTriggerController(ctx, get(ctx))
		},
	}
}

// classFilter passes the Brokers of this class.
var classFilter = pkgreconciler.AnnotationFilterFunc(brokerreconciler.ClassAnnotationKey, brokerclass.ClassName, false)

func newBrokerController(ctx context.Context, s *shared) *pkgcontroller.Impl {
	r := &brokerReconciler{shared: s}
	impl := brokerreconciler.NewImpl(ctx, r, brokerclass.ClassName, func(*pkgcontroller.Impl) pkgcontroller.Options {
		return pkgcontroller.Options{PromoteFilterFunc: classFilter}
	})
	r.resolver = resolver.NewURIResolverFromTracker(ctx, impl.Tracker)
	brokerinformer.Get(ctx).Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: classFilter,
		Handler:    pkgcontroller.HandleAll(impl.Enqueue),
	})
	// An EventPolicy's change is the change of the Brokers it applies to.
	eventpolicyinformer.Get(ctx).Informer().AddEventHandler(auth.EventPolicyEventHandler(
		brokerinformer.Get(ctx).Informer().GetIndexer(), eventingv1.SchemeGroupVersion.WithKind("Broker").GroupKind(), impl.EnqueueKey))
	// The data plane's availability is every Broker's.
	endpointsliceinformer.Get(ctx).Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: pkgreconciler.NamespaceFilterFunc(s.namespace),
		Handler: pkgcontroller.HandleAll(func(any) {
			impl.FilteredGlobalResync(classFilter, brokerinformer.Get(ctx).Informer())
		}),
	})
	return impl
}

// triggerFilter passes the Triggers whose Broker is of this class.
func triggerFilter(brokers eventinglisters.BrokerLister) func(any) bool {
	return func(obj any) bool {
		t, ok := obj.(*eventingv1.Trigger)
		if !ok {
			return false
		}
		b, err := brokers.Brokers(t.Namespace).Get(t.Spec.Broker)
		if err != nil {
			return false
		}
		return classFilter(b)
	}
}

func newTriggerController(ctx context.Context, s *shared) *pkgcontroller.Impl {
	oidcAccounts := serviceaccountinformer.Get(ctx, auth.OIDCLabelSelector)
	r := &triggerReconciler{shared: s, kube: kubeclient.Get(ctx), serviceAccounts: oidcAccounts.Lister()}
	filter := triggerFilter(s.brokers)
	impl := triggerreconciler.NewImpl(ctx, r, func(*pkgcontroller.Impl) pkgcontroller.Options {
		return pkgcontroller.Options{PromoteFilterFunc: filter}
	})
	r.resolver = resolver.NewURIResolverFromTracker(ctx, impl.Tracker)
	triggers := triggerinformer.Get(ctx)
	triggers.Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: filter,
		Handler:    pkgcontroller.HandleAll(impl.Enqueue),
	})
	// A change of a Trigger's OIDC ServiceAccount is the Trigger's.
	oidcAccounts.Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: pkgcontroller.FilterController(&eventingv1.Trigger{}),
		Handler:    pkgcontroller.HandleAll(impl.EnqueueControllerOf),
	})
	// A Broker's change (Ready, deleted) is its Triggers'.
	brokerinformer.Get(ctx).Informer().AddEventHandler(cache.FilteringResourceEventHandler{
		FilterFunc: classFilter,
		Handler: pkgcontroller.HandleAll(func(obj any) {
			b, ok := obj.(*eventingv1.Broker)
			if !ok {
				return
			}
			list, err := triggers.Lister().Triggers(b.Namespace).List(labels.Everything())
			if err != nil {
				return
			}
			for _, t := range list {
				if t.Spec.Broker == b.Name {
					impl.Enqueue(t)
				}
			}
		}),
	})
	return impl
}
