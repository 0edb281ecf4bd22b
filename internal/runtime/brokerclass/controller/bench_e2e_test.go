//go:build e2e

package controller

import (
	"context"
	"fmt"
	"strings"
	"testing"
	"time"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/watch"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
)

// watchUntil runs a watch of kind's objects in appNS and returns when done says so, or fails
// after two minutes.
func watchUntil(b *testing.B, w watch.Interface, what string, done func(watch.Event) bool) {
	b.Helper()
	defer w.Stop()
	timeout := time.After(2 * time.Minute)
	for {
		select {
		case ev, ok := <-w.ResultChan():
			if !ok {
				b.Fatalf("%s: the watch ended", what)
			}
			if done(ev) {
				return
			}
		case <-timeout:
			b.Fatalf("%s: not within two minutes", what)
		}
	}
}

// BenchmarkControlPlane prints the controller's figures against a real kube-apiserver, with the
// data plane's endpoints ready: the time from creating a Broker to its Ready status, and from
// creating 100 Triggers on it to all of them Ready (consumer groups created, contract written).
// Times are taken when the watch delivers the status; nothing is asserted about them. Each run
// of the loop adds a Broker and 100 Triggers to the same controller and contract.
//
// Run it once per process (-benchtime 1x, repeated from the shell): a second fixture started in
// the same test process (what -benchtime Nx does after its N=1 probe) measured 7-9 times slower
// Trigger reconciles here, a harness effect this benchmark does not explain.
//
//	for i in 1 2 3; do go test -tags e2e -run '^$' -bench BenchmarkControlPlane -benchtime 1x ./internal/runtime/brokerclass/controller/ | grep 'run 0'; done
func BenchmarkControlPlane(b *testing.B) {
	f := startFixture(b)
	f.readyEndpoints(b, IngressService)
	f.readyEndpoints(b, DispatcherService)
	ctx := context.Background()
	const triggers = 100
	var brokerReady, triggersReady time.Duration
	b.ResetTimer()
	for i := range b.N {
		name := fmt.Sprintf("bench-%d", i)
		w, err := f.ev.EventingV1().Brokers(appNS).Watch(ctx, metav1.ListOptions{FieldSelector: "metadata.name=" + name})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		if _, err := f.ev.EventingV1().Brokers(appNS).Create(ctx, newBroker(name, nil), metav1.CreateOptions{}); err != nil {
			b.Fatal(err)
		}
		watchUntil(b, w, "Broker "+name+" Ready", func(ev watch.Event) bool {
			br, ok := ev.Object.(*eventingv1.Broker)
			return ok && br.IsReady()
		})
		brokerTook := time.Since(start)
		brokerReady += brokerTook

		prefix := name + "-t-"
		w, err = f.ev.EventingV1().Triggers(appNS).Watch(ctx, metav1.ListOptions{})
		if err != nil {
			b.Fatal(err)
		}
		ready := map[string]bool{}
		start = time.Now()
		for j := range triggers {
			tr := newTrigger(fmt.Sprintf("%s%03d", prefix, j), name, duckv1.Destination{URI: apis.HTTP(fmt.Sprintf("sink-%d.example.com", j))})
			if _, err := f.ev.EventingV1().Triggers(appNS).Create(ctx, tr, metav1.CreateOptions{}); err != nil {
				b.Fatal(err)
			}
		}
		watchUntil(b, w, fmt.Sprintf("%d Triggers of %s Ready", triggers, name), func(ev watch.Event) bool {
			if tr, ok := ev.Object.(*eventingv1.Trigger); ok && strings.HasPrefix(tr.Name, prefix) && tr.Status.IsReady() {
				ready[tr.Name] = true
			}
			return len(ready) == triggers
		})
		triggersTook := time.Since(start)
		triggersReady += triggersTook
		b.Logf("run %d: Broker %s Ready %s after create; its %d Triggers all Ready %s after the first create (%d Triggers of earlier runs in the contract)",
			i, name, brokerTook.Round(time.Millisecond), triggers, triggersTook.Round(time.Millisecond), i*triggers)
	}
	b.StopTimer()
	n := time.Duration(b.N)
	b.ReportMetric(float64((brokerReady / n).Milliseconds()), "ms/broker-ready")
	b.ReportMetric((triggersReady / n).Seconds(), "s/100-triggers-ready")
	b.Logf("over %d runs: Broker create → Ready %s; %d Triggers create → all Ready %s", b.N, (brokerReady / n).Round(time.Millisecond), triggers, (triggersReady / n).Round(time.Millisecond))
}
