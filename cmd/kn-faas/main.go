// Command kn-faas is knfaas as a kn plugin: installed on PATH as kn-faas, it runs as `kn faas …`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/runtime/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := newRootCommand().ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kn faas:", err)
		os.Exit(cli.ExitCode(err))
	}
}

// newRootCommand is knfaas' command tree named for kn. cobra names a command after the first
// word of Use ("kn"); the display name makes usage lines read "kn faas dlq …", as kn users
// type them.
func newRootCommand() *cobra.Command {
	root := cli.NewRootCommand("kn faas")
	if root.Annotations == nil {
		root.Annotations = map[string]string{}
	}
	root.Annotations[cobra.CommandDisplayNameAnnotation] = "kn faas"
	return root
}
