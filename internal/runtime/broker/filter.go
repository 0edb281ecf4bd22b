package broker

import (
	"context"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.uber.org/zap"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/eventfilter/attributes"
	"knative.dev/eventing/pkg/eventfilter/subscriptionsapi"
)

// TriggerFilter builds the filter the Knative broker filter applies for a Trigger's spec.filter
// and spec.filters: the newer filters when set, the attributes filter otherwise, nil (deliver
// everything) with neither.
//
// The leaves (exact, prefix, suffix, not, cesql) are Knative's own. The all and any
// combinators are evaluated here in their declared order, with Knative's results (all fails on
// the first failing filter, any passes on the first passing one, otherwise the last result):
// Knative v0.50's combinators reorder their filters from a background goroutine that reads the
// filter slice without the lock its swaps take, a data race the race detector reports under
// parallel deliveries. Reordering only saves evaluations; it never changes which events pass.
func TriggerFilter(filter *eventingv1.TriggerFilter, filters []eventingv1.SubscriptionsAPIFilter) eventfilter.Filter {
	switch {
	case len(filters) > 0:
		return allOf(subscriptionFilters(filters))
	case filter != nil:
		return attributes.NewAttributesFilter(filter.Attributes)
	}
	return nil
}

func subscriptionFilters(filters []eventingv1.SubscriptionsAPIFilter) []eventfilter.Filter {
	out := make([]eventfilter.Filter, 0, len(filters))
	for _, f := range filters {
		if m := subscriptionFilter(f); m != nil {
			out = append(out, m)
		}
	}
	return out
}

// subscriptionFilter materializes one filter; nil for one Knative would skip (validation,
// which the manifest loader runs, refuses those before they get here).
func subscriptionFilter(f eventingv1.SubscriptionsAPIFilter) eventfilter.Filter {
	switch {
	case len(f.All) > 0:
		return allOf(subscriptionFilters(f.All))
	case len(f.Any) > 0:
		return anyOf(subscriptionFilters(f.Any))
	case f.Not != nil:
		inner := subscriptionFilter(*f.Not)
		if inner == nil {
			return nil
		}
		return subscriptionsapi.NewNotFilter(inner)
	}
	// A leaf: Knative's own materializer builds exact, prefix, suffix and cesql filters.
	return subscriptionsapi.MaterializeSubscriptionsAPIFilter(zap.NewNop(), f)
}

// combined evaluates filters in order; all stops at the first failure, any at the first pass.
type combined struct {
	filters []eventfilter.Filter
	any     bool
}

func allOf(filters []eventfilter.Filter) eventfilter.Filter { return combine(filters, false) }
func anyOf(filters []eventfilter.Filter) eventfilter.Filter { return combine(filters, true) }

func combine(filters []eventfilter.Filter, any bool) eventfilter.Filter {
	if len(filters) == 1 {
		return filters[0]
	}
	return &combined{filters: filters, any: any}
}

func (c *combined) Filter(ctx context.Context, e cloudevents.Event) eventfilter.FilterResult {
	res := eventfilter.NoFilter
	for _, f := range c.filters {
		res = f.Filter(ctx, e)
		if c.any && res == eventfilter.PassFilter {
			return eventfilter.PassFilter
		}
		if !c.any && res == eventfilter.FailFilter {
			return eventfilter.FailFilter
		}
	}
	return res
}

func (c *combined) Cleanup() {
	for _, f := range c.filters {
		f.Cleanup()
	}
}
