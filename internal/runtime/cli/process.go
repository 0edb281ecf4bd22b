package cli

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/process"
)

const processLong = `Inspect business process instances run by the process function.

The commands read Redis directly: the Redis of the running knfaas up (found in its state
directory; --addr or KNFAAS_ADDR pick one of several), or REDIS_URL when it is set (with
REDIS_PASSWORD / REDIS_CA_FILE when needed). On a cluster, forward the Redis Service first:

  kubectl -n knfaas port-forward svc/redis 6379:6379 &
  export REDIS_URL=redis://127.0.0.1:6379/0`

// newProcessCommand returns `process` with list and show.
func newProcessCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "process",
		Short: "Inspect business process instances and their timelines",
		Long:  processLong,
	}
	cmd.AddCommand(newProcessListCommand(), newProcessShowCommand())
	return cmd
}

func newProcessListCommand() *cobra.Command {
	var (
		limit  int64
		output string
		run    runFlags
	)
	cmd := &cobra.Command{
		Use:   "list",
		Short: "List instances, most recently updated first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			if limit < 1 {
				return fmt.Errorf("--limit %d: want at least 1", limit)
			}
			rdb, err := run.openRedis("process instances")
			if err != nil {
				return err
			}
			defer rdb.Close()
			list, err := process.ListInstances(cmd.Context(), rdb, limit)
			if err != nil {
				return err
			}
			return printInstances(cmd.OutOrStdout(), list, output)
		},
	}
	cmd.Flags().Int64Var(&limit, "limit", 50, "at most this many instances")
	addOutputFlag(cmd, &output)
	addRunFlags(cmd, &run)
	return cmd
}

func newProcessShowCommand() *cobra.Command {
	var output string
	var run runFlags
	cmd := &cobra.Command{
		Use:   "show <instance-id>",
		Short: "Show an instance's state and timeline: events in, commands out, timers, state changes",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			rdb, err := run.openRedis("process instances")
			if err != nil {
				return err
			}
			defer rdb.Close()
			in, err := process.ReadInstance(cmd.Context(), rdb, args[0])
			if errors.Is(err, process.ErrNotFound) {
				return fmt.Errorf("no process instance %q (finished instances are kept for the retention period)", args[0])
			}
			if err != nil {
				return err
			}
			return printInstance(cmd.OutOrStdout(), in, output)
		},
	}
	addOutputFlag(cmd, &output)
	addRunFlags(cmd, &run)
	return cmd
}

func printInstances(w io.Writer, list []process.Instance, output string) error {
	if output == "json" {
		return json.NewEncoder(w).Encode(list)
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tPROCESS\tSTATUS\tVERSION\tUPDATED")
	for _, in := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", in.ID, in.Process, in.Status, in.Version, in.Updated.Format(time.RFC3339))
	}
	return tw.Flush()
}

func printInstance(w io.Writer, in *process.Instance, output string) error {
	if output == "json" {
		return json.NewEncoder(w).Encode(in)
	}
	fmt.Fprintf(w, "Instance: %s\nProcess:  %s\nStatus:   %s\n", in.ID, in.Process, in.Status)
	if in.Step != "" {
		fmt.Fprintf(w, "Step:     %s\n", in.Step)
	}
	if in.Deadline != "" {
		fmt.Fprintf(w, "Deadline: %s\n", in.Deadline)
	}
	fmt.Fprintf(w, "Version:  %d\nCreated:  %s\nUpdated:  %s\n\nTimeline:\n", in.Version, in.Created.Format(time.RFC3339), in.Updated.Format(time.RFC3339))
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "V\tAT\tKIND\tTYPE\tID\tSTEP\tACTOR\tNOTE")
	for _, e := range in.Timeline {
		note := e.Note
		if e.Due != 0 {
			note = fmt.Sprintf("%s, due %s", note, time.UnixMilli(e.Due).UTC().Format(time.RFC3339))
		}
		fmt.Fprintf(tw, "%d\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n", e.Seq, time.UnixMilli(e.At).UTC().Format("2006-01-02T15:04:05.000Z"),
			e.Kind, orDash(e.Type), orDash(e.ID), orDash(e.Step), orDash(e.Actor), note)
	}
	return tw.Flush()
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}
