package notify

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
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
			fmt.Fprintf(b, "knfaas_notify_endpoint_circuit{endpoint=%s,source=%s,state=%s} %d\n", quote(v.Name), quote(v.Source), quote(s), boolInt(v.Circuit.State == s))
		}
	}
	fmt.Fprintln(b, "# HELP knfaas_notify_endpoint_consecutive_failures Failed attempts in a row at each endpoint, as its circuit counts them.")
	fmt.Fprintln(b, "# TYPE knfaas_notify_endpoint_consecutive_failures gauge")
	for _, v := range views {
		fmt.Fprintf(b, "knfaas_notify_endpoint_consecutive_failures{endpoint=%s} %d\n", quote(v.Name), v.Circuit.ConsecutiveFailures)
	}
	fmt.Fprintln(b, "# HELP knfaas_notify_endpoint_disabled 1 when the endpoint sends nothing: paused through the API, disabled in the ConfigMap or after 410 Gone.")
	fmt.Fprintln(b, "# TYPE knfaas_notify_endpoint_disabled gauge")
	for _, v := range views {
		fmt.Fprintf(b, "knfaas_notify_endpoint_disabled{endpoint=%s} %d\n", quote(v.Name), boolInt(v.Paused || v.Disabled != ""))
	}
	fmt.Fprintln(b, "# HELP knfaas_notify_deliveries_total Outcomes at each endpoint over every instance: delivered, retry (an attempt failed, another is scheduled), dead (dead-lettered), gone (410), deferred (put back without an attempt: circuit open, bulkhead full, over the rate limit, paused).")
	fmt.Fprintln(b, "# TYPE knfaas_notify_deliveries_total counter")
	for _, ep := range slices.Sorted(maps.Keys(counters)) {
		for _, outcome := range slices.Sorted(maps.Keys(counters[ep])) {
			fmt.Fprintf(b, "knfaas_notify_deliveries_total{endpoint=%s,outcome=%s} %d\n", quote(ep), quote(outcome), counters[ep][outcome])
		}
	}
	fmt.Fprintln(b, "# HELP knfaas_notify_scheduled (Message, endpoint) pairs waiting for an attempt, due or not.")
	fmt.Fprintln(b, "# TYPE knfaas_notify_scheduled gauge")
	fmt.Fprintf(b, "knfaas_notify_scheduled %d\n", scheduled)
	return b.Flush()
}

// quote writes a label value: backslash, double quote and line feed escaped.
func quote(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}
