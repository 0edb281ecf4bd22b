package manifest

import (
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"net/url"
	"slices"
	"strings"
	"testing"

	"k8s.io/apimachinery/pkg/runtime/schema"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
	"sigs.k8s.io/yaml"
)

// unvalidatedSet decodes docs (separated by "---" lines) into a Set without Knative's defaults
// and validation, which refuse some fields (fieldRef) the resolver must still handle.
func unvalidatedSet(t *testing.T, docs string) *Set {
	t.Helper()
	set := &Set{}
	for i, raw := range strings.Split(docs, "\n---\n") {
		var head typeAndMeta
		if err := yaml.Unmarshal([]byte(raw), &head); err != nil {
			t.Fatal(err)
		}
		gv, err := schema.ParseGroupVersion(head.APIVersion)
		if err != nil {
			t.Fatal(err)
		}
		gvk := gv.WithKind(head.Kind)
		obj, _, err := codecs.UniversalDeserializer().Decode([]byte(raw), &gvk, nil)
		if err != nil {
			t.Fatalf("document %d: %v", i+1, err)
		}
		set.Objects = append(set.Objects, Object{File: "fn.yaml", Doc: i + 1, APIVersion: head.APIVersion, Kind: head.Kind,
			Namespace: head.Metadata.Namespace, Name: head.Metadata.Name, Obj: obj})
	}
	return set
}

// sources are the Secret and ConfigMap the env and volume cases read.
const sources = `apiVersion: v1
kind: Secret
metadata: {name: creds, namespace: ns}
data: {token: b2xk, cert: Y2VydA==}
stringData: {token: abc}
---
apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: ns}
data: {mode: strict, rules.yaml: "x: 1"}
binaryData: {blob: AAE=}
---
`

// fn is a Knative Service in namespace ns whose only container has containerTail (env, envFrom,
// volumeMounts), and whose pod spec has podTail (volumes).
func fn(containerTail, podTail string) string {
	return manifesttest.KService("{name: fn, namespace: ns}", "ko://example.com/fn") +
		"        name: user-container\n" + containerTail + podTail
}

var (
	cluster = ResolveOptions{}
	local   = ResolveOptions{
		RefKinds:         LocalRefKinds,
		PodName:          func(svc *servingv1.Service) string { return svc.Name + "-pod" },
		LocalVolumesOnly: true,
	}
)

// wantErrors checks that err holds exactly one ResolveError per want ("field: message part"),
// each located in fn.yaml.
func wantErrors(t *testing.T, err error, object string, want []string) {
	t.Helper()
	got := ResolveErrors(err)
	if len(got) != len(want) || (err != nil && len(got) == 0) {
		t.Fatalf("errors = %v, want %d: %q", err, len(want), want)
	}
	for i, w := range want {
		field, msg, _ := strings.Cut(w, ": ")
		e := got[i]
		if e.File != "fn.yaml" || e.Object != object || e.Field != field || !strings.Contains(e.Msg, msg) {
			t.Errorf("error %d = %+v, want fn.yaml, %s, field %q, message containing %q", i, *e, object, field, msg)
		}
	}
}

func TestResolverEnv(t *testing.T) {
	const env0 = "spec.template.spec.containers[0].env[0]"
	tests := []struct {
		name string
		opts ResolveOptions
		env  string
		want []string // NAME=value, in order
		errs []string // "field: message part"
	}{
		{name: "literal", env: "        - {name: A, value: x}\n", want: []string{"A=x"}},
		{name: "secretKeyRef: stringData wins over data", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: token}}\n", want: []string{"TOKEN=abc"}},
		{name: "secretKeyRef from data", env: "        - name: CERT\n          valueFrom: {secretKeyRef: {name: creds, key: cert}}\n", want: []string{"CERT=cert"}},
		{name: "configMapKeyRef", env: "        - name: MODE\n          valueFrom: {configMapKeyRef: {name: settings, key: mode}}\n", want: []string{"MODE=strict"}},
		{name: "optional missing key", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: other, optional: true}}\n"},
		{name: "optional missing secret", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: nope, key: token, optional: true}}\n"},
		{name: "missing secret", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: nope, key: token}}\n",
			errs: []string{env0 + ".valueFrom.secretKeyRef: Secret ns/nope is not defined in the manifests (add a template under config/3xx-*)"}},
		{name: "missing configmap", env: "        - name: MODE\n          valueFrom: {configMapKeyRef: {name: nope, key: mode}}\n",
			errs: []string{env0 + ".valueFrom.configMapKeyRef: ConfigMap ns/nope is not defined in the manifests"}},
		{name: "missing key names the keys there are", env: "        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: other}}\n",
			errs: []string{env0 + `.valueFrom.secretKeyRef: Secret ns/creds has no key "other" (it has cert, token)`}},
		{name: "configMapKeyRef to a binaryData key", env: "        - name: BLOB\n          valueFrom: {configMapKeyRef: {name: settings, key: blob}}\n",
			errs: []string{env0 + `.valueFrom.configMapKeyRef: ConfigMap ns/settings has key "blob" only in binaryData, which the kubelet never puts in env (it has mode, rules.yaml)`}},
		{name: "every error at once", env: "        - name: A\n          valueFrom: {secretKeyRef: {name: nope, key: a}}\n        - name: B\n          valueFrom: {configMapKeyRef: {name: settings, key: b}}\n",
			errs: []string{env0 + ".valueFrom.secretKeyRef: Secret ns/nope", `spec.template.spec.containers[0].env[1].valueFrom.configMapKeyRef: ConfigMap ns/settings has no key "b"`}},
		{name: "envFrom with prefix, data keys only, env overrides", env: "        envFrom:\n        - {prefix: CFG_, configMapRef: {name: settings}}\n        - secretRef: {name: creds}\n        env:\n        - {name: token, value: mine}\n",
			want: []string{"CFG_mode=strict", "CFG_rules.yaml=x: 1", "cert=cert", "token=mine"}},
		{name: "envFrom later source overrides an earlier one", env: "        envFrom:\n        - secretRef: {name: creds}\n        - configMapRef: {name: withref}\n",
			want: []string{"cert=cert", "token=from-configmap", "v=$(A)"}},
		{name: "envFrom optional missing configmap", env: "        envFrom:\n        - configMapRef: {name: nope, optional: true}\n"},
		{name: "envFrom missing secret", env: "        envFrom:\n        - secretRef: {name: nope}\n",
			errs: []string{"spec.template.spec.containers[0].envFrom[0].secretRef: Secret ns/nope is not defined in the manifests"}},
		{name: "fieldRef name and namespace, locally", opts: local, env: "        - name: POD\n          valueFrom: {fieldRef: {fieldPath: metadata.name}}\n        - name: NS\n          valueFrom: {fieldRef: {fieldPath: metadata.namespace}}\n",
			want: []string{"POD=fn-pod", "NS=ns"}},
		{name: "fieldRef the kubelet fills, on a cluster", opts: cluster, env: "        - name: POD\n          valueFrom: {fieldRef: {fieldPath: metadata.name}}\n        - name: IP\n          valueFrom: {fieldRef: {fieldPath: status.podIP}}\n"},
		{name: "fieldRef only a kubelet fills, locally", opts: local, env: "        - name: IP\n          valueFrom: {fieldRef: {fieldPath: status.podIP}}\n",
			errs: []string{env0 + `.valueFrom.fieldRef.fieldPath: "status.podIP" is not available locally`}},
		{name: "resourceFieldRef, on a cluster", opts: cluster, env: "        - name: MEM\n          valueFrom: {resourceFieldRef: {resource: limits.memory}}\n"},
		{name: "resourceFieldRef, locally", opts: local, env: "        - name: MEM\n          valueFrom: {resourceFieldRef: {resource: limits.memory}}\n",
			errs: []string{env0 + ".valueFrom.resourceFieldRef: not available locally"}},
		{name: "$(VAR) expansion", env: "        envFrom:\n        - configMapRef: {name: settings}\n        env:\n        - {name: A, value: x}\n        - {name: B, value: $(A)-$(mode)-$(C)}\n        - {name: C, value: c}\n",
			want: []string{"mode=strict", "rules.yaml=x: 1", "A=x", "B=x-strict-$(C)", "C=c"}},
		{name: "$$ escapes, unclosed stays", env: "        - {name: A, value: x}\n        - {name: B, value: $$(A) $$$(A) $(A $5 $}\n", want: []string{"A=x", "B=$(A) $x $(A $5 $"}},
		{name: "valueFrom is not expanded", env: "        - {name: A, value: x}\n        - {name: B, valueFrom: {configMapKeyRef: {name: withref, key: v}}}\n", want: []string{"A=x", "B=$(A)"}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			container := "        env:\n" + tc.env
			if strings.HasPrefix(tc.env, "        envFrom:") {
				container = tc.env
			}
			withRef := "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: withref, namespace: ns}\ndata: {v: $(A), token: from-configmap}\n---\n"
			set := unvalidatedSet(t, sources+withRef+fn(container, ""))
			env, err := NewResolver(set, tc.opts).Env(set.Services()[0], 0)
			wantErrors(t, err, "Service ns/fn", tc.errs)
			var got []string
			for _, e := range env {
				got = append(got, e.Name+"="+e.Value)
			}
			if !slices.Equal(got, tc.want) {
				t.Errorf("env = %q, want %q", got, tc.want)
			}
		})
	}
}

func TestResolverVolumes(t *testing.T) {
	type file struct{ path, data string }
	tests := []struct {
		name    string
		opts    ResolveOptions
		volumes string
		want    map[string][]file // volume → files
		errs    []string
	}{
		{name: "secret without items: every key", volumes: "      - {name: v, secret: {secretName: creds}}\n",
			want: map[string][]file{"v": {{"cert", "cert"}, {"token", "abc"}}}},
		{name: "volume items, binaryData too, paths kept inside", volumes: "      - name: v\n        configMap:\n          name: settings\n          items:\n          - {key: rules.yaml, path: conf/rules.yaml}\n          - {key: blob, path: ../../blob.bin}\n",
			want: map[string][]file{"v": {{"conf/rules.yaml", "x: 1"}, {"blob.bin", "\x00\x01"}}}},
		{name: "optional missing configmap: empty", volumes: "      - {name: v, configMap: {name: nope, optional: true}}\n", want: map[string][]file{"v": nil}},
		{name: "optional missing item key: skipped", volumes: "      - name: v\n        secret:\n          secretName: creds\n          optional: true\n          items:\n          - {key: other, path: o}\n          - {key: cert, path: c}\n",
			want: map[string][]file{"v": {{"c", "cert"}}}},
		{name: "emptyDir", volumes: "      - {name: v, emptyDir: {}}\n", want: map[string][]file{"v": nil}},
		{name: "missing configmap", volumes: "      - {name: v, configMap: {name: nope}}\n",
			errs: []string{"spec.template.spec.volumes[0].configMap: ConfigMap ns/nope is not defined in the manifests"}},
		{name: "missing item key", volumes: "      - name: v\n        configMap:\n          name: settings\n          items:\n          - {key: rule.yaml, path: r}\n",
			errs: []string{`spec.template.spec.volumes[0].configMap.items[0].key: ConfigMap ns/settings has no key "rule.yaml" (it has blob, mode, rules.yaml)`}},
		{name: "unmounted volume is resolved too", volumes: "      - {name: v, emptyDir: {}}\n      - {name: w, secret: {secretName: nope}}\n",
			errs: []string{"spec.template.spec.volumes[1].secret: Secret ns/nope is not defined"}},
		{name: "projected volume, on a cluster", opts: cluster, volumes: "      - {name: v, projected: {sources: []}}\n", want: map[string][]file{"v": nil}},
		{name: "projected volume, locally", opts: local, volumes: "      - {name: v, projected: {sources: []}}\n",
			errs: []string{`spec.template.spec.volumes[0]: volume "v": only configMap, secret and emptyDir volumes run locally`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := unvalidatedSet(t, sources+fn("        volumeMounts:\n        - {name: v, mountPath: /etc/v}\n", "      volumes:\n"+tc.volumes))
			svc := set.Services()[0]
			mounts, err := NewResolver(set, tc.opts).Mounts(svc, 0)
			wantErrors(t, err, "Service ns/fn", tc.errs)
			if err != nil {
				return
			}
			if len(mounts) != 1 || mounts[0].MountPath != "/etc/v" || mounts[0].Volume.Name != "v" {
				t.Fatalf("mounts = %+v, want volume v at /etc/v", mounts)
			}
			var got []file
			for _, f := range mounts[0].Volume.Files {
				got = append(got, file{f.Path, string(f.Data)})
			}
			if !slices.Equal(got, tc.want["v"]) {
				t.Errorf("files = %q, want %q", got, tc.want["v"])
			}
		})
	}
}

func TestResolverMountNamesNoVolume(t *testing.T) {
	set := unvalidatedSet(t, fn("        volumeMounts:\n        - {name: gone, mountPath: /etc/v}\n", ""))
	_, err := NewResolver(set, local).Mounts(set.Services()[0], 0)
	wantErrors(t, err, "Service ns/fn", []string{`spec.template.spec.containers[0].volumeMounts[0].name: "gone" names no volume`})
}

func TestResolverDestination(t *testing.T) {
	objects := manifesttest.Docs(`apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn, namespace: ns}
spec: {template: {spec: {containers: [{image: ko://example.com/fn}]}}}
`, manifesttest.Broker("ns", "default"), `apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: ns}`)
	set := unvalidatedSet(t, objects)
	base, _ := url.Parse("http://fn.ns.svc.cluster.local")
	tests := []struct {
		name    string
		opts    ResolveOptions
		dest    string // YAML of the Destination
		want    string // Kind namespace/name of the target, or "" for none
		address string // Address(base) when want is set, else Address(nil); "" skips
		err     string
	}{
		{name: "Knative Service on a cluster", opts: cluster, dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}", want: "Service ns/fn"},
		{name: "Knative Service locally", opts: local, dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}", want: "Service ns/fn"},
		{name: "Broker locally", opts: local, dest: "ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default, namespace: ns}", want: "Broker ns/default"},
		{name: "Kubernetes Service accepted on a cluster", opts: cluster, dest: "ref: {apiVersion: v1, kind: Service, name: legacy}", want: "Service ns/legacy"},
		{name: "Kubernetes Service refused locally", opts: local, dest: "ref: {apiVersion: v1, kind: Service, name: legacy}",
			err: "ref: Service ns/legacy (v1) cannot be resolved locally: only Service.serving.knative.dev and Broker.eventing.knative.dev can"},
		{name: "undefined ksvc on a cluster", opts: cluster, dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: gone}",
			err: "ref: Service ns/gone (serving.knative.dev/v1) is not defined in the manifests"},
		{name: "undefined ksvc locally", opts: local, dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: gone}",
			err: "ref: Service ns/gone (serving.knative.dev/v1) is not defined in the manifests"},
		{name: "ref in another namespace", opts: cluster, dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn, namespace: other}",
			err: "Service other/fn (serving.knative.dev/v1) is not defined"},
		{name: "uri only", opts: local, dest: "uri: http://example.com/hook", address: "http://example.com/hook"},
		{name: "uri relative to the ref", opts: local, dest: "ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}\nuri: /replies?x=1", want: "Service ns/fn", address: "http://fn.ns.svc.cluster.local/replies?x=1"},
		{name: "neither ref nor uri", opts: cluster, dest: "{}", err: "destination has neither ref nor uri"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			var d duckv1.Destination
			if err := yaml.Unmarshal([]byte(tc.dest), &d); err != nil {
				t.Fatal(err)
			}
			target, err := NewResolver(set, tc.opts).Destination(d, "ns")
			if tc.err != "" {
				if err == nil || err.Error() != tc.err && !strings.Contains(err.Error(), tc.err) {
					t.Fatalf("err = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			got := ""
			if target.Ref != nil {
				got = target.Ref.Ref()
			}
			if got != tc.want {
				t.Errorf("target = %q, want %q", got, tc.want)
			}
			if tc.address != "" {
				b := base
				if target.Ref == nil {
					b = nil
				}
				if a := target.Address(b); a.String() != tc.address {
					t.Errorf("address = %q, want %q", a, tc.address)
				}
			}
		})
	}
}

// TestResolverCheckAgreesAcrossOptions holds Check to its promise: for a cluster (verify) and
// for this machine (knfaas up) it finds the same problems, except where an option says why not.
func TestResolverCheckAgreesAcrossOptions(t *testing.T) {
	platform := manifesttest.Docs(manifesttest.Broker("ns", "default")+`spec:
  delivery:
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}
`, `apiVersion: v1
kind: Service
metadata: {name: legacy, namespace: ns}
`, manifesttest.PingSource("ns", "tick", "* * * * *")+`  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
`, manifesttest.SinkBinding("ns", "fn", "fn", "default"), "")
	trigger := func(spec string) string {
		return "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t, namespace: ns}\nspec:\n" + spec + "\n---\n"
	}
	const toFn = "  broker: default\n  subscriber:\n    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: fn}"
	tests := []struct {
		name    string
		docs    string
		cluster []string // "Object: field: message part"
		local   []string
	}{
		{name: "every reference resolves", docs: trigger(toFn) + fn("        env:\n        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: token}}\n", "")},
		{name: "trigger names a missing broker", docs: trigger(strings.Replace(toFn, "default", "fast", 1)) + fn("", ""),
			cluster: []string{"Trigger ns/t: spec.broker: Broker ns/fast is not defined"},
			local:   []string{"Trigger ns/t: spec.broker: Broker ns/fast is not defined"}},
		{name: "dead-letter sink names a missing ksvc", docs: trigger(toFn+"\n  delivery:\n    deadLetterSink:\n      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: gone}") + fn("", ""),
			cluster: []string{"Trigger ns/t: spec.delivery.deadLetterSink.ref: Service ns/gone"},
			local:   []string{"Trigger ns/t: spec.delivery.deadLetterSink.ref: Service ns/gone"}},
		{name: "sink binding subject missing", docs: strings.Replace(platform, "kind: Service, name: fn}\n  sink", "kind: Service, name: gone}\n  sink", 1) + fn("", ""),
			cluster: []string{"SinkBinding ns/fn: spec.subject: Service ns/gone is not defined"},
			local:   []string{"SinkBinding ns/fn: spec.subject: Service ns/gone is not defined"}},
		{name: "missing secret key", docs: fn("        env:\n        - name: TOKEN\n          valueFrom: {secretKeyRef: {name: creds, key: other}}\n", ""),
			cluster: []string{`Service ns/fn: spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef: Secret ns/creds has no key "other"`},
			local:   []string{`Service ns/fn: spec.template.spec.containers[0].env[0].valueFrom.secretKeyRef: Secret ns/creds has no key "other"`}},
		{name: "RefKinds: a Kubernetes Service exists on a cluster but does not run locally", docs: trigger(strings.Replace(toFn, "serving.knative.dev/v1, kind: Service, name: fn", "v1, kind: Service, name: legacy", 1)) + fn("", ""),
			local: []string{"Trigger ns/t: spec.subscriber.ref: Service ns/legacy (v1) cannot be resolved locally"}},
		{name: "PodName: the kubelet fills status.podIP on a cluster only", docs: fn("        env:\n        - name: IP\n          valueFrom: {fieldRef: {fieldPath: status.podIP}}\n", ""),
			local: []string{`Service ns/fn: spec.template.spec.containers[0].env[0].valueFrom.fieldRef.fieldPath: "status.podIP" is not available locally`}},
		{name: "LocalVolumesOnly: a cluster provides projected volumes", docs: fn("", "      volumes:\n      - {name: v, projected: {sources: []}}\n"),
			local: []string{`Service ns/fn: spec.template.spec.volumes[0]: volume "v": only configMap, secret and emptyDir`}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			set := unvalidatedSet(t, sources+platform+tc.docs)
			for _, run := range []struct {
				name string
				opts ResolveOptions
				want []string
			}{{"cluster", cluster, tc.cluster}, {"local", local, tc.local}} {
				errs := ResolveErrors(NewResolver(set, run.opts).Check())
				if len(errs) != len(run.want) {
					t.Errorf("%s: errors = %v, want %q", run.name, errs, run.want)
					continue
				}
				for i, w := range run.want {
					if got := errs[i].Object + ": " + errs[i].Field + ": " + errs[i].Msg; errs[i].File != "fn.yaml" || !strings.Contains(got, w) {
						t.Errorf("%s: error %d = %s, want it in fn.yaml and containing %q", run.name, i, errs[i], w)
					}
				}
			}
		})
	}
}
