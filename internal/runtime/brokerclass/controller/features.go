package controller

import (
	"context"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/fields"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	corelisters "k8s.io/client-go/listers/core/v1"
	"k8s.io/client-go/tools/cache"
	"knative.dev/eventing/pkg/apis/feature"

	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// DefaultEventingNamespace is where Knative Eventing keeps its config-features ConfigMap.
const DefaultEventingNamespace = "knative-eventing"

// featureWatcher reads Knative Eventing's feature flags (ConfigMap config-features in Knative
// Eventing's namespace) through an informer on that one ConfigMap. Without the ConfigMap,
// Knative's defaults apply (OIDC authentication disabled).
type featureWatcher struct {
	lister    corelisters.ConfigMapNamespaceLister
	informer  cache.SharedIndexInformer
	namespace string
}

// newFeatureWatcher starts the informer; onChange runs after every change of the ConfigMap.
func newFeatureWatcher(ctx context.Context, kube kubernetes.Interface, namespace string, onChange func()) *featureWatcher {
	factory := informers.NewSharedInformerFactoryWithOptions(kube, 0, informers.WithNamespace(namespace),
		informers.WithTweakListOptions(func(o *metav1.ListOptions) {
			o.FieldSelector = fields.OneTermEqualSelector("metadata.name", feature.FlagsConfigName).String()
		}))
	cms := factory.Core().V1().ConfigMaps()
	fw := &featureWatcher{lister: cms.Lister().ConfigMaps(namespace), informer: cms.Informer(), namespace: namespace}
	_, _ = fw.informer.AddEventHandler(cache.ResourceEventHandlerFuncs{
		AddFunc:    func(any) { onChange() },
		UpdateFunc: func(any, any) { onChange() },
		DeleteFunc: func(any) { onChange() },
	})
	factory.Start(ctx.Done())
	return fw
}

// HasSynced reports whether the ConfigMap was listed once.
func (fw *featureWatcher) HasSynced() bool { return fw.informer.HasSynced() }

// flags are the feature flags and the part of them the data plane honours. A ConfigMap that
// does not parse gives an error: nothing is enforced on a guess.
func (fw *featureWatcher) flags() (feature.Flags, map[string]string, error) {
	cm, err := fw.lister.Get(feature.FlagsConfigName)
	if apierrors.IsNotFound(err) {
		cm, err = &corev1.ConfigMap{}, nil
	}
	if err != nil {
		return nil, nil, err
	}
	flags, err := feature.NewFlagsConfigFromConfigMap(cm)
	if err != nil {
		return nil, nil, err
	}
	var forContract map[string]string
	for _, k := range brokerclass.FeatureKeys {
		if v, ok := cm.Data[k]; ok {
			if forContract == nil {
				forContract = map[string]string{}
			}
			forContract[k] = v
		}
	}
	return flags, forContract, nil
}
