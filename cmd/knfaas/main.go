// Command knfaas runs the platform locally (up) and operates it (send, verify, dlq, …).
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/knfaas/knfaas/internal/runtime/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cli.NewRootCommand("knfaas").ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "knfaas:", err)
		os.Exit(cli.ExitCode(err))
	}
}
