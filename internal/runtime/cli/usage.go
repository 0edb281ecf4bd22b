package cli

import (
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"
)

// Exit codes of knfaas (and kn faas).
const (
	// ExitOK: the command did what it was asked.
	ExitOK = 0
	// ExitFailure: the command ran and failed (a refused manifest, Redis or the broker
	// unreachable, no running knfaas up, a failed redrive, verify found problems).
	ExitFailure = 1
	// ExitUsage: the command line cannot run: an unknown command or flag, a flag value that
	// does not parse, wrong arguments, a required flag missing. Nothing was done.
	ExitUsage = 2
)

const exitCodesHelp = `Exit codes: 0 done; 1 the command ran and failed (a refused manifest, Redis or the broker
unreachable, no running knfaas up, verify found problems); 2 the command line cannot run (an
unknown command or flag, a flag value that does not parse, wrong arguments), nothing was done.`

// UsageError is a command line that cannot run; knfaas exits ExitUsage for it.
type UsageError struct{ Err error }

func (e *UsageError) Error() string { return e.Err.Error() }
func (e *UsageError) Unwrap() error { return e.Err }

// cobraUsagePrefixes start the errors cobra returns for a command line it refuses without a
// hook to wrap them: an unknown top-level command, missing required flags, flag groups.
var cobraUsagePrefixes = []string{"unknown command ", "required flag(s) ", "if any flags in the group ", "at least one of the flags in the group "}

// ExitCode is the process exit code for the error Execute returned.
func ExitCode(err error) int {
	if err == nil {
		return ExitOK
	}
	if _, ok := errors.AsType[*UsageError](err); ok {
		return ExitUsage
	}
	for _, p := range cobraUsagePrefixes {
		if strings.HasPrefix(err.Error(), p) {
			return ExitUsage
		}
	}
	return ExitFailure
}

// handleUsage makes every refusal of the command line under root a UsageError, with "did you
// mean" suggestions for a mistyped flag or subcommand.
func handleUsage(root *cobra.Command) {
	root.SetFlagErrorFunc(flagError)
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		c.SuggestionsMinimumDistance = 2
		if c.HasSubCommands() && !c.Runnable() {
			// Without a Run, cobra prints the help and succeeds for `knfaas dlq lst`.
			c.Args = cobra.ArbitraryArgs
			c.RunE = unknownSubcommand
		} else if args := c.Args; args != nil {
			c.Args = func(c *cobra.Command, a []string) error {
				if err := args(c, a); err != nil {
					return &UsageError{Err: err}
				}
				return nil
			}
		}
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
}

// unknownSubcommand runs for a command group: its help without arguments, otherwise an
// unknown command error naming the closest subcommands.
func unknownSubcommand(c *cobra.Command, args []string) error {
	if len(args) == 0 {
		return c.Help()
	}
	msg := fmt.Sprintf("unknown command %q for %q", args[0], c.CommandPath())
	if s := c.SuggestionsFor(args[0]); len(s) > 0 {
		msg += "; did you mean " + orList(s) + "?"
	}
	return &UsageError{Err: errors.New(msg + " (see " + c.CommandPath() + " --help)")}
}

// flagError adds the closest flag names to an unknown flag error.
func flagError(c *cobra.Command, err error) error {
	msg := err.Error()
	if name, ok := strings.CutPrefix(msg, "unknown flag: --"); ok {
		if s := closeFlags(c.Flags(), name); len(s) > 0 {
			msg += "; did you mean " + orList(s) + "?"
		}
		return &UsageError{Err: errors.New(msg)}
	}
	return &UsageError{Err: err}
}

// closeFlags lists the flags whose names start with name or, when none does, are within two
// edits of it.
func closeFlags(flags *pflag.FlagSet, name string) []string {
	var prefixed, close []string
	flags.VisitAll(func(f *pflag.Flag) {
		switch {
		case f.Hidden:
		case len(name) >= 2 && strings.HasPrefix(f.Name, name):
			prefixed = append(prefixed, "--"+f.Name)
		case levenshtein(name, f.Name) <= 2:
			close = append(close, "--"+f.Name)
		}
	})
	if len(prefixed) > 0 {
		close = prefixed
	}
	sort.Strings(close)
	return close
}

func orList(s []string) string {
	if len(s) == 1 {
		return s[0]
	}
	return strings.Join(s[:len(s)-1], ", ") + " or " + s[len(s)-1]
}

// levenshtein is the edit distance between a and b.
func levenshtein(a, b string) int {
	prev := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur := make([]int, len(b)+1)
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev = cur
	}
	return prev[len(b)]
}
