package duequeue

import (
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
)

// WriteCounters writes counters (Queue.Counters) as the Prometheus counter metric, one sample per
// target (labelled targetLabel) and outcome, sorted, after its HELP and TYPE lines.
func WriteCounters(w io.Writer, metric, help, targetLabel string, counters map[string]map[string]int64) {
	fmt.Fprintf(w, "# HELP %s %s\n# TYPE %s counter\n", metric, help, metric)
	for _, target := range slices.Sorted(maps.Keys(counters)) {
		for _, outcome := range slices.Sorted(maps.Keys(counters[target])) {
			fmt.Fprintf(w, "%s{%s=%s,outcome=%s} %d\n", metric, targetLabel, LabelValue(target), LabelValue(outcome), counters[target][outcome])
		}
	}
}

// LabelValue quotes a Prometheus label value: backslash, double quote and line feed escaped.
func LabelValue(s string) string {
	return `"` + strings.NewReplacer(`\`, `\\`, `"`, `\"`, "\n", `\n`).Replace(s) + `"`
}
