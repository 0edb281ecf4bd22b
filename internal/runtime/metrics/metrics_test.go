package metrics

import (
	"strings"
	"testing"
)

// TestDeliveryMetricsSayWhatTheyCount: the help of each trigger counter matches what the
// consumer counts, and the labels it is given.
func TestDeliveryMetricsSayWhatTheyCount(t *testing.T) {
	r := New()
	r.EventsRetried.WithLabelValues("ns/b", "ns/t").Inc()
	r.EventsParked.WithLabelValues("ns/b", "ns/t", "undeliverable").Inc()
	r.DeadLetterFailures.WithLabelValues("ns/b", "ns/t", "503").Inc()
	families, err := r.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	help := map[string]string{}
	for _, f := range families {
		help[f.GetName()] = f.GetHelp()
	}
	tests := map[string]struct {
		name string
		says []string
	}{
		"retried counts subscriber deliveries once": {name: "knfaas_trigger_events_retried_total", says: []string{"subscriber", "more than one attempt", "once per delivery", "not counted"}},
		"parked names its reasons":                  {name: "knfaas_trigger_events_parked_total", says: []string{"undeliverable", "undecodable"}},
		"dead-letter failures explain 503":          {name: "knfaas_trigger_dead_letter_failures_total", says: []string{"503", "full", "pending"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			h, ok := help[tc.name]
			if !ok {
				t.Fatalf("%s is not registered", tc.name)
			}
			for _, s := range tc.says {
				if !strings.Contains(h, s) {
					t.Errorf("%s help %q does not say %q", tc.name, h, s)
				}
			}
		})
	}
}
