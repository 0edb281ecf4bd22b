package embedded

import (
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"os"
	"path/filepath"
	"strings"
	"testing"

	duckv1 "knative.dev/pkg/apis/duck/v1"
	"sigs.k8s.io/yaml"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// resolveFixture is a Secret, a ConfigMap with binaryData and a Broker beside ksvc, a Knative
// Service in namespace ns whose container and pod spec end with the given YAML.
func resolveFixture(t *testing.T, container, pod string) *manifest.Set {
	t.Helper()
	doc := manifesttest.Docs(`apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: ns}
stringData: {token: abc}
`, `apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: ns}
data: {mode: strict}
binaryData: {blob: AAE=}
`, manifesttest.Broker("ns", "default"), `apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: ns}
spec: {ports: [{port: 80}]}
`, manifesttest.KService("{name: fn, namespace: ns}", "ko://example.com/fn")) + container + pod
	return decodeSet(t, "fn.yaml", doc)
}

// TestProjectVolumesAsTheKubelet covers what knfaas up writes now that it projects volumes with
// the manifest resolver, where it used to differ from Kubernetes.
func TestProjectVolumesAsTheKubelet(t *testing.T) {
	tests := []struct {
		name    string
		volumes string
		want    map[string]string // path under /etc/v → content
		wantErr string
	}{
		{name: "binaryData keys are files too", volumes: "      - {name: v, configMap: {name: settings}}\n",
			want: map[string]string{"mode": "strict", "blob": "\x00\x01"}},
		{name: "an item may name a binaryData key", volumes: "      - name: v\n        configMap:\n          name: settings\n          items: [{key: blob, path: b/blob.bin}]\n",
			want: map[string]string{"b/blob.bin": "\x00\x01"}},
		{name: "an optional volume skips a missing item key", volumes: "      - name: v\n        secret:\n          secretName: creds\n          optional: true\n          items: [{key: gone, path: g}, {key: token, path: t}]\n",
			want: map[string]string{"t": "abc"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := resolveFixture(t, "        volumeMounts: [{name: v, mountPath: /etc/v}]\n", "      volumes:\n"+tc.volumes)
			svc := set.Services()[0]
			mounts, err := projectVolumes(set, svc, &svc.Spec.Template.Spec.Containers[0], t.TempDir())
			if endsWithError(t, err, tc.wantErr) {
				return
			}
			local := mounts["/etc/v"]
			got := map[string]string{}
			err = filepath.WalkDir(local, func(p string, d os.DirEntry, err error) error {
				if err != nil || d.IsDir() {
					return err
				}
				data, err := os.ReadFile(p)
				rel, _ := filepath.Rel(local, p)
				got[filepath.ToSlash(rel)] = string(data)
				return err
			})
			if err != nil {
				t.Fatal(err)
			}
			if len(got) != len(tc.want) {
				t.Fatalf("files = %q, want %q", got, tc.want)
			}
			for p, want := range tc.want {
				if got[p] != want {
					t.Errorf("%s = %q, want %q", p, got[p], want)
				}
			}
		})
	}
}

// TestEnvForExpandsAsKubernetes covers $(VAR) expansion, now Kubernetes' single pass.
func TestEnvForExpandsAsKubernetes(t *testing.T) {
	tests := []struct{ name, value, want string }{
		{name: "reference", value: "$(A)-y", want: "x-y"},
		{name: "$$ escapes a reference", value: "$$(A)", want: "$(A)"},
		{name: "undefined reference stays", value: "$(NOPE)", want: "$(NOPE)"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := resolveFixture(t, "        env:\n        - {name: A, value: x}\n        - {name: B, value: '"+tc.value+"'}\n", "")
			svc := set.Services()[0]
			env, err := envFor(set, svc, &svc.Spec.Template.Spec.Containers[0])
			if err != nil {
				t.Fatal(err)
			}
			if !strings.Contains(strings.Join(env, "\n")+"\n", "\nB="+tc.want+"\n") {
				t.Errorf("env = %q, want B=%s", env, tc.want)
			}
		})
	}
}

// TestDestinationErrorsNameTheRef covers the messages of refs knfaas up cannot resolve, now the
// manifest resolver's.
func TestDestinationErrorsNameTheRef(t *testing.T) {
	set := resolveFixture(t, "", "")
	addrs := &addresses{set: set,
		brokers:  map[string]string{"ns/default": "http://broker.local/ns/default"},
		services: map[string]string{"ns/fn": "http://fn.ns.svc.cluster.local"}}
	tests := []struct{ name, dest, want, wantErr string }{
		{name: "Knative Service", dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}", want: "http://fn.ns.svc.cluster.local"},
		{name: "Broker", dest: "ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}", want: "http://broker.local/ns/default"},
		{name: "uri relative to the ref", dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}\nuri: /replies", want: "http://fn.ns.svc.cluster.local/replies"},
		{name: "missing ksvc", dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: gone}",
			wantErr: "Trigger ns/t: spec.subscriber: ref: Service ns/gone (serving.knative.dev/v1) is not defined in the manifests"},
		{name: "Kubernetes Service", dest: "ref: {apiVersion: v1, kind: Service, name: legacy}",
			wantErr: "Trigger ns/t: spec.subscriber: ref: Service ns/legacy (v1) cannot be resolved locally: only Service.serving.knative.dev and Broker.eventing.knative.dev can"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var d duckv1.Destination
			if err := yaml.Unmarshal([]byte(tc.dest), &d); err != nil {
				t.Fatal(err)
			}
			u, err := addrs.destination(&d, "ns", "Trigger ns/t: spec.subscriber")
			if tc.wantErr != "" {
				if err == nil || err.Error() != tc.wantErr {
					t.Fatalf("err = %v, want %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if u.String() != tc.want {
				t.Errorf("address = %s, want %s", u, tc.want)
			}
		})
	}
}
