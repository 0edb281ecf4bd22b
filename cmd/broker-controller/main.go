// Command broker-controller is the RedisStreamBroker class's controller: it reconciles Brokers of
// that class and their Triggers and writes the data plane's contract (see
// internal/runtime/brokerclass/controller).
package main

import (
	"fmt"
	"os"

	"knative.dev/pkg/injection/sharedmain"
	"knative.dev/pkg/signals"
	"knative.dev/pkg/system"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass/controller"
)

func main() {
	rdb, err := redisconn.FromEnv()
	if err != nil {
		fmt.Fprintln(os.Stderr, "redis:", err)
		os.Exit(1)
	}
	sharedmain.MainWithContext(controller.WithInformerSelectors(signals.NewContext()), "redis-broker-controller", controller.Constructors(system.Namespace(), eventingNamespace(), rdb)...)
}

// eventingNamespace is Knative Eventing's namespace, where its config-features ConfigMap is:
// EVENTING_NAMESPACE, or Knative's default.
func eventingNamespace() string {
	if ns := os.Getenv("EVENTING_NAMESPACE"); ns != "" {
		return ns
	}
	return controller.DefaultEventingNamespace
}
