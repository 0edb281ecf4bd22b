package controller

import (
	"bytes"
	"context"
	"fmt"
	"maps"
	"sync"

	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

// contractWriter keeps the contract both reconcilers build, and writes it to the contract
// ConfigMap whenever it changes.
type contractWriter struct {
	kube      kubernetes.Interface
	namespace string

	mu       sync.Mutex
	brokers  map[string]brokerclass.Broker
	triggers map[string]brokerclass.Trigger
	features map[string]string
	written  []byte
	gen      int64
}

func newContractWriter(kube kubernetes.Interface, namespace string) *contractWriter {
	return &contractWriter{kube: kube, namespace: namespace, brokers: map[string]brokerclass.Broker{}, triggers: map[string]brokerclass.Trigger{}}
}

func (w *contractWriter) setFeatures(f map[string]string) {
	w.change(func() { w.features = maps.Clone(f) })
}
func (w *contractWriter) setBroker(b brokerclass.Broker) { w.change(func() { w.brokers[b.Key()] = b }) }
func (w *contractWriter) removeBroker(key string) {
	w.change(func() {
		delete(w.brokers, key)
		for k, t := range w.triggers {
			if t.Namespace+"/"+t.Broker == key {
				delete(w.triggers, k)
			}
		}
	})
}
func (w *contractWriter) setTrigger(t brokerclass.Trigger) {
	w.change(func() { w.triggers[t.Key()] = t })
}
func (w *contractWriter) removeTrigger(key string) { w.change(func() { delete(w.triggers, key) }) }

func (w *contractWriter) change(f func()) {
	w.mu.Lock()
	defer w.mu.Unlock()
	f()
}

// contract is the current contract: every known Broker, and the Triggers whose Broker is known.
func (w *contractWriter) contract() *brokerclass.Contract {
	c := &brokerclass.Contract{Features: maps.Clone(w.features)}
	for _, b := range w.brokers {
		c.Brokers = append(c.Brokers, b)
	}
	for _, t := range w.triggers {
		if _, ok := w.brokers[t.Namespace+"/"+t.Broker]; ok {
			c.Triggers = append(c.Triggers, t)
		}
	}
	return c
}

// write stores the contract in its ConfigMap unless it is what the ConfigMap already holds.
func (w *contractWriter) write(ctx context.Context) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	c := w.contract()
	body, err := c.Encode() // without the generation: compare content only
	if err != nil {
		return err
	}
	if bytes.Equal(body, w.written) {
		return nil
	}
	cms := w.kube.CoreV1().ConfigMaps(w.namespace)
	cm, err := cms.Get(ctx, brokerclass.ContractConfigMap, metav1.GetOptions{})
	switch {
	case apierrors.IsNotFound(err):
		c.Generation = 1
		data, err := c.Encode()
		if err != nil {
			return err
		}
		cm = &corev1.ConfigMap{
			ObjectMeta: metav1.ObjectMeta{Name: brokerclass.ContractConfigMap, Namespace: w.namespace, Labels: map[string]string{
				"app.kubernetes.io/part-of": "knfaas", "app.kubernetes.io/component": "redis-broker",
			}},
			Data: map[string]string{brokerclass.ContractKey: string(data)},
		}
		if _, err := cms.Create(ctx, cm, metav1.CreateOptions{}); err != nil {
			return fmt.Errorf("creating ConfigMap %s/%s: %w", w.namespace, brokerclass.ContractConfigMap, err)
		}
	case err != nil:
		return fmt.Errorf("reading ConfigMap %s/%s: %w", w.namespace, brokerclass.ContractConfigMap, err)
	default:
		old, _ := brokerclass.ParseContract([]byte(cm.Data[brokerclass.ContractKey]))
		if old != nil {
			c.Generation = old.Generation
			oldBody, _ := (&brokerclass.Contract{Features: old.Features, Brokers: old.Brokers, Triggers: old.Triggers}).Encode()
			if bytes.Equal(oldBody, body) {
				w.written = body
				return nil
			}
		}
		c.Generation++
		data, err := c.Encode()
		if err != nil {
			return err
		}
		cm = cm.DeepCopy()
		if cm.Data == nil {
			cm.Data = map[string]string{}
		}
		cm.Data[brokerclass.ContractKey] = string(data)
		if _, err := cms.Update(ctx, cm, metav1.UpdateOptions{}); err != nil {
			return fmt.Errorf("updating ConfigMap %s/%s: %w", w.namespace, brokerclass.ContractConfigMap, err)
		}
	}
	w.written = body
	return nil
}
