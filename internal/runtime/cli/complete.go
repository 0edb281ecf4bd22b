package cli

import (
	"context"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// completionTimeout bounds the Redis reads of id completion, so a shell never hangs on it.
const completionTimeout = 3 * time.Second

// completionLimit is how many ids a completion offers.
const completionLimit = 200

// completeLetterIDs completes dead-letter ids (oldest first, described by event type and
// answer) from the Redis the command would read; any argument count.
func completeLetterIDs(run *runFlags) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		rdb, err := run.openRedis("dead letters")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		letters, err := deadletter.NewStore(rdb, deadletter.Options{}).List(ctx, deadletter.Filter{Limit: completionLimit, OmitEvent: true})
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var ids []cobra.Completion
		for _, l := range letters {
			if !slices.Contains(args, l.ID) {
				ids = append(ids, cobra.CompletionWithDesc(l.ID, fmt.Sprintf("%s %d", l.EventType, l.Code)))
			}
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeInstanceIDs completes the first argument with process instance ids, most recently
// updated first.
func completeInstanceIDs(run *runFlags) cobra.CompletionFunc {
	return func(cmd *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		rdb, err := run.openRedis("process instances")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		list, err := process.ListInstances(ctx, rdb, completionLimit)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var ids []cobra.Completion
		for _, in := range list {
			ids = append(ids, cobra.CompletionWithDesc(in.ID, in.Process+" "+in.Status))
		}
		return ids, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeAddrs completes --addr with the addresses of the live runs of knfaas up recorded in
// the state dir, described by pid and start time.
func completeAddrs(run *runFlags) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		dir, err := run.runsDir()
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		runs, err := embedded.FindRuns(dir)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		var addrs []cobra.Completion
		for _, r := range runs {
			if r.Live && r.Endpoints != nil {
				addrs = append(addrs, cobra.CompletionWithDesc(r.Endpoints.Addr,
					fmt.Sprintf("pid %d, started %s", r.Endpoints.PID, r.Endpoints.Started.Format(time.RFC3339))))
			}
		}
		return addrs, cobra.ShellCompDirectiveNoFileComp
	}
}

// runServices lists the Knative Services (namespace/name) of the running knfaas up: every
// Service it runs has a log file in its run directory.
func runServices(run *runFlags) ([]string, error) {
	if run.cluster.onCluster() {
		return nil, fmt.Errorf("services are completed from a knfaas up, not a cluster")
	}
	ep, err := run.discover()
	if err != nil {
		return nil, err
	}
	if ep.Logs == "" {
		return nil, fmt.Errorf("the knfaas up with pid %d keeps no service logs", ep.PID)
	}
	return embedded.ServiceLogs(ep.Logs)
}

// completeServiceRefs completes a namespace/name of a Service of the running knfaas up (a
// --service flag).
func completeServiceRefs(run *runFlags) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		services, err := runServices(run)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		return services, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeLogServices completes the service argument of knfaas logs: namespace/name of every
// Service of the running knfaas up, and the bare name of those whose name is unique.
func completeLogServices(run *runFlags) cobra.CompletionFunc {
	return func(_ *cobra.Command, args []string, _ string) ([]cobra.Completion, cobra.ShellCompDirective) {
		if len(args) > 0 {
			return nil, cobra.ShellCompDirectiveNoFileComp
		}
		services, err := runServices(run)
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		names := map[string]int{}
		for _, s := range services {
			_, name, _ := strings.Cut(s, "/")
			names[name]++
		}
		out := append([]cobra.Completion(nil), services...)
		for _, s := range services {
			if _, name, _ := strings.Cut(s, "/"); names[name] == 1 {
				out = append(out, cobra.CompletionWithDesc(name, s))
			}
		}
		return out, cobra.ShellCompDirectiveNoFileComp
	}
}

// completeBrokerRefs completes a --broker namespace/name with the Brokers that have a stream in
// the Redis the command would read (a Broker's stream exists once its Triggers or an event
// created it).
func completeBrokerRefs(run *runFlags) cobra.CompletionFunc {
	return func(*cobra.Command, []string, string) ([]cobra.Completion, cobra.ShellCompDirective) {
		rdb, err := run.openRedis("brokers")
		if err != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		defer rdb.Close()
		ctx, cancel := context.WithTimeout(context.Background(), completionTimeout)
		defer cancel()
		// StreamKey("", "") is the streams' prefix followed by the "/" between namespace and name.
		prefix := strings.TrimSuffix(broker.StreamKey("", ""), "/")
		var refs []cobra.Completion
		iter := rdb.Scan(ctx, 0, prefix+"*", 100).Iterator()
		for iter.Next(ctx) && len(refs) < completionLimit {
			if ref := strings.TrimPrefix(iter.Val(), prefix); strings.Count(ref, "/") == 1 {
				refs = append(refs, ref)
			}
		}
		if iter.Err() != nil {
			return nil, cobra.ShellCompDirectiveNoFileComp | cobra.ShellCompDirectiveError
		}
		slices.Sort(refs)
		return refs, cobra.ShellCompDirectiveNoFileComp
	}
}
