package mail

import (
	"bufio"
	"context"
	"fmt"
	"io"

	"github.com/knfaas/knfaas/internal/function/duequeue"
)

// MetricsPath is where the mail function serves its metrics, in the Prometheus text format.
const MetricsPath = "/metrics"

// WriteMetrics writes the SMTP server's circuit, the send counters and the mails waiting, in the
// Prometheus text exposition format (by hand: the function links no metrics library). Every
// value is read from Redis, so every instance reports the same, cluster-wide figures: aggregate
// them with max, not sum.
func (s *Store) WriteMetrics(ctx context.Context, w io.Writer, server Server) error {
	circuit, err := ReadBreaker(ctx, s.rdb, server.Name())
	if err != nil {
		return err
	}
	counters, err := s.Counters(ctx)
	if err != nil {
		return err
	}
	scheduled, err := s.Scheduled(ctx)
	if err != nil {
		return fmt.Errorf("counting scheduled mails: %w", err)
	}
	name := duequeue.LabelValue(server.Name())
	b := bufio.NewWriter(w)
	fmt.Fprintln(b, "# HELP knfaas_mail_server_circuit State of the SMTP server's circuit breaker: 1 for the state it is in, 0 for the others.")
	fmt.Fprintln(b, "# TYPE knfaas_mail_server_circuit gauge")
	for _, st := range []string{"closed", "half-open", "open"} {
		v := 0
		if circuit.State == st {
			v = 1
		}
		fmt.Fprintf(b, "knfaas_mail_server_circuit{server=%s,state=%s} %d\n", name, duequeue.LabelValue(st), v)
	}
	fmt.Fprintln(b, "# HELP knfaas_mail_server_consecutive_failures Failed attempts in a row at the SMTP server, as its circuit counts them.")
	fmt.Fprintln(b, "# TYPE knfaas_mail_server_consecutive_failures gauge")
	fmt.Fprintf(b, "knfaas_mail_server_consecutive_failures{server=%s} %d\n", name, circuit.ConsecutiveFailures)
	duequeue.WriteCounters(b, "knfaas_mail_sends_total", "Outcomes at each SMTP server over every instance: delivered, retry (an attempt failed, another is scheduled), dead (dead-lettered after attempts), deferred (put back without an attempt: circuit open, bulkhead full).",
		"server", counters)
	fmt.Fprintln(b, "# HELP knfaas_mail_scheduled Mails waiting for an attempt, due or not.")
	fmt.Fprintln(b, "# TYPE knfaas_mail_scheduled gauge")
	fmt.Fprintf(b, "knfaas_mail_scheduled %d\n", scheduled)
	return b.Flush()
}
