package cli

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/verify"
)

const verifyLong = `Check manifests before they reach a cluster or knfaas up.

Every document is decoded strictly into its Kubernetes or Knative Go type (an unknown field is an
error naming file, object and field) and passes Knative's SetDefaults and Validate. Then the
cross-checks a schema cannot make:

  - every Trigger's Broker exists; every subscriber, dead-letter sink and source sink ref names
    an object that exists
  - every env valueFrom / envFrom / volume names a Secret or ConfigMap (and key) that exists
  - every ko:// image is a package main under functions/ (or examples/<domain>/functions/), and
    its Knative Service has the shape every function shares: min/max-scale, app.kubernetes.io
    labels, requests and a memory limit, /health/readiness and /health/liveness probes,
    LISTEN_ADDRESS, no password in a plain env value, a restricted securityContext
  - every event type a Knative Service lists in its knfaas.dev/emits annotation is routed by a
    Trigger or listed in knfaas.dev/terminal
  - no Trigger delivers to a function a type that function emits (a loop), unless the Trigger is
    annotated knfaas.dev/loop: intended
  - a kustomization.yaml in a given folder lists exactly that folder's files; a triggers/ folder
    holds one Trigger per file, named like the file and starting with its subscriber's name

Notes (printed, not failures): a function a SinkBinding gives K_SINK but that lists no emitted
types, and a public function that receives events (it should be cluster-local unless outside
callers need it).

Paths are files or folders (read recursively). As for knfaas up, -f adds to config/ and
triggers/ (those that exist); --defaults=false checks only the -f paths. A path given twice is
read once.`

// newVerifyCommand returns `verify`.
func newVerifyCommand() *cobra.Command {
	var paths []string
	var defaults bool
	cmd := &cobra.Command{
		Use:   "verify [-f PATH]...",
		Short: "Check manifests strictly and cross-check their references and event flow",
		Long:  verifyLong,
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			all := paths
			if defaults {
				all = append(defaultManifestPaths(), paths...)
			}
			return runVerify(cmd.OutOrStdout(), uniquePaths(all))
		},
	}
	addManifestFlags(cmd, &paths, &defaults)
	return cmd
}

// addManifestFlags adds -f/--filename and --defaults, the same for up and verify: -f adds to
// config/ and triggers/ unless --defaults=false. --file is kept as another name of --filename.
func addManifestFlags(cmd *cobra.Command, paths *[]string, defaults *bool) {
	f := cmd.Flags()
	f.StringArrayVarP(paths, "filename", "f", nil, "manifest file or folder to load as well (repeatable), e.g. examples/pos")
	f.BoolVar(defaults, "defaults", true, "load config/ and triggers/ too; --defaults=false loads only the -f paths")
	f.SetNormalizeFunc(func(_ *pflag.FlagSet, name string) pflag.NormalizedName {
		if name == "file" {
			name = "filename"
		}
		return pflag.NormalizedName(name)
	})
}

// uniquePaths drops a path given again (after cleaning), keeping the first.
func uniquePaths(paths []string) []string {
	seen := map[string]bool{}
	var out []string
	for _, p := range paths {
		if c := filepath.Clean(p); !seen[c] {
			seen[c] = true
			out = append(out, p)
		}
	}
	return out
}

func defaultManifestPaths() []string {
	var paths []string
	for _, p := range defaultPaths {
		if _, err := os.Stat(p); err == nil {
			paths = append(paths, p)
		}
	}
	return paths
}

// errVerifyFailed is returned after the problems were printed, so the caller only sets the exit
// status.
var errVerifyFailed = errors.New("manifests failed verification")

func runVerify(out io.Writer, paths []string) error {
	if len(paths) == 0 {
		return errors.New("no manifests: pass -f PATH or run from the repository root")
	}
	set, err := manifest.Load(paths...)
	if err != nil {
		for _, line := range strings.Split(err.Error(), "\n") {
			fmt.Fprintln(out, line)
		}
		return fmt.Errorf("%w: fix the documents above first", errVerifyFailed)
	}
	root, module, err := findModule(".")
	if err != nil {
		return err
	}
	modules, err := otherModules(paths, root)
	if err != nil {
		return err
	}
	problems := verify.Check(set, verify.Options{ModuleRoot: root, ModulePath: module, Modules: modules})
	for _, p := range paths {
		if info, err := os.Stat(p); err == nil && info.IsDir() {
			problems = append(problems, verify.CheckKustomization(p)...)
		}
	}
	for _, p := range problems {
		fmt.Fprintln(out, p)
	}
	for _, n := range verify.Advice(set) {
		fmt.Fprintln(out, "note:", n)
	}
	if len(problems) > 0 {
		return fmt.Errorf("%w: %d problems", errVerifyFailed, len(problems))
	}
	fmt.Fprintf(out, "%d objects in %s: OK\n", len(set.Objects), strings.Join(paths, ", "))
	return nil
}

// otherModules finds the Go modules of manifest paths outside the module at mainRoot (users'
// own functions, e.g. -f ../my-app with its own go.mod): module path -> directory. A path
// without a go.mod above it belongs to no module and adds none.
func otherModules(paths []string, mainRoot string) (map[string]string, error) {
	mainAbs, err := filepath.Abs(mainRoot)
	if err != nil {
		return nil, err
	}
	modules := map[string]string{}
	for _, p := range paths {
		dir := p
		if info, err := os.Stat(p); err == nil && !info.IsDir() {
			dir = filepath.Dir(p)
		}
		root, module, err := findModule(dir)
		if err != nil {
			continue
		}
		if root != mainAbs {
			modules[module] = root
		}
	}
	return modules, nil
}

// findModule walks up from dir to the go.mod that ko:// import paths resolve against and
// returns its directory and module path.
func findModule(dir string) (root, module string, err error) {
	abs, err := filepath.Abs(dir)
	if err != nil {
		return "", "", fmt.Errorf("finding go.mod: %w", err)
	}
	for d := abs; ; d = filepath.Dir(d) {
		f, err := os.Open(filepath.Join(d, "go.mod"))
		if err == nil {
			defer f.Close()
			sc := bufio.NewScanner(f)
			for sc.Scan() {
				if m, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
					return d, strings.Trim(strings.TrimSpace(m), `"`), nil
				}
			}
			return "", "", fmt.Errorf("no module line in %s", filepath.Join(d, "go.mod"))
		}
		if filepath.Dir(d) == d {
			return "", "", fmt.Errorf("no go.mod above %s: run knfaas verify inside the repository", abs)
		}
	}
}
