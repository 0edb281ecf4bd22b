package verify

import (
	"maps"
	"path/filepath"
	"strings"
	"testing"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
)

func TestPasses(t *testing.T) {
	const typ = "dev.knfaas.example.order.placed"
	attrs := func(kv ...string) *eventingv1.TriggerFilter {
		f := &eventingv1.TriggerFilter{Attributes: eventingv1.TriggerFilterAttributes{}}
		for i := 0; i < len(kv); i += 2 {
			f.Attributes[kv[i]] = kv[i+1]
		}
		return f
	}
	tests := map[string]struct {
		filter  *eventingv1.TriggerFilter
		filters []eventingv1.SubscriptionsAPIFilter
		want    verdict
	}{
		"no filter":                   {want: always},
		"type equal":                  {filter: attrs("type", typ), want: always},
		"type differs":                {filter: attrs("type", "other"), want: never},
		"empty value matches any":     {filter: attrs("type", ""), want: always},
		"other attribute":             {filter: attrs("type", typ, "source", "s"), want: maybe},
		"other attribute, wrong type": {filter: attrs("type", "other", "source", "s"), want: never},
		"exact":                       {filters: []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": typ}}}, want: always},
		"prefix":                      {filters: []eventingv1.SubscriptionsAPIFilter{{Prefix: map[string]string{"type": "dev.knfaas.example."}}}, want: always},
		"suffix mismatch":             {filters: []eventingv1.SubscriptionsAPIFilter{{Suffix: map[string]string{"type": ".shipped"}}}, want: never},
		"not exact":                   {filters: []eventingv1.SubscriptionsAPIFilter{{Not: &eventingv1.SubscriptionsAPIFilter{Exact: map[string]string{"type": typ}}}}, want: never},
		"not other":                   {filters: []eventingv1.SubscriptionsAPIFilter{{Not: &eventingv1.SubscriptionsAPIFilter{Exact: map[string]string{"type": "x"}}}}, want: always},
		"any of two":                  {filters: []eventingv1.SubscriptionsAPIFilter{{Any: []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": "x"}}, {Exact: map[string]string{"type": typ}}}}}, want: always},
		"all of two, one fails":       {filters: []eventingv1.SubscriptionsAPIFilter{{All: []eventingv1.SubscriptionsAPIFilter{{Prefix: map[string]string{"type": "dev."}}, {Exact: map[string]string{"type": "x"}}}}}, want: never},
		"cesql":                       {filters: []eventingv1.SubscriptionsAPIFilter{{CESQL: "type = 'x'"}}, want: maybe},
		"filters win over filter":     {filter: attrs("type", "other"), filters: []eventingv1.SubscriptionsAPIFilter{{Exact: map[string]string{"type": typ}}}, want: always},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			trig := &eventingv1.Trigger{Spec: eventingv1.TriggerSpec{Filter: tc.filter, Filters: tc.filters}}
			if got := passes(trig, typ); got != tc.want {
				t.Errorf("passes = %d, want %d", got, tc.want)
			}
		})
	}
}

func TestAdvice(t *testing.T) {
	tests := map[string]struct {
		echo  string
		field string // of the one note expected; empty: none
	}{
		"sink-bound function declares what it emits": {echo: base["config/700-echo.yaml"]},
		"sink-bound function declares nothing":       {echo: ksvc("echo", "", "", ""), field: "metadata.annotations[knfaas.dev/emits]"},
		"trigger subscriber is public": {
			echo:  strings.Replace(base["config/700-echo.yaml"], ", networking.knative.dev/visibility: cluster-local", "", 1),
			field: "metadata.labels[networking.knative.dev/visibility]",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			files := maps.Clone(base)
			files["config/700-echo.yaml"] = tc.echo
			set, dir := loadFiles(t, files)
			notes := Advice(set)
			want := 0
			if tc.field != "" {
				want = 1
			}
			if len(notes) != want {
				t.Fatalf("got %d notes, want %d: %v", len(notes), want, notes)
			}
			if want == 1 {
				n := notes[0]
				if n.File != filepath.Join(dir, "config/700-echo.yaml") || n.Object != "Service knfaas/echo" || n.Field != tc.field {
					t.Errorf("note = %s", n)
				}
			}
		})
	}
}
