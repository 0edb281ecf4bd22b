package cli

import (
	"fmt"
	"io"
	"runtime/debug"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

// versionInfo is what `knfaas version` prints: this build, and the Knative and Kubernetes
// versions whose Go types load, default and validate the manifests.
type versionInfo struct {
	// Version is the module version ("(devel)" for a build from a checkout).
	Version string `json:"version"`
	// Revision, Time and Modified are the VCS state the binary was built from.
	Revision string `json:"revision,omitempty"`
	Time     string `json:"time,omitempty"`
	Modified bool   `json:"modified,omitempty"`
	// Go is the toolchain that built the binary.
	Go string `json:"go"`
	// Serving, Eventing and Kubernetes are module versions of knative.dev/serving,
	// knative.dev/eventing and k8s.io/api.
	Serving    string `json:"knativeServing,omitempty"`
	Eventing   string `json:"knativeEventing,omitempty"`
	Kubernetes string `json:"kubernetes,omitempty"`
}

// readVersion reads versionInfo from the build information of a binary.
func readVersion(bi *debug.BuildInfo, ok bool) versionInfo {
	if !ok || bi == nil {
		return versionInfo{Version: "unknown (no build information)"}
	}
	v := versionInfo{Version: bi.Main.Version, Go: bi.GoVersion}
	if v.Version == "" {
		v.Version = "(devel)"
	}
	for _, s := range bi.Settings {
		switch s.Key {
		case "vcs.revision":
			v.Revision = s.Value
		case "vcs.time":
			v.Time = s.Value
		case "vcs.modified":
			v.Modified = s.Value == "true"
		}
	}
	for _, d := range bi.Deps {
		if d.Replace != nil {
			d = d.Replace
		}
		switch d.Path {
		case "knative.dev/serving":
			v.Serving = d.Version
		case "knative.dev/eventing":
			v.Eventing = d.Version
		case "k8s.io/api":
			v.Kubernetes = d.Version
		}
	}
	return v
}

// short is the one line of --version.
func (v versionInfo) short() string {
	s := v.Version
	if v.Revision != "" {
		rev := v.Revision
		if len(rev) > 12 {
			rev = rev[:12]
		}
		s += " (" + rev
		if v.Modified {
			s += ", modified"
		}
		s += ")"
	}
	return s
}

func (v versionInfo) print(w io.Writer) error {
	tw := tabwriter.NewWriter(w, 0, 4, 2, ' ', 0)
	row := func(k, val string) {
		if val != "" {
			fmt.Fprintf(tw, "%s:\t%s\n", k, val)
		}
	}
	row("Version", v.Version)
	row("Revision", v.Revision)
	row("Built from", v.Time)
	if v.Modified {
		row("Modified", "yes (uncommitted changes)")
	}
	row("Go", v.Go)
	row("Knative Serving", v.Serving)
	row("Knative Eventing", v.Eventing)
	row("Kubernetes API", v.Kubernetes)
	return tw.Flush()
}

func newVersionCommand() *cobra.Command {
	var output string
	cmd := &cobra.Command{
		Use:   "version",
		Short: "Print the version, the VCS revision, Go, and the Knative and Kubernetes versions manifests are validated against",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			if err := checkOutput(output); err != nil {
				return err
			}
			v := readVersion(debug.ReadBuildInfo())
			if structured(output) {
				return writeDocument(cmd.OutOrStdout(), output, v)
			}
			return v.print(cmd.OutOrStdout())
		},
	}
	addOutputFlag(cmd, &output)
	return cmd
}
