package cli

import (
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/tracing"
	"github.com/knfaas/knfaas/internal/runtime/localhost"
	"github.com/knfaas/knfaas/internal/runtime/tracestore"
)

func newTraceCommand() *cobra.Command {
	var rf runFlags
	var output string
	cmd := &cobra.Command{
		Use:   "trace <event-id>",
		Short: "Print an event's journey under knfaas up: intake, broker, each Trigger's attempts, replies, dead letters",
		Long: `Print the traces of an event under the running knfaas up, as a tree with timings: webhook
intake, broker ingress, each Trigger's delivery with every attempt (retries and the dead-letter
send are their own spans), the function's handler and its Redis calls, and the events it
published, which continue the trace.

knfaas up keeps the spans in memory (bounded by ` + tracestore.EnvMaxAge + ` and ` + tracestore.EnvMaxBytes + `);
an event that was not sampled (OTEL_TRACES_SAMPLER) or is older has none.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			traces, err := fetchTraces(rf, args[0])
			if err != nil {
				return err
			}
			if len(traces) == 0 {
				return fmt.Errorf("no trace holds event %q: it was not sampled, is older than %s, or tracing is off in this run", args[0], tracestore.EnvMaxAge)
			}
			doc := traceDocument{}
			for _, t := range traces {
				doc.Traces = append(doc.Traces, buildTraceTree(t))
			}
			if structured(output) {
				return writeDocument(cmd.OutOrStdout(), output, doc)
			}
			return writeTraceTable(cmd.OutOrStdout(), doc)
		},
	}
	addRunFlags(cmd, &rf)
	addOutputFlag(cmd, &output)
	return cmd
}

// fetchTraces asks the running knfaas up for the traces of eventID.
func fetchTraces(rf runFlags, eventID string) ([]tracestore.Trace, error) {
	ep, err := rf.discover()
	if err != nil {
		return nil, fmt.Errorf("%w: traces are kept by knfaas up; start it, or pass --state-dir", err)
	}
	u := ep.Internal + "/otlp" + tracestore.ReceiverPath + "?event_id=" + url.QueryEscape(eventID)
	resp, err := localhost.Client(10 * time.Second).Get(u)
	if err != nil {
		return nil, fmt.Errorf("asking knfaas up (pid %d) for traces: %w", ep.PID, err)
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 4096))
		return nil, fmt.Errorf("knfaas up (pid %d) answered %s: %s", ep.PID, resp.Status, strings.TrimSpace(string(b)))
	}
	var body struct {
		Traces []tracestore.Trace `json:"traces"`
	}
	if err := json.NewDecoder(io.LimitReader(resp.Body, 64<<20)).Decode(&body); err != nil {
		return nil, fmt.Errorf("reading the traces of knfaas up: %w", err)
	}
	return body.Traces, nil
}

// traceDocument is what -o json|yaml prints: each trace as a tree of spans.
type traceDocument struct {
	Traces []traceTree `json:"traces"`
}

// traceTree and spanNode are the trees tracestore.BuildTree builds.
type (
	traceTree = tracestore.Tree
	spanNode  = tracestore.TreeSpan
)

func buildTraceTree(t tracestore.Trace) traceTree { return tracestore.BuildTree(t) }

// traceDetails are the attributes the table shows after a span's name.
var traceDetails = []struct{ key, label string }{
	{tracing.AttrEventID, "event"},
	{tracing.AttrAttempt, "attempt"},
	{"http.response.status_code", "status"},
	{"knfaas.delivery.outcome", "outcome"},
	{"knfaas.reply.id", "reply"},
}

func writeTraceTable(w io.Writer, doc traceDocument) error {
	for i, t := range doc.Traces {
		if i > 0 {
			fmt.Fprintln(w)
		}
		fmt.Fprintf(w, "TRACE %s  %s  %s\n", t.TraceID, t.Start.Format(time.RFC3339Nano), t.Duration)
		tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "OFFSET\tDURATION\tSERVICE\tSPAN")
		var walk func(ns []*spanNode, prefix string)
		walk = func(ns []*spanNode, prefix string) {
			for k, n := range ns {
				branch, next := "├─ ", "│  "
				if k == len(ns)-1 {
					branch, next = "└─ ", "   "
				}
				line := prefix + branch + n.Name
				var details []string
				for _, d := range traceDetails {
					if v := n.Attributes[d.key]; v != "" && (d.key != tracing.AttrEventID || prefix == "") {
						details = append(details, d.label+"="+v)
					}
				}
				if n.Status == "error" {
					msg := n.Message
					if len(msg) > 80 {
						msg = msg[:80] + "…"
					}
					details = append(details, strings.TrimSpace("ERROR "+msg))
				}
				if len(details) > 0 {
					line += "  (" + strings.Join(details, ", ") + ")"
				}
				fmt.Fprintf(tw, "+%s\t%s\t%s\t%s\n", n.Offset, n.Duration, n.Service, line)
				walk(n.Children, prefix+next)
			}
		}
		walk(t.Spans, "")
		if err := tw.Flush(); err != nil {
			return err
		}
	}
	return nil
}
