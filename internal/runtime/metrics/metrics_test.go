package metrics

import (
	"fmt"
	"net/http"
	"net/http/httptest"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/testutil"
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

// scrape returns what r's handler serves to a scraper asking for accept.
func scrape(t *testing.T, r *Runtime, accept string) string {
	t.Helper()
	req := httptest.NewRequest(http.MethodGet, "/metrics", nil)
	if accept != "" {
		req.Header.Set("Accept", accept)
	}
	w := httptest.NewRecorder()
	r.Handler().ServeHTTP(w, req)
	return w.Body.String()
}

// TestRequestMetricsCarryTheTraceAsExemplar: each request counts in requests_total by status,
// 5xx also in errors_total, and its duration in the histogram; a request of a sampled trace
// leaves its trace id as the exemplar of each, shown in the OpenMetrics format only.
func TestRequestMetricsCarryTheTraceAsExemplar(t *testing.T) {
	const traced, failed = "4bf92f3577b34da6a3ce929d0e0e4736", "0af7651916cd43dd8448eb211c80319c"
	r := New()
	r.ObserveRequest("ns", "fn", "com.example.ok", 202, 3*time.Millisecond, traced)
	r.ObserveRequest("ns", "fn", "com.example.ok", 202, 2*time.Millisecond, "")
	r.ObserveRequest("ns", "fn", "com.example.ok", 503, 40*time.Millisecond, failed)
	r.ObserveRequest("ns", "fn", "", 404, time.Millisecond, "")
	openMetrics := scrape(t, r, "application/openmetrics-text; version=1.0.0; charset=utf-8")
	text := scrape(t, r, "")
	tests := map[string]struct {
		body string
		want []string
		not  []string
	}{
		"requests by status, the traced one with its exemplar": {body: openMetrics, want: []string{
			`knfaas_service_requests_total{code="202",event_type="com.example.ok",namespace="ns",service="fn"} 2.0 # {trace_id="` + traced + `"} 1.0`,
			`knfaas_service_requests_total{code="503",event_type="com.example.ok",namespace="ns",service="fn"} 1.0 # {trace_id="` + failed + `"} 1.0`,
			`knfaas_service_requests_total{code="404",event_type="",namespace="ns",service="fn"} 1.0`,
		}},
		"a 5xx is an error, with the failed request's trace": {body: openMetrics, want: []string{
			`knfaas_service_request_errors_total{event_type="com.example.ok",namespace="ns",service="fn"} 1.0 # {trace_id="` + failed + `"} 1.0`,
			`knfaas_service_request_errors_total{event_type="",namespace="ns",service="fn"} 0.0`,
		}},
		"durations in their buckets, each traced one as exemplar": {body: openMetrics, want: []string{
			`knfaas_service_request_duration_seconds_bucket{event_type="com.example.ok",namespace="ns",service="fn",le="0.004"} 2 # {trace_id="` + traced + `"} 0.003`,
			`knfaas_service_request_duration_seconds_bucket{event_type="com.example.ok",namespace="ns",service="fn",le="0.064"} 3 # {trace_id="` + failed + `"} 0.04`,
			`knfaas_service_request_duration_seconds_count{event_type="com.example.ok",namespace="ns",service="fn"} 3`,
		}},
		"the Prometheus text format has no exemplars": {body: text, want: []string{
			`knfaas_service_requests_total{code="202",event_type="com.example.ok",namespace="ns",service="fn"} 2`,
		}, not: []string{"trace_id"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for _, w := range tc.want {
				if !containsLinePrefix(tc.body, w) {
					t.Errorf("no line starting %q in\n%s", w, grepLines(tc.body, "knfaas_service_request"))
				}
			}
			for _, n := range tc.not {
				if strings.Contains(tc.body, n) {
					t.Errorf("found %q in\n%s", n, grepLines(tc.body, "knfaas_service_request"))
				}
			}
		})
	}
}

// TestRequestMetricsBoundTheEventTypes: a Service's event_type values stop at MaxEventTypes;
// later types, over-long and invalid ones go under "other", and other Services have their own
// bound.
func TestRequestMetricsBoundTheEventTypes(t *testing.T) {
	r := New()
	for i := range MaxEventTypes {
		r.ObserveRequest("ns", "busy", fmt.Sprintf("type.%d", i), 200, time.Millisecond, "")
	}
	tests := map[string]struct {
		service, eventType, wantLabel string
	}{
		"a type beyond the bound":               {"busy", "type.late", OtherEventType},
		"a type seen before the bound was hit":  {"busy", "type.3", "type.3"},
		"another Service has its own bound":     {"quiet", "type.late", "type.late"},
		"invalid UTF-8":                         {"quiet", "bad\xff", OtherEventType},
		"longer than a label should be":         {"quiet", strings.Repeat("x", 300), OtherEventType},
		"no type: not a binary-mode CloudEvent": {"quiet", "", ""},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			before := testutil.ToFloat64(r.Requests.WithLabelValues("ns", tc.service, tc.wantLabel, "200"))
			r.ObserveRequest("ns", tc.service, tc.eventType, 200, time.Millisecond, "")
			if after := testutil.ToFloat64(r.Requests.WithLabelValues("ns", tc.service, tc.wantLabel, "200")); after != before+1 {
				t.Errorf("requests_total{event_type=%q} went from %v to %v, want +1", tc.wantLabel, before, after)
			}
		})
	}
	if n := testutil.CollectAndCount(r.RequestDuration); n > MaxEventTypes+1+4 {
		t.Errorf("%d duration series, want at most %d", n, MaxEventTypes+1+4)
	}
}

func containsLinePrefix(body, prefix string) bool {
	for _, line := range strings.Split(body, "\n") {
		if strings.HasPrefix(line, prefix) {
			return true
		}
	}
	return false
}

func grepLines(body, substr string) string {
	var out []string
	for _, line := range strings.Split(body, "\n") {
		if strings.Contains(line, substr) {
			out = append(out, line)
		}
	}
	return strings.Join(out, "\n")
}

// TestEveryMetricIsInTheTable: docs/metrics.md, the one table of the platform's metric names,
// has a row for each metric the runtime registers, and no row for a knfaas_ metric of the
// runtime's families that does not exist.
func TestEveryMetricIsInTheTable(t *testing.T) {
	doc, err := os.ReadFile("../../../docs/metrics.md")
	if err != nil {
		t.Fatal(err)
	}
	table, _, _ := strings.Cut(string(doc), "\n## ") // the table comes before the first section
	rows := map[string]bool{}
	for _, line := range strings.Split(table, "\n") {
		if name, ok := strings.CutPrefix(line, "| `"); ok {
			name, _, _ = strings.Cut(name, "`")
			rows[name] = true
		}
	}
	r := New()
	r.ObserveRequest("ns", "fn", "t", 200, time.Millisecond, "") // vectors without a series are not gathered
	families, err := r.registry.Gather()
	if err != nil {
		t.Fatal(err)
	}
	registered := map[string]bool{}
	for _, f := range families {
		registered[f.GetName()] = true
	}
	for _, vec := range []prometheus.Collector{r.EventsAccepted, r.EventsRejected, r.AppendLookups, r.EventsDelivered, r.EventsRetried, r.EventsDeadLettered, r.EventsFailed, r.EventsDropped, r.EventsFiltered, r.EventsParked, r.DeadLetterFailures, r.DeliveryLatency, r.ColdStarts, r.ColdStartSeconds, r.Instances, r.PingsSent} {
		ch := make(chan *prometheus.Desc, 1)
		vec.Describe(ch)
		d := (<-ch).String()
		name, _, _ := strings.Cut(strings.TrimPrefix(d, `Desc{fqName: "`), `"`)
		registered[name] = true
	}
	for name := range registered {
		if strings.HasPrefix(name, "knfaas_") && !rows[name] {
			t.Errorf("%s is registered but has no row in docs/metrics.md", name)
		}
	}
	for name := range rows {
		if strings.HasPrefix(name, "knfaas_") && !strings.HasPrefix(name, "knfaas_notify_") && !registered[name] {
			t.Errorf("docs/metrics.md has a row for %s, which the runtime does not register", name)
		}
	}
}

// BenchmarkObserveRequest is the cost the proxy adds to each request for its RED metrics.
func BenchmarkObserveRequest(b *testing.B) {
	for _, bc := range []struct{ name, traceID string }{{"untraced", ""}, {"with exemplar", "4bf92f3577b34da6a3ce929d0e0e4736"}} {
		b.Run(bc.name, func(b *testing.B) {
			r := New()
			b.ReportAllocs()
			b.RunParallel(func(pb *testing.PB) {
				for pb.Next() {
					r.ObserveRequest("ns", "fn", "com.example.ok", 202, 3*time.Millisecond, bc.traceID)
				}
			})
		})
	}
}
