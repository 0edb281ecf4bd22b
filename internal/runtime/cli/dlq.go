package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"strconv"
	"text/tabwriter"
	"time"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
)

const dlqLong = `Inspect, redrive and purge the dead letters stored by the deadletter function.

The commands talk to Redis directly: the Redis of the running knfaas up (found in its state
directory; --addr or KNFAAS_ADDR pick one of several), or REDIS_URL when it is set (with
REDIS_PASSWORD / REDIS_CA_FILE when needed). On a cluster, -n/--namespace, --kubeconfig or
--context reach the Redis Service of the platform's namespace through a port-forward of the
Kubernetes API (its url and password from the Secret redis), e.g.:

  kn faas dlq list -n knfaas

Letters are selected by id (arguments) and/or filters; --since/--until take an RFC 3339 time or
an age such as 30m, 2h or 7d.

A letter's REASON is "dead-letter" when the dead-letter sink received it, and "parked" when the
broker stored the event itself because subscriber and dead-letter sink both kept failing
(dlq show prints their last answers); --parked selects those.`

// newDLQCommand returns `dlq` with list, show, redrive and purge.
func newDLQCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "dlq",
		Short: "Inspect, redrive and purge dead letters",
		Long:  dlqLong,
	}
	cmd.AddCommand(newDLQListCommand(), newDLQShowCommand(), newDLQRedriveCommand(), newDLQPurgeCommand())
	return cmd
}

func addFilterFlags(cmd *cobra.Command, f *dlqFilterFlags, defaultLimit int) {
	fl := cmd.Flags()
	fl.StringVar(&f.eventType, "type", "", "only letters whose event has this type")
	fl.StringVar(&f.source, "source", "", "only letters whose event has this source")
	fl.StringVar(&f.dest, "dest", "", "only letters that failed at this destination (knativeerrordest)")
	fl.StringVar(&f.code, "code", "", "only letters whose last answer was this HTTP status (knativeerrorcode)")
	fl.StringVar(&f.since, "since", "", "only letters received at or after this time or age (RFC 3339, or 2h, 7d)")
	fl.StringVar(&f.until, "until", "", "only letters received at or before this time or age")
	fl.IntVar(&f.limit, "limit", defaultLimit, "at most this many letters, oldest first (0: no limit)")
	fl.BoolVar(&f.parked, "parked", false, "only events the broker parked after subscriber and dead-letter sink kept failing")
}

// openStore connects to REDIS_URL or the running knfaas up's Redis; retention options do not
// matter to readers.
func openStore(run runFlags) (*deadletter.Store, *redis.Client, error) {
	rdb, err := run.openRedis("dead letters")
	if err != nil {
		return nil, nil, err
	}
	return deadletter.NewStore(rdb, deadletter.Options{}), rdb, nil
}

// openFiltered validates the output and filter flags before touching Redis, then connects.
func openFiltered(run runFlags, f dlqFilterFlags, ids []string, output string) (deadletter.Filter, *deadletter.Store, *redis.Client, error) {
	if err := checkOutput(output); err != nil {
		return deadletter.Filter{}, nil, nil, err
	}
	filter, err := f.filter(ids, time.Now())
	if err != nil {
		return filter, nil, nil, err
	}
	store, rdb, err := openStore(run)
	return filter, store, rdb, err
}

// selectLetters validates the flags, then lists the matching letters. A table shows no event,
// so the events (the bulk of the store) are not read for it.
func selectLetters(cmd *cobra.Command, run runFlags, f dlqFilterFlags, ids []string, output string) ([]deadletter.Letter, func(), error) {
	filter, store, rdb, err := openFiltered(run, f, ids, output)
	if err != nil {
		return nil, nil, err
	}
	filter.OmitEvent = !structured(output)
	letters, err := store.List(cmd.Context(), filter)
	if err != nil {
		rdb.Close()
		return nil, nil, err
	}
	return letters, func() { rdb.Close() }, nil
}

func newDLQListCommand() *cobra.Command {
	var f dlqFilterFlags
	var run runFlags
	var output string
	var quiet bool
	cmd := &cobra.Command{
		Use:   "list [letter-id...]",
		Short: "List dead letters, oldest first",
		RunE: func(cmd *cobra.Command, args []string) error {
			letters, done, err := selectLetters(cmd, run, f, args, output)
			if err != nil {
				return err
			}
			defer done()
			return printLetters(cmd.OutOrStdout(), output, quiet, letters)
		},
	}
	addFilterFlags(cmd, &f, 100)
	addOutputFlag(cmd, &output)
	addQuietFlag(cmd, &quiet)
	addRunFlags(cmd, &run)
	cmd.ValidArgsFunction = completeLetterIDs(&run)
	return cmd
}

func newDLQShowCommand() *cobra.Command {
	var output string
	var run runFlags
	cmd := &cobra.Command{
		Use:   "show letter-id",
		Short: "Show one dead letter with its original event and the subscriber's answer",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			store, rdb, err := openStore(run)
			if err != nil {
				return err
			}
			defer rdb.Close()
			l, err := store.Get(cmd.Context(), args[0])
			if err != nil {
				return err
			}
			if structured(output) {
				return writeDocument(cmd.OutOrStdout(), output, l)
			}
			return printLetterDetail(cmd.OutOrStdout(), l)
		},
	}
	addOutputFlag(cmd, &output)
	addRunFlags(cmd, &run)
	cmd.ValidArgsFunction = completeLetterIDs(&run)
	return cmd
}

func newDLQRedriveCommand() *cobra.Command {
	var f dlqFilterFlags
	var run runFlags
	var output, broker, serviceAccount string
	var quiet bool
	var rate float64
	var dryRun bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "redrive [letter-id...]",
		Short: "Publish dead letters' original events to the broker again",
		Long: `Publish each selected letter's original event (same id, so idempotent consumers stay
correct) to the broker, with the extension knfaasredrive set to the attempt count.

A letter is marked before it is sent and removed only when the broker answered 2xx. If a redrive
is interrupted, run the same command again: accepted letters are gone, and the letter that was in
flight is sent again once its lease (twice --timeout) has expired. Redrive stops at the first
letter the broker does not accept, leaving it and the rest stored.

--broker names the broker as namespace/name (default knfaas/default) on the running knfaas up.
A full ingress URL is accepted too. On a cluster (-n, --kubeconfig or --context), the Broker's
ingress is reached through the API server's service proxy, e.g.:

  kn faas dlq redrive -n knfaas --broker knfaas/default ...

When the Broker requires OIDC authentication (its status.address.audience is set), redrive
sends as the ServiceAccount --service-account of the platform's namespace, with a token the
Kubernetes API issues for the Broker's audience (you need create on serviceaccounts/token for
it); the Broker's EventPolicies decide whether that identity may send.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			if rate < 0 {
				return fmt.Errorf("--rate %v: want events per second above 0 (0: unlimited)", rate)
			}
			if timeout <= 0 {
				return fmt.Errorf("--timeout %v: want a positive duration", timeout)
			}
			if dryRun {
				letters, done, err := selectLetters(cmd, run, f, args, output)
				if err != nil {
					return err
				}
				defer done()
				return printLetters(cmd.OutOrStdout(), output, quiet, letters)
			}
			// Flags first, then the broker's address, then Redis.
			if err := checkOutput(output); err != nil {
				return err
			}
			if _, err := f.filter(args, time.Now()); err != nil {
				return err
			}
			target, err := run.brokerTargetAs(broker, serviceAccount)
			if err != nil {
				return err
			}
			pub, err := sink.NewWithTransport(target.url, timeout, target.transportOr(sink.Transport()))
			if err != nil {
				return fmt.Errorf("--broker: %w", err)
			}
			filter, store, rdb, err := openFiltered(run, f, args, output)
			if err != nil {
				return err
			}
			defer rdb.Close()
			return redrive(cmd, store, pub, filter, output, quiet, rate, 2*timeout)
		},
	}
	addFilterFlags(cmd, &f, 0)
	addOutputFlag(cmd, &output)
	addRunFlags(cmd, &run)
	cmd.ValidArgsFunction = completeLetterIDs(&run)
	addQuietFlag(cmd, &quiet)
	cmd.Flags().StringVar(&broker, "broker", "knfaas/default", "broker to publish to: namespace/name under the running knfaas up, or an ingress URL")
	cmd.Flags().StringVar(&serviceAccount, "service-account", brokerclass.RedriveServiceAccount, "on a cluster, the ServiceAccount of the platform's namespace to send as when the Broker requires OIDC authentication")
	_ = cmd.RegisterFlagCompletionFunc("broker", completeBrokerRefs(&run))
	cmd.Flags().Float64Var(&rate, "rate", 0, "send at most this many events per second (0: unlimited)")
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be redriven and send nothing")
	cmd.Flags().DurationVar(&timeout, "timeout", 30*time.Second, "how long to wait for the broker's answer to each event")
	return cmd
}

// redriveLine is one letter's outcome in -o json.
type redriveLine struct {
	Letter  string `json:"letter"`
	ID      string `json:"id"`
	Attempt int    `json:"attempt,omitempty"`
	Outcome string `json:"outcome"`
	Error   string `json:"error,omitempty"`
}

// redrive sends the letters matching filter, reading them page by page as it goes.
func redrive(cmd *cobra.Command, store *deadletter.Store, pub deadletter.Publisher, filter deadletter.Filter,
	output string, quiet bool, rate float64, lease time.Duration) error {
	out := cmd.OutOrStdout()
	var lines []redriveLine
	tw := tabwriter.NewWriter(out, 0, 4, 2, ' ', 0)
	if !structured(output) && !quiet {
		fmt.Fprintln(tw, "LETTER\tID\tATTEMPT\tOUTCOME\tERROR")
	}
	rep, err := deadletter.RedriveMatching(cmd.Context(), store, pub, filter, deadletter.RedriveOptions{
		Rate: rate, Lease: lease,
		OnResult: func(r deadletter.Result) {
			line := redriveLine{Letter: r.Letter.ID, ID: r.Letter.EventID, Attempt: r.Attempt, Outcome: string(r.Outcome)}
			if r.Err != nil {
				line.Error = r.Err.Error()
			}
			switch {
			case structured(output):
				lines = append(lines, line)
				return
			case quiet:
				if r.Outcome == deadletter.Accepted {
					fmt.Fprintln(out, line.Letter)
				}
				return
			}
			fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\n", line.Letter, line.ID, line.Attempt, line.Outcome, line.Error)
			tw.Flush() // show progress as it happens
		},
	})
	if structured(output) {
		if lines == nil {
			lines = []redriveLine{}
		}
		if jerr := writeDocument(out, output, lines); jerr != nil {
			return errors.Join(err, jerr)
		}
	} else if !quiet {
		tw.Flush()
		fmt.Fprintf(out, "accepted %d, failed %d, skipped %d\n", rep.Accepted, rep.Failed, rep.Skipped)
	}
	return err
}

// purgeBatch is how many letters one Drop script removes.
const purgeBatch = 500

func newDLQPurgeCommand() *cobra.Command {
	var f dlqFilterFlags
	var run runFlags
	var output string
	var dryRun, all, quiet bool
	cmd := &cobra.Command{
		Use:   "purge [letter-id...]",
		Short: "Delete dead letters",
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(args) == 0 && !all && f == (dlqFilterFlags{}) {
				return errors.New("purge needs letter ids, a filter, or --all")
			}
			if dryRun {
				letters, done, err := selectLetters(cmd, run, f, args, output)
				if err != nil {
					return err
				}
				defer done()
				return printLetters(cmd.OutOrStdout(), output, quiet, letters)
			}
			filter, store, rdb, err := openFiltered(run, f, args, output)
			if err != nil {
				return err
			}
			defer rdb.Close()
			// Drop in batches while scanning: the scan pages by score, so removals behind it
			// do not make it skip letters, and a large store is never held in memory.
			removed := 0
			batch := make([]string, 0, purgeBatch)
			flush := func() error {
				n, err := store.Drop(cmd.Context(), batch...)
				removed += n
				batch = batch[:0]
				if err != nil {
					return fmt.Errorf("purged %d letters, then: %w", removed, err)
				}
				return nil
			}
			err = store.Scan(cmd.Context(), filter, func(l deadletter.Letter) (bool, error) {
				batch = append(batch, l.ID)
				if len(batch) == purgeBatch {
					return true, flush()
				}
				return true, nil
			})
			if err == nil {
				err = flush()
			}
			if err != nil {
				return err
			}
			switch {
			case structured(output):
				return writeDocument(cmd.OutOrStdout(), output, map[string]int{"purged": removed})
			case quiet:
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "purged %d letters\n", removed)
			return nil
		},
	}
	addFilterFlags(cmd, &f, 0)
	addOutputFlag(cmd, &output)
	addRunFlags(cmd, &run)
	cmd.ValidArgsFunction = completeLetterIDs(&run)
	addQuietFlag(cmd, &quiet)
	cmd.Flags().BoolVar(&dryRun, "dry-run", false, "list what would be purged and delete nothing")
	cmd.Flags().BoolVar(&all, "all", false, "purge every letter when no id or filter is given")
	return cmd
}

// printLetters prints letters as a table, their ids (quiet), or a json or yaml list.
func printLetters(w io.Writer, output string, quiet bool, letters []deadletter.Letter) error {
	switch {
	case structured(output):
		if letters == nil {
			letters = []deadletter.Letter{}
		}
		return writeDocument(w, output, letters)
	case quiet:
		for _, l := range letters {
			fmt.Fprintln(w, l.ID)
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "LETTER\tRECEIVED\tREASON\tTYPE\tSOURCE\tID\tDEST\tCODE\tTRIGGER\tREDRIVES")
	for _, l := range letters {
		code := "-"
		if l.Code != 0 {
			code = strconv.Itoa(l.Code)
		}
		if !l.ErrorExtensions {
			code = "none" // posted without knativeerror* extensions
		}
		redrives := "0"
		if l.Redrive != nil {
			redrives = strconv.Itoa(l.Redrive.Attempts)
		}
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", l.ID, l.Received.Format(time.RFC3339), reason(l),
			l.EventType, l.Source, l.EventID, dash(l.Dest), code, dash(l.Trigger), redrives)
	}
	return tw.Flush()
}

func printLetterDetail(w io.Writer, l deadletter.Letter) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintf(tw, "Letter:\t%s\n", l.ID)
	fmt.Fprintf(tw, "Received:\t%s\n", l.Received.Format(time.RFC3339Nano))
	fmt.Fprintf(tw, "Reason:\t%s\n", reason(l))
	fmt.Fprintf(tw, "Type:\t%s\nSource:\t%s\nID:\t%s\nSubject:\t%s\n", l.EventType, l.Source, l.EventID, dash(l.Subject))
	if l.ErrorExtensions {
		fmt.Fprintf(tw, "Destination:\t%s\nCode:\t%d\n", dash(l.Dest), l.Code)
	} else {
		fmt.Fprintf(tw, "Error extensions:\tnone (the event was posted without knativeerror* extensions)\n")
	}
	fmt.Fprintf(tw, "Trigger:\t%s\n", dash(l.Trigger))
	if l.Redrive != nil {
		fmt.Fprintf(tw, "Redrive attempts:\t%d\n", l.Redrive.Attempts)
		if !l.Redrive.LeaseUntil.IsZero() {
			fmt.Fprintf(tw, "Redrive lease until:\t%s\n", l.Redrive.LeaseUntil.Format(time.RFC3339Nano))
		}
		if l.Redrive.LastError != "" {
			fmt.Fprintf(tw, "Last redrive error:\t%s\n", l.Redrive.LastError)
		}
	}
	if err := tw.Flush(); err != nil {
		return err
	}
	if l.ErrorData != "" {
		fmt.Fprintf(w, "Subscriber answered:\n%s\n", l.ErrorData)
	}
	if l.Detail != "" {
		fmt.Fprintf(w, "Detail:\n%s\n", l.Detail)
	}
	var pretty any
	if err := json.Unmarshal(l.Event, &pretty); err != nil {
		fmt.Fprintf(w, "Event:\n%s\n", l.Event)
		return nil
	}
	fmt.Fprintln(w, "Event:")
	return writeJSON(w, pretty)
}

// reason names why a letter is stored: "dead-letter" for one the dead-letter sink received.
func reason(l deadletter.Letter) string {
	if l.Reason == "" {
		return "dead-letter"
	}
	return l.Reason
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
