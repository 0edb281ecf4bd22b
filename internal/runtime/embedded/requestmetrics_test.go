package embedded

import (
	"testing"

	"github.com/knfaas/knfaas/internal/runtime/metrics"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// TestRequestMetricsCanBeTurnedOff: the Pools measure requests unless KNFAAS_REQUEST_METRICS is
// off; they keep reporting scaling either way.
func TestRequestMetricsCanBeTurnedOff(t *testing.T) {
	tests := []struct {
		name, value  string
		wantRequests bool
	}{
		{"unset", "", true},
		{"on", "on", true},
		{"off", "off", false},
		{"OFF", "OFF", false},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Setenv(EnvRequestMetrics, tc.value)
			r := &Runtime{metrics: metrics.New()}
			obs := r.poolObserver()
			if _, ok := obs.(serving.RequestObserver); ok != tc.wantRequests {
				t.Errorf("observer measures requests: %v, want %v", ok, tc.wantRequests)
			}
			obs.SetInstances("ns", "svc", 1) // still the runtime's metrics
		})
	}
}
