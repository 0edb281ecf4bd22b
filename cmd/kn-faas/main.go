// Command kn-faas is knfaas as a kn plugin: installed on PATH as kn-faas, it runs as `kn faas …`.
package main

import (
	"context"
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/knfaas/knfaas/internal/cli"
)

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := cli.NewRootCommand("kn faas").ExecuteContext(ctx); err != nil {
		fmt.Fprintln(os.Stderr, "kn faas:", err)
		os.Exit(1)
	}
}
