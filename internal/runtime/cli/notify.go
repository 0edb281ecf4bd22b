package cli

import (
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/notify"
)

const notifyLong = `Inspect and steer the outbound webhooks of the notify function: endpoints with their
circuit, disabled mark and delivery counters, a message's state and attempts per endpoint, a
retry of one (message, endpoint) pair, re-enabling an endpoint that answered 410 Gone; and,
through the function's endpoint API, creating, updating, disabling, enabling and rotating
endpoints and replaying a time range to one.

endpoints, attempts, retry and enable talk to Redis directly, like dlq: to REDIS_URL when it is
set (with REDIS_PASSWORD / REDIS_CA_FILE), else to the Redis of the running knfaas up (--addr,
--state-dir pick which one). endpoints create|update|disable|enable|rotate and replay call the
endpoint API of the notify function: the one of the running knfaas up (with the development
token it generated), or --api with --token (or KNFAAS_NOTIFY_TOKEN).

A message is named by its webhook-id (msg_…) or by the event's source and id
(--source/--id), from which the webhook-id is derived.`

// newNotifyCommand returns `notify` with endpoints (and its subcommands), attempts, retry,
// enable and replay.
func newNotifyCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "notify",
		Short: "Inspect outbound webhooks: endpoints, circuits, attempts; retry and re-enable",
		Long:  notifyLong,
	}
	cmd.AddCommand(newNotifyEndpointsCommand(), newNotifyAttemptsCommand(), newNotifyRetryCommand(), newNotifyEnableCommand(), newNotifyReplayCommand())
	return cmd
}

func openNotify(run runFlags) (*notify.Store, func(), error) {
	rdb, err := run.openRedis("notify's endpoints and messages")
	if err != nil {
		return nil, nil, err
	}
	return notify.NewStore(rdb, 0), func() { rdb.Close() }, nil
}

func newNotifyEndpointsCommand() *cobra.Command {
	var (
		output string
		run    runFlags
	)
	cmd := &cobra.Command{
		Use:   "endpoints",
		Short: "List endpoints with their circuit (closed, open until, half-open), disabled mark and counters; create, update, disable, enable, rotate",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			store, done, err := openNotify(run)
			if err != nil {
				return err
			}
			defer done()
			eps, err := store.Endpoints(cmd.Context())
			if err != nil {
				return err
			}
			return printNotifyEndpoints(cmd.OutOrStdout(), output, eps)
		},
	}
	addOutputFlag(cmd, &output)
	addRunFlags(cmd, &run)
	cmd.AddCommand(newNotifyEndpointCreateCommand(), newNotifyEndpointUpdateCommand(), newNotifyEndpointPauseCommand(true),
		newNotifyEndpointPauseCommand(false), newNotifyEndpointRotateCommand())
	return cmd
}

// printNotifyEndpoints writes the endpoints Redis knows with their circuit, disabled mark and
// counters.
func printNotifyEndpoints(w io.Writer, output string, eps []notify.EndpointStatus) error {
	if structured(output) {
		if eps == nil {
			eps = []notify.EndpointStatus{}
		}
		return writeDocument(w, output, eps)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "ENDPOINT\tSOURCE\tCIRCUIT\tOPEN UNTIL\tFAILURES IN A ROW\tDELIVERED\tRETRIED\tDEAD\tDEFERRED\tDISABLED")
	for _, e := range eps {
		until := "-"
		if !e.Circuit.Until.IsZero() {
			until = e.Circuit.Until.UTC().Format(time.RFC3339)
		}
		disabled := "-"
		switch {
		case e.Paused:
			disabled = "disabled through the API: messages wait"
		case e.Disabled != "":
			disabled = e.Disabled
		}
		c := e.Counters
		fmt.Fprintf(tw, "%s\t%s\t%s\t%s\t%d\t%d\t%d\t%d\t%d\t%s\n", e.Name, e.Source, e.Circuit.State, until, e.Circuit.ConsecutiveFailures,
			c[notify.OutcomeDelivered], c[notify.OutcomeRetry], c[notify.OutcomeDead]+c[notify.OutcomeGone], c[notify.CounterDeferred], disabled)
	}
	return tw.Flush()
}

// messageFlags name a message by webhook-id or by the event's source and id.
type messageFlags struct{ source, id string }

func (m *messageFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&m.source, "source", "", "the event's source (with --id, instead of a webhook-id)")
	cmd.Flags().StringVar(&m.id, "id", "", "the event's id (with --source)")
}

// message returns the webhook-id from args[0] or the flags, and the remaining args.
func (m *messageFlags) message(args []string) (string, []string, error) {
	switch {
	case m.source != "" || m.id != "":
		if m.source == "" || m.id == "" {
			return "", nil, errors.New("--source and --id go together")
		}
		return notify.MessageID(m.source, m.id), args, nil
	case len(args) > 0 && strings.HasPrefix(args[0], "msg_"):
		return args[0], args[1:], nil
	}
	return "", nil, errors.New("name the message by its webhook-id (msg_…) or by --source and --id")
}

func newNotifyAttemptsCommand() *cobra.Command {
	var (
		output string
		m      messageFlags
		run    runFlags
	)
	cmd := &cobra.Command{
		Use:   "attempts [msg_…] [endpoint]",
		Short: "Show a message's state at each endpoint and every attempt (time, status, latency, response, circuit)",
		Args:  cobra.MaximumNArgs(2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			msg, rest, err := m.message(args)
			if err != nil {
				return err
			}
			store, done, err := openNotify(run)
			if err != nil {
				return err
			}
			defer done()
			states, err := store.States(cmd.Context(), msg)
			if err != nil {
				return err
			}
			if len(states) == 0 {
				return fmt.Errorf("no message %s (never enqueued, or older than NOTIFY_RETENTION)", msg)
			}
			names := slices.Sorted(maps.Keys(states))
			if len(rest) == 1 {
				if _, ok := states[rest[0]]; !ok {
					return fmt.Errorf("message %s was never for endpoint %q (endpoints: %s)", msg, rest[0], strings.Join(names, ", "))
				}
				names = rest
			}
			type endpointAttempts struct {
				Endpoint string           `json:"endpoint"`
				State    string           `json:"state"`
				Attempts []notify.Attempt `json:"attempts"`
			}
			var all []endpointAttempts
			for _, name := range names {
				a, err := store.Attempts(cmd.Context(), msg, name)
				if err != nil {
					return err
				}
				all = append(all, endpointAttempts{Endpoint: name, State: states[name], Attempts: a})
			}
			if structured(output) {
				return writeDocument(cmd.OutOrStdout(), output, map[string]any{"message": msg, "endpoints": all})
			}
			w := cmd.OutOrStdout()
			fmt.Fprintf(w, "Message: %s\n", msg)
			for _, e := range all {
				fmt.Fprintf(w, "\n%s: %s\n", e.Endpoint, e.State)
				printAttempts(w, e.Attempts)
			}
			return nil
		},
	}
	m.add(cmd)
	addOutputFlag(cmd, &output)
	addRunFlags(cmd, &run)
	return cmd
}

func printAttempts(w io.Writer, attempts []notify.Attempt) {
	if len(attempts) == 0 {
		fmt.Fprintln(w, "  no attempt yet")
		return
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  #\tAT\tSTATUS\tLATENCY\tCIRCUIT\tOUTCOME\tNEXT\tRESPONSE")
	for _, a := range attempts {
		status := "-"
		if a.Status != 0 {
			status = fmt.Sprint(a.Status)
		}
		next := "-"
		if !a.Next.IsZero() {
			next = a.Next.UTC().Format(time.RFC3339)
		}
		resp := a.Response
		if a.Error != "" {
			resp = a.Error
		}
		if len(resp) > 80 {
			resp = resp[:77] + "..."
		}
		fmt.Fprintf(tw, "  %d\t%s\t%s\t%.1fms\t%s\t%s\t%s\t%s\n", a.Number, a.At.UTC().Format(time.RFC3339), status,
			a.Latency, orDash(a.Breaker), a.Outcome, next, strings.ReplaceAll(resp, "\n", " "))
	}
	_ = tw.Flush()
}

func newNotifyRetryCommand() *cobra.Command {
	var (
		m   messageFlags
		run runFlags
	)
	cmd := &cobra.Command{
		Use:   "retry [msg_…] <endpoint>",
		Short: "Attempt a pending or dead message at one endpoint now (never one it already got)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			msg, rest, err := m.message(args)
			if err != nil {
				return err
			}
			if len(rest) != 1 {
				return errors.New("name the endpoint")
			}
			store, done, err := openNotify(run)
			if err != nil {
				return err
			}
			defer done()
			scheduled, err := store.Retry(cmd.Context(), msg, rest[0], time.Now())
			if err != nil {
				return err
			}
			if !scheduled {
				fmt.Fprintf(cmd.OutOrStdout(), "%s was already delivered to %s: nothing to do\n", msg, rest[0])
				return nil
			}
			fmt.Fprintf(cmd.OutOrStdout(), "%s scheduled at %s now (a running notify picks it up within NOTIFY_POLL; a scaled-to-zero one at the next timer tick)\n", msg, rest[0])
			return nil
		},
	}
	m.add(cmd)
	addRunFlags(cmd, &run)
	return cmd
}

func newNotifyEnableCommand() *cobra.Command {
	var run runFlags
	cmd := &cobra.Command{
		Use:   "enable <endpoint>",
		Short: "Clear an endpoint's disabled mark (set when it answered 410 Gone); redrive its dead letters after",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			store, done, err := openNotify(run)
			if err != nil {
				return err
			}
			defer done()
			if err := store.Enable(cmd.Context(), args[0]); err != nil {
				return err
			}
			fmt.Fprintf(cmd.OutOrStdout(), "endpoint %s enabled; its dead letters: knfaas dlq list --dest <its URL>\n", args[0])
			return nil
		},
	}
	addRunFlags(cmd, &run)
	return cmd
}
