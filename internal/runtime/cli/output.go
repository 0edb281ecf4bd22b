package cli

import (
	"encoding/json"
	"fmt"
	"io"

	"github.com/spf13/cobra"
	"sigs.k8s.io/yaml"
)

// Output formats of -o. json and yaml carry the same document: lowerCamel keys, RFC 3339
// times, empty fields left out; yaml is the json converted, so its keys are the json keys.
const (
	outputTable = "table"
	outputJSON  = "json"
	outputYAML  = "yaml"
)

func addOutputFlag(cmd *cobra.Command, output *string) {
	cmd.Flags().StringVarP(output, "output", "o", outputTable, "output format: table, json or yaml")
	_ = cmd.RegisterFlagCompletionFunc("output", cobra.FixedCompletions([]string{outputTable, outputJSON, outputYAML}, cobra.ShellCompDirectiveNoFileComp))
}

func checkOutput(output string) error {
	switch output {
	case outputTable, outputJSON, outputYAML:
		return nil
	}
	return fmt.Errorf("--output %q: want table, json or yaml", output)
}

// structured reports whether output is a document format (json or yaml) rather than a table.
func structured(output string) bool { return output == outputJSON || output == outputYAML }

// writeDocument writes v as json or yaml.
func writeDocument(w io.Writer, output string, v any) error {
	if output != outputYAML {
		return writeJSON(w, v)
	}
	data, err := json.Marshal(v)
	if err != nil {
		return fmt.Errorf("encoding the output: %w", err)
	}
	y, err := yaml.JSONToYAML(data)
	if err != nil {
		return fmt.Errorf("encoding the output as yaml: %w", err)
	}
	_, err = w.Write(y)
	return err
}

func writeJSON(w io.Writer, v any) error {
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false) // show <, > and & in events as they are
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

// addQuietFlag adds -q/--quiet: what the command prints for each item is reduced to its id,
// one a line, and summaries are left out, so the output can feed another command.
func addQuietFlag(cmd *cobra.Command, quiet *bool) {
	cmd.Flags().BoolVarP(quiet, "quiet", "q", false, "print only ids, one a line (no header, no summary)")
}
