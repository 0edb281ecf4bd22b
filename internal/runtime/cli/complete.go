package cli

import (
	"context"
	"fmt"
	"slices"
	"time"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/process"
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
