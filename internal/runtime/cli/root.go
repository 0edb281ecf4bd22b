// Package cli holds the knfaas command tree: up, send, verify, dlq, events, process, notify.
package cli

import (
	"github.com/spf13/cobra"
)

// NewRootCommand returns the knfaas command with every subcommand attached. name is the name
// shown in usage lines: "knfaas", or "kn faas" when run as a kn plugin.
func NewRootCommand(name string) *cobra.Command {
	root := &cobra.Command{
		Use:           name,
		Short:         "A portable functions platform on Knative and CloudEvents",
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.AddCommand(newUpCommand())
	root.AddCommand(newSendCommand())
	root.AddCommand(newDLQCommand())
	root.AddCommand(newProcessCommand())
	root.AddCommand(newVerifyCommand())
	root.AddCommand(newEventsCommand())
	root.AddCommand(newNotifyCommand())
	return root
}
