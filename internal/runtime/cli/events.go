package cli

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/eventlog"
	"github.com/knfaas/knfaas/internal/function/projection"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/runtime/localhost"
)

const eventsLong = `Replay events from the event store's log and rebuild read models.

The commands read Redis directly: the Redis of the running knfaas up (found in its state
directory; --addr or KNFAAS_ADDR pick one of several), or REDIS_URL when it is set (with
REDIS_PASSWORD / REDIS_CA_FILE when needed). On a cluster, -n/--namespace, --kubeconfig or
--context reach the platform's Redis through a port-forward of the Kubernetes API, and
--broker/--service through the API server's service proxy:

  kn faas events replay -n knfaas --broker knfaas/default

Rebuilding a read model from the log (the result is identical to the live model):

  1. pause the projector's Triggers (or accept that live events race with the rebuild)
  2. knfaas events drop --model stock --projector stock-projector
  3. knfaas events replay --type dev.knfaas.example.pos.sale.recorded,... \
       --service knfaas/pos-stock --allow-beyond-horizon

     (--service reaches cluster-local Services of the running knfaas up through its internal
     capability; on a cluster, kubectl port-forward and pass --to URL)

Sent straight to the projector, the replay reaches nothing else, arrives in log order (a Broker
delivers in parallel), and the projector's replies come back to this command, which drops them:
no side effect is repeated. Events the target refuses (4xx) are listed and skipped, as they were
when they first arrived; any other failure stops the replay.

Replayed events keep their id and source, so a consumer that still remembers them (its inbox
horizon, 7 days by default, has not passed) ignores them: replaying recent events to the
Broker is safe. Older events would be applied again by every subscriber that has forgotten
them, so replay refuses events older than --inbox-horizon unless --allow-beyond-horizon says
that the target has no memory to lose (a projector whose model was just dropped).`

// newEventsCommand returns `events` with replay and drop.
func newEventsCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "events",
		Short: "Replay the event log and rebuild read models",
		Long:  eventsLong,
	}
	cmd.AddCommand(newEventsReplayCommand(), newEventsDropCommand())
	return cmd
}

type replayOptions struct {
	run     runFlags
	broker  string
	service string
	subject string
	types   []string
	since   string
	until   string
	to      string
	rate    float64
	dryRun  bool
	timeout time.Duration
	horizon time.Duration
	beyond  bool
	output  string
	quiet   bool
}

// replayLine is one event of a replay in -o json and -o yaml.
type replayLine struct {
	Cursor  string `json:"cursor"`
	Type    string `json:"type"`
	Subject string `json:"subject,omitempty"`
	Source  string `json:"source"`
	ID      string `json:"id"`
	// Outcome is "sent", "refused" (4xx, skipped) or, with --dry-run, "would send".
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// replayReport is the document -o json and -o yaml print.
type replayReport struct {
	DryRun    bool         `json:"dryRun,omitempty"`
	WouldSend int          `json:"wouldSend,omitempty"`
	Sent      int          `json:"sent"`
	Refused   int          `json:"refused"`
	Events    []replayLine `json:"events"`
}

func newEventsReplayCommand() *cobra.Command {
	var o replayOptions
	cmd := &cobra.Command{
		Use:   "replay",
		Short: "Send stored events, oldest first, to a broker or any CloudEvents endpoint",
		Long: `Send the events of the log that match the filters, oldest first, in binary mode.
--since/--until take an RFC 3339 time or a duration meaning "that long ago" (24h) and are
compared with the time the event store appended each event.`,
		Example: `  knfaas events replay --subject SKU-1001 --dry-run
  knfaas events replay --type dev.knfaas.example.pos.sale.recorded --since 24h \
      --broker knfaas/default --rate 200`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runReplay(cmd.Context(), cmd.OutOrStdout(), o)
		},
	}
	f := cmd.Flags()
	f.StringVar(&o.subject, "subject", "", "only events with this subject")
	f.StringSliceVar(&o.types, "type", nil, "only events of these types (repeat or comma-separate)")
	f.StringVar(&o.since, "since", "", "only events appended at or after this time (RFC 3339, or a duration ago)")
	f.StringVar(&o.until, "until", "", "only events appended at or before this time (RFC 3339, or a duration ago)")
	f.StringVar(&o.to, "to", "", "where to send the events: a Broker ingress URL or any CloudEvents endpoint")
	f.StringVar(&o.broker, "broker", "", "send to this Broker (namespace/name) of the running knfaas up")
	f.StringVar(&o.service, "service", "", "send to this Knative Service (namespace/name) of the running knfaas up, cluster-local ones included")
	cmd.MarkFlagsMutuallyExclusive("to", "broker", "service")
	addRunFlags(cmd, &o.run)
	_ = cmd.RegisterFlagCompletionFunc("broker", completeBrokerRefs(&o.run))
	_ = cmd.RegisterFlagCompletionFunc("service", completeServiceRefs(&o.run))
	f.Float64Var(&o.rate, "rate", 100, "at most this many events per second (0: no limit)")
	f.BoolVar(&o.dryRun, "dry-run", false, "print the events that would be sent, send nothing")
	f.DurationVar(&o.timeout, "timeout", 10*time.Second, "timeout of each send")
	f.DurationVar(&o.horizon, "inbox-horizon", projection.DefaultInboxTTL, "the shortest deduplication horizon of the target's consumers")
	f.BoolVar(&o.beyond, "allow-beyond-horizon", false, "send events older than --inbox-horizon (only to a consumer with nothing to forget, e.g. a just-dropped projector)")
	addOutputFlag(cmd, &o.output)
	addQuietFlag(cmd, &o.quiet)
	return cmd
}

// parseWhen reads an RFC 3339 time or a duration before now.
func parseWhen(flag, s string, now time.Time) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	if t, err := time.Parse(time.RFC3339Nano, s); err == nil {
		return t, nil
	}
	d, err := time.ParseDuration(s)
	if err != nil || d < 0 {
		return time.Time{}, fmt.Errorf("--%s %q: want an RFC 3339 time or a positive duration ago", flag, s)
	}
	return now.Add(-d), nil
}

func runReplay(ctx context.Context, out io.Writer, o replayOptions) error {
	now := time.Now()
	since, err := parseWhen("since", o.since, now)
	if err != nil {
		return err
	}
	until, err := parseWhen("until", o.until, now)
	if err != nil {
		return err
	}
	if !since.IsZero() && !until.IsZero() && until.Before(since) {
		return errors.New("--until is before --since")
	}
	if o.rate < 0 {
		return fmt.Errorf("--rate %v: want 0 (no limit) or more", o.rate)
	}
	if err := checkOutput(o.output); err != nil {
		return err
	}
	report := replayReport{DryRun: o.dryRun, Events: []replayLine{}}
	note := func(r eventlog.Record, outcome string, err error) {
		line := replayLine{Cursor: r.Cursor, Type: r.Event.Type(), Subject: r.Event.Subject(), Source: r.Event.Source(), ID: r.Event.ID(), Outcome: outcome}
		if err != nil {
			line.Error = err.Error()
		}
		switch {
		case structured(o.output):
			report.Events = append(report.Events, line)
		case o.quiet:
			if outcome != "refused" {
				fmt.Fprintln(out, line.ID)
			}
		case outcome == "would send":
			fmt.Fprintf(out, "%s\t%s\t%s\t%s\t%s\n", line.Cursor, line.Type, line.Subject, line.Source, line.ID)
		case outcome == "refused":
			fmt.Fprintf(out, "refused\t%s\t%s\t%s\t%v\n", line.Cursor, line.Type, line.ID, err)
		}
	}
	var send func(context.Context, eventlog.Record) error
	if !o.dryRun {
		to := httpTarget{url: o.to}
		switch {
		case o.broker != "":
			to, err = o.run.brokerTarget(o.broker)
		case o.service != "":
			to, err = o.run.serviceTarget(o.service, "/")
		case to.url == "":
			err = errors.New("--to, --broker or --service is required unless --dry-run")
		}
		if err != nil {
			return err
		}
		s, err := sink.NewWithTransport(to.url, o.timeout, to.transportOr(localhost.Transport()))
		if err != nil {
			return err
		}
		send = func(ctx context.Context, r eventlog.Record) error { return s.Send(ctx, r.Event) }
	}
	rdb, err := o.run.openRedis("events")
	if err != nil {
		return err
	}
	defer rdb.Close()
	log := eventlog.New(rdb, eventlog.Options{})

	// One type reads that type's stream; otherwise the subject's stream or the global one is
	// read and filtered here, which keeps the replay in the order the events were appended.
	q := eventlog.Query{Subject: o.subject, Since: since, Until: until, Limit: 500}
	wanted := map[string]bool{}
	for _, t := range o.types {
		wanted[strings.TrimSpace(t)] = true
	}
	if len(wanted) == 1 {
		q.Type = strings.TrimSpace(o.types[0])
	}
	var tick *time.Ticker
	if o.rate > 0 && send != nil {
		tick = time.NewTicker(time.Duration(float64(time.Second) / o.rate))
		defer tick.Stop()
	}
	sent, refused := 0, 0
	started, reported := time.Now(), time.Now()
	for {
		page, err := log.Read(ctx, q)
		if err != nil {
			return err
		}
		for _, r := range page.Records {
			if len(wanted) > 0 && !wanted[r.Event.Type()] {
				continue
			}
			if send == nil {
				note(r, "would send", nil)
				sent++
				continue
			}
			if !o.beyond && appendedBefore(r.Cursor, now.Add(-o.horizon)) {
				return fmt.Errorf("event %s (cursor %s) is older than --inbox-horizon %s: consumers may have forgotten it and would apply it again; "+
					"narrow --since, or pass --allow-beyond-horizon when the target is a projector whose model was just dropped (replayed %d events so far)",
					r.Event.ID(), r.Cursor, o.horizon, sent)
			}
			if tick != nil {
				select {
				case <-ctx.Done():
					return ctx.Err()
				case <-tick.C:
				}
			}
			if err := send(ctx, r); err != nil {
				// A refusal (4xx) is what the target answered live too, and will answer every
				// time: report it and go on. Anything else may pass on a retry: stop, resumable.
				if code := sink.StatusCode(err); code >= 400 && code < 500 {
					note(r, "refused", err)
					refused++
					continue
				}
				return fmt.Errorf("replayed %d events; stopped at cursor %s (resume with --since or from there): %w", sent, r.Cursor, err)
			}
			note(r, "sent", nil)
			sent++
			if !structured(o.output) && !o.quiet && time.Since(reported) >= replayProgressInterval {
				fmt.Fprintf(out, "  replayed %d events so far (%s)\n", sent, time.Since(started).Round(time.Second))
				reported = time.Now()
			}
		}
		if page.Next == "" {
			break
		}
		q.After = page.Next
	}
	if structured(o.output) {
		report.Sent, report.Refused = sent, refused
		if o.dryRun {
			report.WouldSend, report.Sent = sent, 0
		}
		return writeDocument(out, o.output, report)
	}
	if o.quiet {
		return nil
	}
	verb := "replayed"
	if send == nil {
		verb = "would replay"
	}
	fmt.Fprintf(out, "%s %d events\n", verb, sent)
	if refused > 0 {
		fmt.Fprintf(out, "%d events refused by the target (4xx), listed above\n", refused)
	}
	return nil
}

func newEventsDropCommand() *cobra.Command {
	var model, projector string
	var run runFlags
	cmd := &cobra.Command{
		Use:   "drop",
		Short: "Delete a read model and its projector's inbox, ready to be rebuilt by a replay",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			rdb, err := run.openRedis("read models")
			if err != nil {
				return err
			}
			defer rdb.Close()
			kit, err := projection.New(rdb, projector, model, projection.Options{})
			if err != nil {
				return err
			}
			if err := kit.Drop(cmd.Context()); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "dropped read model %s and the inbox of %s\n", model, projector)
			return nil
		},
	}
	cmd.Flags().StringVar(&model, "model", "", "the read model (e.g. stock)")
	cmd.Flags().StringVar(&projector, "projector", "", "the projector writing it (e.g. stock-projector)")
	addRunFlags(cmd, &run)
	_ = cmd.MarkFlagRequired("model")
	_ = cmd.MarkFlagRequired("projector")
	return cmd
}

// replayProgressInterval is how often a replay that sends says how far it got.
var replayProgressInterval = 5 * time.Second

// appendedBefore reports whether a stream cursor (<ms>-<seq>) lies before t.
func appendedBefore(cursor string, t time.Time) bool {
	ms, _, _ := strings.Cut(cursor, "-")
	n, err := strconv.ParseInt(ms, 10, 64)
	return err == nil && n < t.UnixMilli()
}
