//go:build e2e

package main

import (
	"bufio"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/knfaas/knfaas/internal/harness/runtimetest"
)

// readmeCommand is a knfaas command shown in a fenced code block of a README.
type readmeCommand struct {
	where string // file:line
	text  string // the command as shown, continuation lines joined
}

// knfaasCommand matches a line that runs the CLI: knfaas …, go run ./cmd/knfaas …, kn faas ….
var knfaasCommand = regexp.MustCompile(`^(\$ )?(knfaas|go run \./cmd/knfaas|kn faas)( |$)`)

// notRunHere are the README commands this test does not run, each with the reason.
var notRunHere = map[string]string{
	"go run ./cmd/knfaas up":                           "starts the platform itself: the test runs it (runtimetest, the same config/ and triggers/) before the other commands",
	"go run ./cmd/knfaas up &":                         "starts the platform itself in the background: the test runs it (runtimetest, the same config/ and triggers/) before the other commands",
	"kn faas dlq list -n knfaas --since 2h --code 503": "needs a Kubernetes cluster with the platform installed (the cluster path is tested in internal/runtime/cli against kube-apiserver)",
	"kn faas dlq redrive -n knfaas --since 2h --code 503 --rate 50 --broker knfaas/default": "needs a Kubernetes cluster with the platform installed (the cluster path is tested in internal/runtime/cli against kube-apiserver)",
}

// readmeCommands extracts, in order, the CLI commands of fenced code blocks of README.md and
// then of each functions/*/README.md.
func readmeCommands(t *testing.T, root string) []readmeCommand {
	t.Helper()
	files := []string{"README.md"}
	more, err := filepath.Glob(filepath.Join(root, "functions", "*", "README.md"))
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range more {
		rel, _ := filepath.Rel(root, m)
		files = append(files, rel)
	}
	var cmds []readmeCommand
	for _, file := range files {
		f, err := os.Open(filepath.Join(root, file))
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		inBlock, n := false, 0
		var pending *readmeCommand
		for sc.Scan() {
			n++
			line := sc.Text()
			if strings.HasPrefix(strings.TrimSpace(line), "```") {
				inBlock = !inBlock
				continue
			}
			if !inBlock {
				continue
			}
			if pending != nil {
				pending.text += " " + strings.TrimSpace(strings.TrimSuffix(line, `\`))
				if !strings.HasSuffix(line, `\`) {
					cmds = append(cmds, *pending)
					pending = nil
				}
				continue
			}
			if !knfaasCommand.MatchString(line) {
				continue
			}
			c := readmeCommand{where: file + ":" + strconv.Itoa(n), text: strings.TrimPrefix(strings.TrimSuffix(line, `\`), "$ ")}
			c.text = strings.TrimSpace(c.text)
			if strings.HasSuffix(line, `\`) {
				pending = &c
				continue
			}
			cmds = append(cmds, c)
		}
		f.Close()
		if err := sc.Err(); err != nil {
			t.Fatal(err)
		}
	}
	return cmds
}

// TestReadmeCommands runs every knfaas command the READMEs show, verbatim and in order, with a
// shell, against a running knfaas up of the platform's config/ and triggers/ (found the way a
// user's would be: through the default state directory).
func TestReadmeCommands(t *testing.T) {
	root := runtimetest.ModuleRoot(t)
	cmds := readmeCommands(t, root)
	if len(cmds) < 5 {
		t.Fatalf("found %d commands in the READMEs; the extraction is broken", len(cmds))
	}
	skipped := map[string]bool{}
	for _, c := range cmds {
		if _, ok := notRunHere[c.text]; ok {
			skipped[c.text] = true
		}
	}
	for text := range notRunHere {
		if !skipped[text] {
			t.Errorf("notRunHere lists %q, which no README shows any more", text)
		}
	}

	// The default state directory of the user running the commands: $XDG_STATE_HOME/knfaas.
	stateHome, err := os.MkdirTemp("", "knfaas-xdg-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { _ = os.RemoveAll(stateHome) })
	state := filepath.Join(stateHome, "knfaas")
	rt := runtimetest.Start(t, runtimetest.Options{StateDir: state, Paths: []string{"config", "triggers"}})
	bin := runtimetest.Binary(t)

	env := []string{"PATH=" + filepath.Dir(bin) + string(os.PathListSeparator) + os.Getenv("PATH"), "XDG_STATE_HOME=" + stateHome,
		"KNFAAS_ADDR=", "REDIS_URL=", "KUBECONFIG=" + filepath.Join(stateHome, "no-kubeconfig")}
	for _, kv := range os.Environ() {
		if k, _, _ := strings.Cut(kv, "="); k != "PATH" && k != "XDG_STATE_HOME" && k != "KNFAAS_ADDR" && k != "REDIS_URL" && k != "KUBECONFIG" {
			env = append(env, kv)
		}
	}
	for _, c := range cmds {
		if reason, ok := notRunHere[c.text]; ok {
			t.Logf("%s: not run (%s): %s", c.where, reason, c.text)
			continue
		}
		ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
		cmd := exec.CommandContext(ctx, "sh", "-c", c.text)
		cmd.Dir = root
		cmd.Env = env
		// A command that leaves a process behind holding the output (one ending in &) must
		// not hang the test: it is listed in notRunHere, and this bounds the wait if not.
		cmd.WaitDelay = 10 * time.Second
		out, err := cmd.CombinedOutput()
		cancel()
		if err != nil {
			t.Fatalf("%s: %s\nfailed: %v\n%s\nknfaas up:\n%s", c.where, c.text, err, out, rt.Output())
		}
		t.Logf("%s: %s\n%s", c.where, c.text, strings.TrimSpace(string(out)))
	}
}
