package embedded

import (
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"

	"github.com/knfaas/knfaas/internal/runtime/broker"
)

// triggerFilter builds the filter the Knative broker filter applies for t (broker.TriggerFilter:
// the cluster Broker class's dispatcher uses the same code).
func triggerFilter(t *eventingv1.Trigger) eventfilter.Filter {
	return broker.TriggerFilter(t.Spec.Filter, t.Spec.Filters)
}
