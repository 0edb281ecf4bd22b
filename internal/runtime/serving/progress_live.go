package serving

import (
	"fmt"
	"io"
	"strings"
	"sync"
	"time"
)

// LiveProgress returns a Builder.Progress for a terminal: a block of lines, one for the shared
// dependencies and one per function, redrawn in place (ANSI cursor-up and erase-line) at every
// step, so each function's line goes from "building" to "built in 1.2s". Use it only when w is
// a terminal; PrintProgress writes plain lines for logs and pipes.
func LiveProgress(w io.Writer) func(BuildProgress) {
	lp := &liveProgress{w: w, state: map[string]string{}}
	return lp.update
}

type liveProgress struct {
	mu    sync.Mutex
	w     io.Writer
	deps  string
	order []string          // import paths in the order they started
	state map[string]string // import path -> its status text
	drawn int               // lines of the block on screen
}

func (lp *liveProgress) update(p BuildProgress) {
	lp.mu.Lock()
	defer lp.mu.Unlock()
	switch p.Step {
	case StepDepsStart:
		lp.deps = fmt.Sprintf("building %d functions: compiling their dependencies", p.Functions)
	case StepDepsCompiling:
		lp.deps = fmt.Sprintf("building %d functions: compiling their dependencies, %d packages so far (%s)", p.Functions, p.Packages, p.Elapsed.Round(time.Second))
	case StepDepsDone:
		if p.Err != nil {
			lp.deps = fmt.Sprintf("compiling dependencies failed after %s", p.Elapsed.Round(time.Millisecond))
		} else {
			lp.deps = fmt.Sprintf("compiled dependencies (%d packages) in %s", p.Packages, p.Elapsed.Round(time.Millisecond))
		}
	case StepStart:
		if _, ok := lp.state[p.ImportPath]; !ok {
			lp.order = append(lp.order, p.ImportPath)
		}
		lp.state[p.ImportPath] = "building"
	case StepDone:
		if _, ok := lp.state[p.ImportPath]; !ok {
			lp.order = append(lp.order, p.ImportPath)
		}
		if p.Err != nil {
			lp.state[p.ImportPath] = fmt.Sprintf("failed after %s", p.Elapsed.Round(time.Millisecond))
		} else {
			lp.state[p.ImportPath] = fmt.Sprintf("built in %s", p.Elapsed.Round(time.Millisecond))
		}
	}
	lp.redraw()
}

// redraw moves the cursor to the top of the block and writes every line again, erasing each
// first; the block only grows, so no line is left behind.
func (lp *liveProgress) redraw() {
	var b strings.Builder
	if lp.drawn > 0 {
		fmt.Fprintf(&b, "\x1b[%dA", lp.drawn)
	}
	lines := 0
	if lp.deps != "" {
		fmt.Fprintf(&b, "\r\x1b[2K%s\n", lp.deps)
		lines++
	}
	width := 0
	for _, ip := range lp.order {
		width = max(width, len(ip))
	}
	for _, ip := range lp.order {
		fmt.Fprintf(&b, "\r\x1b[2K  %-*s  %s\n", width, ip, lp.state[ip])
		lines++
	}
	lp.drawn = lines
	_, _ = io.WriteString(lp.w, b.String())
}
