// Package cli holds the knfaas command tree: up, send, verify, dlq, events, process, notify, new, version.
package cli

import (
	"runtime/debug"

	"github.com/spf13/cobra"
)

// NewRootCommand returns the knfaas command with every subcommand attached. name is the name
// shown in usage lines: "knfaas", or "kn faas" when run as a kn plugin.
func NewRootCommand(name string) *cobra.Command {
	root := &cobra.Command{
		Use:           name,
		Short:         "A portable functions platform on Knative and CloudEvents",
		Long:          "A portable functions platform on Knative and CloudEvents.\n\n" + exitCodesHelp,
		Version:       readVersion(debug.ReadBuildInfo()).short(),
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.SetVersionTemplate(name + " {{.Version}}\n")
	root.AddCommand(newUpCommand())
	root.AddCommand(newSendCommand())
	root.AddCommand(newDLQCommand())
	root.AddCommand(newProcessCommand())
	root.AddCommand(newVerifyCommand())
	root.AddCommand(newEventsCommand())
	root.AddCommand(newNotifyCommand())
	root.AddCommand(newVersionCommand())
	root.AddCommand(newNewCommand())
	root.AddCommand(newTraceCommand())
	handleUsage(root)
	return root
}
