package runtimetest

import (
	"os"
	"testing"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// TestRecorderManifestDecodesAndValidates loads the manifest as knfaas up does (strict
// decoding, Knative defaults and validation) and reads back names, broker and filter.
func TestRecorderManifestDecodesAndValidates(t *testing.T) {
	tests := []struct {
		name                                string
		recorder                            Recorder
		wantNamespace, wantBroker, wantType string
		wantFilter                          int
	}{
		{name: "defaults of config/", recorder: Recorder{Name: "rec", Type: "com.example.created"},
			wantNamespace: "knfaas", wantBroker: "default", wantType: "com.example.created", wantFilter: 1},
		{name: "own namespace and broker, a type with a colon", recorder: Recorder{Name: "rec-2", Type: "com.amazonaws.s3.ObjectCreated:Put", Namespace: "e2e", Broker: "events"},
			wantNamespace: "e2e", wantBroker: "events", wantType: "com.amazonaws.s3.ObjectCreated:Put", wantFilter: 1},
		{name: "filtered on the source too", recorder: Recorder{Name: "rec-3", Type: "com.github.push", Source: "/webhooks/github"},
			wantNamespace: "knfaas", wantBroker: "default", wantType: "com.github.push", wantFilter: 2},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			set, err := manifest.Load(writeManifest(t, tt.recorder.Manifest()))
			if err != nil {
				t.Fatal(err)
			}
			svcs, triggers := set.Services(), set.Triggers()
			if len(svcs) != 1 || len(triggers) != 1 {
				t.Fatalf("%d Services and %d Triggers, want one each", len(svcs), len(triggers))
			}
			svc, trg := svcs[0], triggers[0]
			env := map[string]string{}
			for _, e := range svc.Spec.Template.Spec.Containers[0].Env {
				env[e.Name] = e.Value
			}
			if svc.Name != tt.recorder.Name || svc.Namespace != tt.wantNamespace || env["RECORDER_NAME"] != tt.recorder.Name {
				t.Errorf("Service %s/%s, RECORDER_NAME %q", svc.Namespace, svc.Name, env["RECORDER_NAME"])
			}
			if trg.Name != tt.recorder.Name || trg.Namespace != tt.wantNamespace || trg.Spec.Broker != tt.wantBroker ||
				trg.Spec.Filter.Attributes["type"] != tt.wantType || trg.Spec.Filter.Attributes["source"] != tt.recorder.Source ||
				len(trg.Spec.Filter.Attributes) != tt.wantFilter || trg.Spec.Subscriber.Ref.Name != tt.recorder.Name {
				t.Errorf("Trigger %s/%s on %s, filter %v, subscriber %v", trg.Namespace, trg.Name, trg.Spec.Broker, trg.Spec.Filter.Attributes, trg.Spec.Subscriber.Ref)
			}
		})
	}
}

func writeManifest(t *testing.T, yaml string) string {
	t.Helper()
	file := t.TempDir() + "/recorder.yaml"
	if err := os.WriteFile(file, []byte(yaml), 0o600); err != nil {
		t.Fatal(err)
	}
	return file
}
