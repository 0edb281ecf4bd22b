package notify

import (
	"bufio"
	"context"
	"fmt"
	"io"

	"github.com/knfaas/knfaas/internal/function/duequeue"
)

// MetricsPath is where the notify function serves its metrics, in the Prometheus text format.
const MetricsPath = "/metrics"

// circuitStates are the values of knfaas_notify_endpoint_circuit's state label.
var circuitStates = []string{"closed", "half-open", "open"}

// WriteMetrics writes the endpoints' circuits and delivery counters in the Prometheus text
// exposition format (written by hand: the function links no metrics library). Every value is
// read from Redis, so every instance reports the same, cluster-wide figures: aggregate them
// with max, not sum.
func (a *API) WriteMetrics(ctx context.Context, w io.Writer) error {
	views, err := a.Views(ctx)
	if err != nil {
		return err
	}
	counters, err := a.Store.Counters(ctx)
	if err != nil {
		return err
	}
	scheduled, err := a.Store.Scheduled(ctx)
	if err != nil {
		return fmt.Errorf("counting scheduled deliveries: %w", err)
	}
	b := bufio.NewWriter(w)
	fmt.Fprintln(b, "# HELP knfaas_notify_endpoint_circuit State of each endpoint's circuit breaker: 1 for the state it is in, 0 for the others.")
	fmt.Fprintln(b, "# TYPE knfaas_notify_endpoint_circuit gauge")
	for _, v := range views {
		for _, s := range circuitStates {
			fmt.Fprintf(b, "knfaas_notify_endpoint_circuit{endpoint=%s,source=%s,state=%s} %d\n", duequeue.LabelValue(v.Name), duequeue.LabelValue(v.Source), duequeue.LabelValue(s), boolInt(v.Circuit.State == s))
		}
	}
	fmt.Fprintln(b, "# HELP knfaas_notify_endpoint_consecutive_failures Failed attempts in a row at each endpoint, as its circuit counts them.")
	fmt.Fprintln(b, "# TYPE knfaas_notify_endpoint_consecutive_failures gauge")
	for _, v := range views {
		fmt.Fprintf(b, "knfaas_notify_endpoint_consecutive_failures{endpoint=%s} %d\n", duequeue.LabelValue(v.Name), v.Circuit.ConsecutiveFailures)
	}
	fmt.Fprintln(b, "# HELP knfaas_notify_endpoint_disabled 1 when the endpoint sends nothing: paused through the API, disabled in the ConfigMap or after 410 Gone.")
	fmt.Fprintln(b, "# TYPE knfaas_notify_endpoint_disabled gauge")
	for _, v := range views {
		fmt.Fprintf(b, "knfaas_notify_endpoint_disabled{endpoint=%s} %d\n", duequeue.LabelValue(v.Name), boolInt(v.Paused || v.Disabled != ""))
	}
	duequeue.WriteCounters(b, "knfaas_notify_deliveries_total", "Outcomes at each endpoint over every instance: delivered, retry (an attempt failed, another is scheduled), dead (dead-lettered), gone (410), deferred (put back without an attempt: circuit open, bulkhead full, over the rate limit, paused).",
		"endpoint", counters)
	fmt.Fprintln(b, "# HELP knfaas_notify_scheduled (Message, endpoint) pairs waiting for an attempt, due or not.")
	fmt.Fprintln(b, "# TYPE knfaas_notify_scheduled gauge")
	fmt.Fprintf(b, "knfaas_notify_scheduled %d\n", scheduled)
	return b.Flush()
}
