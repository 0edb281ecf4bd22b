package ping

import (
	"strings"
	"testing"

	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
)

func TestCheckRefusesWhatAddRefuses(t *testing.T) {
	tests := []struct {
		name    string
		spec    sourcesv1.PingSourceSpec
		wantErr string
	}{
		{name: "five fields", spec: sourcesv1.PingSourceSpec{Schedule: "*/5 * * * *"}},
		{name: "seconds and a timezone", spec: sourcesv1.PingSourceSpec{Schedule: "0 */5 * * * *", Timezone: "Europe/Paris"}},
		{name: "descriptor", spec: sourcesv1.PingSourceSpec{Schedule: "@every 10s"}},
		{name: "bad schedule", spec: sourcesv1.PingSourceSpec{Schedule: "every minute"}, wantErr: `PingSource ns/tick: schedule "every minute"`},
		{name: "unknown timezone", spec: sourcesv1.PingSourceSpec{Schedule: "* * * * *", Timezone: "Mars/Olympus"}, wantErr: "Mars/Olympus"},
		{name: "data that is not base64", spec: sourcesv1.PingSourceSpec{Schedule: "* * * * *", DataBase64: "%%%"}, wantErr: "PingSource ns/tick: dataBase64"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			ps := &sourcesv1.PingSource{ObjectMeta: metav1.ObjectMeta{Namespace: "ns", Name: "tick"}, Spec: tc.spec}
			err := Check(ps)
			if tc.wantErr == "" && err != nil {
				t.Fatalf("Check: %v", err)
			}
			if tc.wantErr != "" && (err == nil || !strings.Contains(err.Error(), tc.wantErr)) {
				t.Fatalf("Check: %v, want an error containing %q", err, tc.wantErr)
			}
			if addErr := NewScheduler(nil, nil).Add(Source{PingSource: ps, SinkURL: "http://127.0.0.1:1/"}); (addErr == nil) != (err == nil) {
				t.Fatalf("Check: %v, but Add: %v", err, addErr)
			}
		})
	}
}
