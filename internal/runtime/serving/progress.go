package serving

import (
	"fmt"
	"io"
	"time"
)

// PrintProgress returns a Builder.Progress that writes one line per step to w: a function's
// start and end with its time, the shared compile's start, its count every few seconds, and
// its end. Lines, not a redrawn status, so that logs and terminals read the same.
func PrintProgress(w io.Writer) func(BuildProgress) {
	return func(p BuildProgress) {
		switch p.Step {
		case StepDepsStart:
			fmt.Fprintf(w, "building %d functions: compiling their dependencies\n", p.Functions)
		case StepDepsCompiling:
			fmt.Fprintf(w, "  compiling dependencies: %d packages so far (%s)\n", p.Packages, p.Elapsed.Round(time.Second))
		case StepDepsDone:
			if p.Err != nil {
				fmt.Fprintf(w, "compiling dependencies failed after %s\n", p.Elapsed.Round(time.Millisecond))
				return
			}
			fmt.Fprintf(w, "compiled dependencies (%d packages) in %s\n", p.Packages, p.Elapsed.Round(time.Millisecond))
		case StepStart:
			fmt.Fprintf(w, "  building %s\n", p.ImportPath)
		case StepDone:
			if p.Err != nil {
				fmt.Fprintf(w, "  failed %s after %s\n", p.ImportPath, p.Elapsed.Round(time.Millisecond))
				return
			}
			fmt.Fprintf(w, "  built %s in %s\n", p.ImportPath, p.Elapsed.Round(time.Millisecond))
		}
	}
}
