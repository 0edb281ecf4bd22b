package cli

import (
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
		quiet  bool
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
			return printInstances(cmd.OutOrStdout(), list, output, quiet)
		},
	}
	cmd.Flags().Int64Var(&limit, "limit", 50, "at most this many instances")
	addOutputFlag(cmd, &output)
	addQuietFlag(cmd, &quiet)
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
	cmd.ValidArgsFunction = completeInstanceIDs(&run)
	return cmd
}

// instanceView is a process instance as -o json and -o yaml print it.
type instanceView struct {
	ID       string         `json:"id"`
	Process  string         `json:"process"`
	Status   string         `json:"status"`
	Step     string         `json:"step,omitempty"`
	Version  int64          `json:"version"`
	Created  string         `json:"created,omitempty"`
	Updated  string         `json:"updated,omitempty"`
	Deadline string         `json:"deadline,omitempty"`
	Timeline []timelineView `json:"timeline,omitempty"`
}

// timelineView is one timeline entry, with its times in RFC 3339.
type timelineView struct {
	Seq    int64  `json:"seq"`
	At     string `json:"at"`
	Kind   string `json:"kind"`
	ID     string `json:"id,omitempty"`
	Type   string `json:"type,omitempty"`
	Source string `json:"source,omitempty"`
	Step   string `json:"step,omitempty"`
	Actor  string `json:"actor,omitempty"`
	Note   string `json:"note,omitempty"`
	Due    string `json:"due,omitempty"`
	Data   string `json:"data,omitempty"`
}

func viewInstance(in *process.Instance) instanceView {
	v := instanceView{ID: in.ID, Process: in.Process, Status: in.Status, Step: in.Step, Version: in.Version,
		Created: rfc3339(in.Created), Updated: rfc3339(in.Updated), Deadline: in.Deadline}
	for _, e := range in.Timeline {
		t := timelineView{Seq: e.Seq, At: rfc3339(time.UnixMilli(e.At)), Kind: e.Kind, ID: e.ID, Type: e.Type,
			Source: e.Source, Step: e.Step, Actor: e.Actor, Note: e.Note, Data: e.Data}
		if e.Due != 0 {
			t.Due = rfc3339(time.UnixMilli(e.Due))
		}
		v.Timeline = append(v.Timeline, t)
	}
	return v
}

// rfc3339 is t in UTC with milliseconds, or "" for the zero time.
func rfc3339(t time.Time) string {
	if t.IsZero() {
		return ""
	}
	return t.UTC().Format("2006-01-02T15:04:05.000Z07:00")
}

func printInstances(w io.Writer, list []process.Instance, output string, quiet bool) error {
	switch {
	case structured(output):
		views := make([]instanceView, 0, len(list))
		for i := range list {
			views = append(views, viewInstance(&list[i]))
		}
		return writeDocument(w, output, views)
	case quiet:
		for _, in := range list {
			fmt.Fprintln(w, in.ID)
		}
		return nil
	}
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "INSTANCE\tPROCESS\tSTATUS\tVERSION\tUPDATED")
	for _, in := range list {
		fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\n", in.ID, in.Process, in.Status, in.Version, in.Updated.UTC().Format(time.RFC3339))
	}
	return tw.Flush()
}

func printInstance(w io.Writer, in *process.Instance, output string) error {
	if structured(output) {
		return writeDocument(w, output, viewInstance(in))
	}
	fmt.Fprintf(w, "Instance: %s\nProcess:  %s\nStatus:   %s\n", in.ID, in.Process, in.Status)
	if in.Step != "" {
		fmt.Fprintf(w, "Step:     %s\n", in.Step)
	}
	if in.Deadline != "" {
		fmt.Fprintf(w, "Deadline: %s\n", in.Deadline)
	}
	fmt.Fprintf(w, "Version:  %d\nCreated:  %s\nUpdated:  %s\n\nTimeline:\n", in.Version, in.Created.UTC().Format(time.RFC3339), in.Updated.UTC().Format(time.RFC3339))
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
