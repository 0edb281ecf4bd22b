package serving

import (
	"errors"
	"strconv"
	"strings"
	"testing"
	"time"
)

// fakeTerminal keeps a screen of lines and interprets what LiveProgress writes: text, \n, \r,
// ESC[nA (cursor up) and ESC[2K (erase line). Anything else fails the test.
type fakeTerminal struct {
	t      *testing.T
	screen []string
	row    int
	col    int
	raw    strings.Builder
}

func (ft *fakeTerminal) Write(p []byte) (int, error) {
	ft.raw.Write(p)
	s := string(p)
	for len(s) > 0 {
		switch {
		case strings.HasPrefix(s, "\x1b["):
			end := strings.IndexAny(s[2:], "ABCDHJKm")
			if end < 0 {
				ft.t.Fatalf("unterminated escape %q", s)
			}
			arg, cmd := s[2:2+end], s[2+end]
			switch cmd {
			case 'A':
				n, err := strconv.Atoi(arg)
				if err != nil || n > ft.row {
					ft.t.Fatalf("cursor up %q from row %d", arg, ft.row)
				}
				ft.row -= n
			case 'K':
				if arg != "2" {
					ft.t.Fatalf("erase %q", arg)
				}
				ft.line()
				ft.screen[ft.row] = ""
			default:
				ft.t.Fatalf("unexpected escape %q", s[:3+end])
			}
			s = s[3+end:]
		case s[0] == '\n':
			ft.row++
			ft.col = 0
			s = s[1:]
		case s[0] == '\r':
			ft.col = 0
			s = s[1:]
		default:
			ft.line()
			line := ft.screen[ft.row]
			if len(line) < ft.col {
				line += strings.Repeat(" ", ft.col-len(line))
			}
			rest := ""
			if len(line) > ft.col+1 {
				rest = line[ft.col+1:]
			}
			ft.screen[ft.row] = line[:ft.col] + s[:1] + rest
			ft.col++
			s = s[1:]
		}
	}
	return len(p), nil
}

func (ft *fakeTerminal) line() {
	for len(ft.screen) <= ft.row {
		ft.screen = append(ft.screen, "")
	}
}

func (ft *fakeTerminal) text() string {
	return strings.Join(ft.screen[:ft.row], "\n")
}

func TestLiveProgressRedrawsInPlace(t *testing.T) {
	steps := []BuildProgress{
		{Step: StepDepsStart, Functions: 2},
		{Step: StepDepsCompiling, Functions: 2, Packages: 120, Elapsed: 3 * time.Second},
		{Step: StepDepsDone, Functions: 2, Packages: 300, Elapsed: 9 * time.Second},
		{Step: StepStart, ImportPath: "example.com/app/functions/a", Functions: 2},
		{Step: StepStart, ImportPath: "example.com/app/functions/bb", Functions: 2},
		{Step: StepDone, ImportPath: "example.com/app/functions/bb", Functions: 2, Elapsed: 1500 * time.Millisecond},
		{Step: StepDone, ImportPath: "example.com/app/functions/a", Functions: 2, Elapsed: 2 * time.Second, Err: errors.New("boom")},
	}
	wantAfter := []string{
		"building 2 functions: compiling their dependencies",
		"building 2 functions: compiling their dependencies, 120 packages so far (3s)",
		"compiled dependencies (300 packages) in 9s",
		"compiled dependencies (300 packages) in 9s\n  example.com/app/functions/a  building",
		"compiled dependencies (300 packages) in 9s\n  example.com/app/functions/a   building\n  example.com/app/functions/bb  building",
		"compiled dependencies (300 packages) in 9s\n  example.com/app/functions/a   building\n  example.com/app/functions/bb  built in 1.5s",
		"compiled dependencies (300 packages) in 9s\n  example.com/app/functions/a   failed after 2s\n  example.com/app/functions/bb  built in 1.5s",
	}
	ft := &fakeTerminal{t: t}
	progress := LiveProgress(ft)
	for i, p := range steps {
		progress(p)
		if got := ft.text(); got != wantAfter[i] {
			t.Fatalf("after step %d (%s) the screen reads\n%s\nwant\n%s", i, p.Step, got, wantAfter[i])
		}
	}
	if !strings.Contains(ft.raw.String(), "\x1b[3A") {
		t.Errorf("the block of 3 lines was never redrawn in place: %q", ft.raw.String())
	}
}
