package cli

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"text/template"

	"github.com/spf13/cobra"
)

const newLong = `Scaffold a function or a Trigger in the layout and shape every function shares.

knfaas new function NAME writes

  functions/NAME/            main.go, NAME.go, NAME_test.go, README.md (func-go, CloudEvents)
  config/700-NAME.yaml       its Knative Service in the shared shape: labels, min/max-scale,
                             requests and a memory limit, probes, LISTEN_ADDRESS, REDIS_URL from
                             the redis Secret, a restricted securityContext; cluster-local
  triggers/NAME-EVENT.yaml   a Trigger on the default Broker for --type

and lists the manifest in config/kustomization.yaml. With --example DOMAIN the same goes under
examples/DOMAIN/ (Service and Trigger named DOMAIN-NAME, listed in examples/DOMAIN/
kustomization.yaml). The result passes knfaas verify and runs under knfaas up unchanged
(knfaas up -f examples/DOMAIN for an example). Existing files are never overwritten.

Its main sets up logging first, as every function's does: in this module with
internal/function/logging (LOG_FORMAT, LOG_LEVEL, func-go's and go-redis's lines in the same
format); in a module of its own (--dir), which cannot import the platform's internal packages,
with a logging.go written beside it that reads the same LOG_FORMAT and LOG_LEVEL.

The function uses only func-go, the CloudEvents SDK and go-redis, so it can move to a module
of its own.`

// platformModule is this repository's module path: a function scaffolded into it imports the
// platform's internal packages.
const platformModule = "github.com/knfaas/knfaas"

// scaffold is what `knfaas new` generates from.
type scaffold struct {
	Name      string // the function's folder and package directory, e.g. greeter
	Domain    string // the example domain, "" for a platform function
	Service   string // the Knative Service: Name, or Domain-Name
	Namespace string
	Broker    string
	Type      string // the event type the Trigger routes to the function
	Module    string // the Go module path
	EnvPrefix string // prefix of the function's environment variables, e.g. GREETER
	Component string // app.kubernetes.io/component
}

var dnsLabel = regexp.MustCompile(`^[a-z]([a-z0-9-]*[a-z0-9])?$`)

// TriggerName is the name (and file name) of the scaffolded Trigger.
func (s scaffold) TriggerName() string { return triggerName(s.Service, s.Domain, s.Type) }

// PlatformModule says whether the function is scaffolded into the platform's own module.
func (s scaffold) PlatformModule() bool { return s.Module == platformModule }

// ImportPath is the function's Go import path.
func (s scaffold) ImportPath() string { return s.Module + "/" + filepath.ToSlash(s.functionDir()) }

// base is the folder that holds functions/, config/ and triggers/: the module root, or
// examples/DOMAIN.
func (s scaffold) base() string {
	if s.Domain == "" {
		return "."
	}
	return filepath.Join("examples", s.Domain)
}

func (s scaffold) functionDir() string { return filepath.Join(s.base(), "functions", s.Name) }

// triggerName names a Trigger <service>-<event>: the event is the type without the platform's
// prefix (dev.knfaas.example.<domain>. or dev.knfaas.), made of lower-case words and dashes.
func triggerName(service, domain, typ string) string {
	event := typ
	prefixes := []string{"dev.knfaas."}
	if domain != "" {
		prefixes = append([]string{"dev.knfaas.example." + domain + "."}, prefixes...)
	}
	for _, p := range prefixes {
		if rest, ok := strings.CutPrefix(event, p); ok {
			event = rest
			break
		}
	}
	event = strings.Trim(nonWord.ReplaceAllString(strings.ToLower(event), "-"), "-")
	return service + "-" + event
}

var nonWord = regexp.MustCompile(`[^a-z0-9]+`)

func newNewCommand() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "new",
		Short: "Scaffold a function (code, README, test, Knative Service, Trigger) or a Trigger",
		Long:  newLong,
	}
	cmd.AddCommand(newNewFunctionCommand(), newNewTriggerCommand())
	return cmd
}

type scaffoldFlags struct {
	example, namespace, broker, typ, dir string
}

func addScaffoldFlags(cmd *cobra.Command, f *scaffoldFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.example, "example", "", "write under examples/DOMAIN instead of the platform's own folders")
	fl.StringVarP(&f.namespace, "namespace", "n", "knfaas", "namespace of the Service and Trigger")
	fl.StringVar(&f.broker, "broker", "default", "the Broker the Trigger subscribes to (in --namespace)")
	fl.StringVar(&f.typ, "type", "", "the event type the Trigger routes (default dev.knfaas.NAME.requested, or dev.knfaas.example.DOMAIN.NAME.requested)")
	fl.StringVar(&f.dir, "dir", ".", "the module root to write into (holds go.mod)")
}

// plan checks the flags and the name and fills a scaffold.
func (f scaffoldFlags) plan(name string) (scaffold, error) {
	if !dnsLabel.MatchString(name) || len(name) > 40 {
		return scaffold{}, &UsageError{Err: fmt.Errorf("name %q: want a DNS label (lower-case letters, digits and dashes, 40 at most)", name)}
	}
	if f.example != "" && !dnsLabel.MatchString(f.example) {
		return scaffold{}, &UsageError{Err: fmt.Errorf("--example %q: want a DNS label", f.example)}
	}
	for flag, v := range map[string]string{"--namespace": f.namespace, "--broker": f.broker} {
		if !dnsLabel.MatchString(v) {
			return scaffold{}, &UsageError{Err: fmt.Errorf("%s %q: want a DNS label", flag, v)}
		}
	}
	_, module, err := findModule(f.dir)
	if err != nil {
		return scaffold{}, err
	}
	s := scaffold{Name: name, Domain: f.example, Service: name, Namespace: f.namespace, Broker: f.broker, Module: module,
		EnvPrefix: strings.ToUpper(strings.ReplaceAll(name, "-", "_")), Component: name}
	s.Type = "dev.knfaas." + name + ".requested"
	if f.example != "" {
		s.Service = f.example + "-" + name
		s.Component = "example-" + f.example
		s.Type = "dev.knfaas.example." + f.example + "." + name + ".requested"
	}
	if f.typ != "" {
		s.Type = f.typ
	}
	if !regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]*$`).MatchString(s.Type) {
		return scaffold{}, &UsageError{Err: fmt.Errorf("--type %q: want a reverse-DNS event type", s.Type)}
	}
	return s, nil
}

func newNewFunctionCommand() *cobra.Command {
	var f scaffoldFlags
	cmd := &cobra.Command{
		Use:   "function NAME",
		Short: "Scaffold a CloudEvents function, its Knative Service and a Trigger",
		Example: `  knfaas new function greeter
  knfaas new function notifier --example shop --type dev.knfaas.example.shop.order.placed`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			s, err := f.plan(args[0])
			if err != nil {
				return err
			}
			fn := s.functionDir()
			manifest := filepath.Join(s.base(), "config", "700-"+s.Service+".yaml")
			files := []generated{
				{filepath.Join(fn, "main.go"), tmplMain},
				{filepath.Join(fn, s.Name+".go"), tmplFunction},
				{filepath.Join(fn, s.Name+"_test.go"), tmplTest},
				{filepath.Join(fn, "README.md"), tmplREADME},
				{manifest, tmplService},
				{filepath.Join(s.base(), "triggers", s.TriggerName()+".yaml"), tmplTrigger},
			}
			manifests := files[4:]
			if !s.PlatformModule() {
				files = append(files, generated{filepath.Join(fn, "logging.go"), tmplLogging})
			}
			if err := writeScaffold(cmd.OutOrStdout(), f.dir, s, files); err != nil {
				return err
			}
			return listInKustomization(cmd.OutOrStdout(), f.dir, s, manifests)
		},
	}
	addScaffoldFlags(cmd, &f)
	return cmd
}

func newNewTriggerCommand() *cobra.Command {
	var f scaffoldFlags
	cmd := &cobra.Command{
		Use:   "trigger SERVICE --type TYPE",
		Short: "Scaffold a Trigger that routes an event type from a Broker to a Knative Service",
		Long: `Writes triggers/SERVICE-EVENT.yaml (or examples/DOMAIN/triggers/ with --example, listed in
examples/DOMAIN/kustomization.yaml): a Trigger on --broker that routes events of --type to the
Knative Service SERVICE, named after its subscriber and event as knfaas verify wants.`,
		Example: `  knfaas new trigger process --type dev.knfaas.tasks.completed
  knfaas new trigger shop-notifier --example shop --type dev.knfaas.example.shop.order.paid`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			if f.typ == "" {
				return &UsageError{Err: errors.New("--type is required: the event type the Trigger routes")}
			}
			s, err := f.plan(args[0])
			if err != nil {
				return err
			}
			// The subscriber is named as given; for an example it already carries its domain.
			s.Service = args[0]
			files := []generated{{filepath.Join(s.base(), "triggers", s.TriggerName()+".yaml"), tmplTrigger}}
			if err := writeScaffold(cmd.OutOrStdout(), f.dir, s, files); err != nil {
				return err
			}
			return listInKustomization(cmd.OutOrStdout(), f.dir, s, files)
		},
	}
	addScaffoldFlags(cmd, &f)
	return cmd
}

type generated struct {
	path string
	tmpl *template.Template
}

// writeScaffold renders every file first and writes them only when none exists yet.
func writeScaffold(out io.Writer, root string, s scaffold, files []generated) error {
	rendered := make([][]byte, len(files))
	for i, g := range files {
		var buf bytes.Buffer
		if err := g.tmpl.Execute(&buf, s); err != nil {
			return fmt.Errorf("rendering %s: %w", g.path, err)
		}
		rendered[i] = buf.Bytes()
		if _, err := os.Stat(filepath.Join(root, g.path)); err == nil {
			return fmt.Errorf("%s exists: knfaas new never overwrites a file", g.path)
		}
	}
	for i, g := range files {
		p := filepath.Join(root, g.path)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, rendered[i], 0o644); err != nil {
			return err
		}
		fmt.Fprintf(out, "wrote %s\n", filepath.ToSlash(g.path))
	}
	return nil
}

const kustomizationHeader = `# Render with ` + "`kubectl kustomize`" + `; images are ko:// references, so apply with
# ` + "`kubectl kustomize <folder> | ko apply -f -`" + `. knfaas verify checks that every file is listed.
apiVersion: kustomize.config.k8s.io/v1beta1
kind: Kustomization
resources:
`

// listInKustomization adds the manifests to the kustomization.yaml that must list them:
// config/kustomization.yaml for the platform (Triggers in triggers/ have none), or
// examples/DOMAIN/kustomization.yaml, created when the domain is new.
func listInKustomization(out io.Writer, root string, s scaffold, files []generated) error {
	kust := filepath.Join(s.base(), "kustomization.yaml")
	if s.Domain == "" {
		kust = filepath.Join("config", "kustomization.yaml")
	}
	var entries []string
	for _, g := range files {
		rel, err := filepath.Rel(filepath.Dir(kust), g.path)
		if err != nil || strings.HasPrefix(rel, "..") {
			continue // not under the kustomization's folder (platform triggers)
		}
		entries = append(entries, filepath.ToSlash(rel))
	}
	if len(entries) == 0 {
		return nil
	}
	path := filepath.Join(root, kust)
	data, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		data = []byte(kustomizationHeader)
	} else if err != nil {
		return err
	}
	updated, err := addResources(data, entries)
	if err != nil {
		return fmt.Errorf("%s: %w", kust, err)
	}
	if err := os.WriteFile(path, updated, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(out, "listed %s in %s\n", strings.Join(entries, ", "), filepath.ToSlash(kust))
	return nil
}

// addResources inserts entries into the resources list of a kustomization.yaml, keeping the
// list sorted and the rest of the file (comments included) as it is.
func addResources(data []byte, entries []string) ([]byte, error) {
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	start := slices.Index(lines, "resources:")
	if start < 0 {
		return nil, errors.New("no top-level resources: list")
	}
	end := start + 1
	for end < len(lines) && strings.HasPrefix(lines[end], "- ") {
		end++
	}
	list := slices.Clone(lines[start+1 : end])
	for _, e := range entries {
		if !slices.Contains(list, "- "+e) {
			list = append(list, "- "+e)
		}
	}
	slices.Sort(list)
	out := append(append(append([]string{}, lines[:start+1]...), list...), lines[end:]...)
	return []byte(strings.Join(out, "\n") + "\n"), nil
}
