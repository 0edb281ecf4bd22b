package verify

import (
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"maps"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// base is a small, consistent platform: every reference resolves, every emitted type is routed.
var base = map[string]string{
	"config/300-redis-secret.yaml": `apiVersion: v1
kind: Secret
metadata: {name: redis, namespace: knfaas}
stringData: {password: CHANGE-ME, url: "redis://:CHANGE-ME@redis:6379/0"}
`,
	"config/400-settings.yaml": `apiVersion: v1
kind: ConfigMap
metadata: {name: settings, namespace: knfaas}
data: {mode: strict, rules.yaml: "x: 1"}
binaryData: {blob: AAE=}
`,
	"config/600-broker.yaml": manifesttest.Broker("knfaas", "default") + `spec:
  delivery:
    retry: 3
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: deadletter, namespace: knfaas}
`,
	"config/700-deadletter.yaml": ksvc("deadletter", "", `
        - name: REDIS_URL
          valueFrom:
            secretKeyRef: {name: redis, key: url}`, ""),
	"config/700-echo.yaml": ksvc("echo", `knfaas.dev/emits: "dev.knfaas.example.echo.replied"`, `
        - name: MODE
          valueFrom:
            configMapKeyRef: {name: settings, key: mode}`, `
        volumeMounts:
        - {name: rules, mountPath: /etc/rules}
      volumes:
      - name: rules
        configMap:
          name: settings
          items:
          - {key: rules.yaml, path: rules.yaml}`),
	"config/700-audit.yaml":            ksvc("audit", "", "", ""),
	"config/710-echo-sinkbinding.yaml": manifesttest.SinkBinding("knfaas", "echo", "echo", "default"),
	"config/800-tick.yaml": manifesttest.PingSource("knfaas", "tick", "* * * * *") + `  sink:
    ref: {apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}
`,
	"triggers/echo-ping.yaml": trigger("echo-ping", "echo", "", `
  filter:
    attributes: {type: dev.knative.sources.ping}`),
	"triggers/audit-replied.yaml": trigger("audit-replied", "audit", "", `
  filter:
    attributes: {type: dev.knfaas.example.echo.replied}`),
}

// annotated is the YAML that ends a block-style metadata with annotations (lines four spaces
// in), or nothing when annotations is "".
func annotated(annotations string) string {
	if annotations == "" {
		return ""
	}
	return "\n  annotations:\n    " + annotations
}

// ksvc is a function's Knative Service in the shape checkServiceShape requires; env adds
// container env items (LISTEN_ADDRESS is env[0]), rest adds lines after the container.
func ksvc(name, annotations, env, rest string) string {
	return `apiVersion: serving.knative.dev/v1
kind: Service
metadata:
  name: ` + name + `
  namespace: knfaas
  labels: {app.kubernetes.io/name: ` + name + `, app.kubernetes.io/component: test, app.kubernetes.io/part-of: knfaas, networking.knative.dev/visibility: cluster-local}` + annotated(annotations) + `
spec:
  template:
    metadata:
      annotations: {autoscaling.knative.dev/min-scale: "0", autoscaling.knative.dev/max-scale: "3"}
    spec:
      containers:
      - image: ko://example.com/fx/functions/echo
        env:
        - {name: LISTEN_ADDRESS, value: "[::]:8080"}` + env + `
        resources: {requests: {cpu: 10m, memory: 16Mi}, limits: {memory: 64Mi}}
        readinessProbe: {httpGet: {path: /health/readiness}}
        livenessProbe: {httpGet: {path: /health/liveness}}
        securityContext:
          runAsNonRoot: true
          readOnlyRootFilesystem: true
          allowPrivilegeEscalation: false
          capabilities: {drop: [ALL]}
          seccompProfile: {type: RuntimeDefault}` + rest + "\n"
}

func trigger(name, subscriber, annotations, specTail string) string {
	return `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata:
  name: ` + name + `
  namespace: knfaas` + annotated(annotations) + `
spec:
  broker: default
  subscriber:
    ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: ` + subscriber + `}` + specTail + "\n"
}

func loadFiles(t *testing.T, files map[string]string) (*manifest.Set, string) {
	t.Helper()
	dir := t.TempDir()
	for name, content := range files {
		path := filepath.Join(dir, name)
		if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	set, err := manifest.Load(filepath.Join(dir, "config"), filepath.Join(dir, "triggers"))
	if err != nil {
		t.Fatalf("fixture does not load: %v", err)
	}
	return set, dir
}

var testOptions = Options{ModuleRoot: "testdata/module", ModulePath: "example.com/fx"}

func TestCheckBaseIsClean(t *testing.T) {
	set, _ := loadFiles(t, base)
	if problems := Check(set, testOptions); len(problems) != 0 {
		t.Fatalf("the base fixture has problems: %v", problems)
	}
}

// TestCheckBrokenFixtures breaks the base in one place per case and expects exactly one
// problem, naming the file, the object and the field.
func TestCheckBrokenFixtures(t *testing.T) {
	type brokenFixture struct {
		name    string
		replace map[string]string
		file    string
		object  string
		field   string
		msg     string
	}
	tests := []brokenFixture{
		{
			name:    "trigger subscriber names a missing ksvc",
			replace: map[string]string{"triggers/echo-ping.yaml": "", "triggers/ecoh-ping.yaml": trigger("ecoh-ping", "ecoh", "", "")},
			file:    "triggers/ecoh-ping.yaml", object: "Trigger knfaas/ecoh-ping", field: "spec.subscriber.ref",
			msg: "Service knfaas/ecoh (serving.knative.dev/v1) is not defined",
		},
		{
			name: "trigger dead-letter sink names a missing ksvc",
			replace: map[string]string{"triggers/echo-ping.yaml": trigger("echo-ping", "echo", "", `
  filter:
    attributes: {type: dev.knative.sources.ping}
  delivery:
    deadLetterSink:
      ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: graveyard}`)},
			file: "triggers/echo-ping.yaml", object: "Trigger knfaas/echo-ping", field: "spec.delivery.deadLetterSink.ref",
			msg: "Service knfaas/graveyard",
		},
		{
			name:    "broker dead-letter sink names a missing ksvc",
			replace: map[string]string{"config/700-deadletter.yaml": strings.Replace(base["config/700-deadletter.yaml"], "name: deadletter", "name: dead-letter", 1)},
			file:    "config/600-broker.yaml", object: "Broker knfaas/default", field: "spec.delivery.deadLetterSink.ref",
			msg: "Service knfaas/deadletter",
		},
		{
			// The kubelet puts only data, never binaryData, in env: the pod would not start.
			name:    "env configMapKeyRef names a binaryData key",
			replace: map[string]string{"config/700-echo.yaml": strings.Replace(base["config/700-echo.yaml"], "key: mode", "key: blob", 1)},
			file:    "config/700-echo.yaml", object: "Service knfaas/echo", field: "spec.template.spec.containers[0].env[1].valueFrom.configMapKeyRef",
			msg: `ConfigMap knfaas/settings has key "blob" only in binaryData, which the kubelet never puts in env`,
		},
		{
			name:    "envFrom secretRef names a missing secret",
			replace: map[string]string{"config/700-audit.yaml": ksvc("audit", "", "", "\n        envFrom:\n        - secretRef: {name: tokens}")},
			file:    "config/700-audit.yaml", object: "Service knfaas/audit", field: "spec.template.spec.containers[0].envFrom[0].secretRef",
			msg: "Secret knfaas/tokens is not defined in the manifests (add a template under config/3xx-*)",
		},
		{
			name:    "emitted type nobody routes",
			replace: map[string]string{"config/700-audit.yaml": ksvc("audit", `knfaas.dev/emits: "dev.knfaas.example.audit.recorded"`, "", "")},
			file:    "config/700-audit.yaml", object: "Service knfaas/audit", field: "metadata.annotations[knfaas.dev/emits]",
			msg: `event type "dev.knfaas.example.audit.recorded" is emitted but no Trigger in namespace knfaas selects it`,
		},
		{
			name: "emitted type reaches only a catch-all trigger",
			replace: map[string]string{
				"config/700-audit.yaml":        ksvc("audit", `knfaas.dev/emits: "dev.knfaas.example.audit.recorded"`, "", ""),
				"triggers/deadletter-all.yaml": trigger("deadletter-all", "deadletter", "", ""),
			},
			file: "config/700-audit.yaml", object: "Service knfaas/audit", field: "metadata.annotations[knfaas.dev/emits]",
			msg: "catch-all Triggers do not count",
		},
		{
			name:    "terminal type not emitted",
			replace: map[string]string{"config/700-audit.yaml": ksvc("audit", `knfaas.dev/terminal: "dev.knfaas.example.audit.recorded"`, "", "")},
			file:    "config/700-audit.yaml", object: "Service knfaas/audit", field: "metadata.annotations[knfaas.dev/terminal]",
			msg: `"dev.knfaas.example.audit.recorded" is declared terminal but not listed in knfaas.dev/emits`,
		},
		{
			name: "trigger file not named after its subscriber",
			replace: map[string]string{
				"triggers/echo-ping.yaml": "",
				"triggers/ping-echo.yaml": strings.Replace(base["triggers/echo-ping.yaml"], "name: echo-ping", "name: ping-echo", 1),
			},
			file: "triggers/ping-echo.yaml", object: "Trigger knfaas/ping-echo", field: "metadata.name",
			msg: `does not start with its subscriber's name "echo-"`,
		},
		{
			name: "two triggers in one file",
			replace: map[string]string{
				"triggers/audit-replied.yaml": "",
				"triggers/echo-ping.yaml":     base["triggers/echo-ping.yaml"] + "---\n" + base["triggers/audit-replied.yaml"],
			},
			file: "triggers/echo-ping.yaml", object: "Trigger knfaas/echo-ping", field: "metadata.name",
			msg: "holds 2 Triggers",
		},
		{
			name: "password in a plain env value",
			replace: map[string]string{"config/700-audit.yaml": ksvc("audit", "", `
        - {name: REDIS_URL, value: "redis://:hunter2@redis:6379/0"}`, "")},
			file: "config/700-audit.yaml", object: "Service knfaas/audit", field: "spec.template.spec.containers[0].env[1].value",
			msg: "REDIS_URL carries a password in plain text",
		},
		{
			name: "trigger feeds a function its own replies",
			replace: map[string]string{"triggers/echo-ping.yaml": trigger("echo-ping", "echo", "", `
  filter:
    attributes: {type: dev.knfaas.example.echo.replied}`)},
			file: "triggers/echo-ping.yaml", object: "Trigger knfaas/echo-ping", field: "spec.filter",
			msg: `delivers "dev.knfaas.example.echo.replied" to echo, which emits that type itself: a loop`,
		},
		{
			name:    "unfiltered trigger feeds a function its own replies",
			replace: map[string]string{"triggers/echo-ping.yaml": trigger("echo-ping", "echo", "", "")},
			file:    "triggers/echo-ping.yaml", object: "Trigger knfaas/echo-ping", field: "spec.filter",
			msg: "a loop",
		},
		{
			name: "prefix filter feeds a function its own replies",
			replace: map[string]string{"triggers/echo-ping.yaml": trigger("echo-ping", "echo", "", `
  filters:
  - any:
    - exact: {type: dev.knative.sources.ping}
    - prefix: {type: dev.knfaas.example.echo.}`)},
			file: "triggers/echo-ping.yaml", object: "Trigger knfaas/echo-ping", field: "spec.filter",
			msg: "a loop",
		},
	}
	// edits each change one string in one file of the base: old becomes new.
	edits := []struct{ name, file, old, new, object, field, msg string }{
		{"trigger names a broker that does not exist", "triggers/echo-ping.yaml", "broker: default", "broker: fast", "Trigger knfaas/echo-ping", "spec.broker", "Broker knfaas/fast is not defined"},
		{"ping source sink names a missing broker", "config/800-tick.yaml", "name: default", "name: defualt", "PingSource knfaas/tick", "spec.sink.ref", "Broker knfaas/defualt"},
		{"sink binding subject names a missing ksvc", "config/710-echo-sinkbinding.yaml", "name: echo}", "name: echoes}", "SinkBinding knfaas/echo", "spec.subject", "Service knfaas/echoes is not defined"},
		{"env secretKeyRef names a missing key", "config/700-deadletter.yaml", "key: url", "key: uri", "Service knfaas/deadletter", "spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef", `Secret knfaas/redis has no key "uri" (it has password, url)`},
		{"env secretKeyRef names a missing secret", "config/700-deadletter.yaml", "name: redis", "name: redis-auth", "Service knfaas/deadletter", "spec.template.spec.containers[0].env[1].valueFrom.secretKeyRef", "Secret knfaas/redis-auth is not defined"},
		{"env configMapKeyRef names a missing key", "config/700-echo.yaml", "key: mode", "key: modes", "Service knfaas/echo", "spec.template.spec.containers[0].env[1].valueFrom.configMapKeyRef", `ConfigMap knfaas/settings has no key "modes"`},
		{"volume item names a missing configmap key", "config/700-echo.yaml", "key: rules.yaml", "key: rule.yaml", "Service knfaas/echo", "spec.template.spec.volumes[0].configMap.items[0].key", `has no key "rule.yaml"`},
		{"ko path outside a function folder", "config/700-audit.yaml", "functions/echo", "internal/tool", "Service knfaas/audit", "spec.template.spec.containers[0].image", "internal/tool is not a function folder"},
		{"ko path is a library, not package main", "config/700-audit.yaml", "functions/echo", "functions/lib", "Service knfaas/audit", "spec.template.spec.containers[0].image", "functions/lib is package lib, not package main"},
		{"ko path has no package", "config/700-audit.yaml", "functions/echo", "functions/adit", "Service knfaas/audit", "spec.template.spec.containers[0].image", "no buildable Go package in functions/adit"},
		{"ko path of another module", "config/700-audit.yaml", "example.com/fx", "example.com/other", "Service knfaas/audit", "spec.template.spec.containers[0].image", "not a package of module example.com/fx"},
		{"trigger named unlike its file", "triggers/echo-ping.yaml", "name: echo-ping", "name: echo-tick", "Trigger knfaas/echo-tick", "metadata.name", `"echo-tick" differs from its file name "echo-ping"`},
		{"function without scale bounds", "config/700-audit.yaml", `autoscaling.knative.dev/max-scale: "3"`, `autoscaling.knative.dev/target: "10"`, "Service knfaas/audit", "spec.template.metadata.annotations[autoscaling.knative.dev/max-scale]", "missing"},
		{"function without part-of label", "config/700-audit.yaml", ", app.kubernetes.io/part-of: knfaas", "", "Service knfaas/audit", "metadata.labels[app.kubernetes.io/part-of]", "missing"},
		{"function without a memory limit", "config/700-audit.yaml", ", limits: {memory: 64Mi}", "", "Service knfaas/audit", "spec.template.spec.containers[0].resources.limits.memory", "missing"},
		{"readiness probe on the wrong path", "config/700-audit.yaml", "path: /health/readiness", "path: /healthz", "Service knfaas/audit", "spec.template.spec.containers[0].readinessProbe", "must be httpGet /health/readiness"},
		{"no LISTEN_ADDRESS", "config/700-audit.yaml", "name: LISTEN_ADDRESS", "name: LISTEN_ADDR", "Service knfaas/audit", "spec.template.spec.containers[0].env", "LISTEN_ADDRESS is not set"},
		{"writable root filesystem", "config/700-audit.yaml", "readOnlyRootFilesystem: true", "readOnlyRootFilesystem: false", "Service knfaas/audit", "spec.template.spec.containers[0].securityContext.readOnlyRootFilesystem", "must be true"},
		{"capabilities not dropped", "config/700-audit.yaml", "capabilities: {drop: [ALL]}", "capabilities: {drop: [NET_RAW]}", "Service knfaas/audit", "spec.template.spec.containers[0].securityContext.capabilities", `must drop ["ALL"]`},
		{"no seccomp profile", "config/700-audit.yaml", "\n          seccompProfile: {type: RuntimeDefault}", "", "Service knfaas/audit", "spec.template.spec.containers[0].securityContext.seccompProfile.type", "must be RuntimeDefault"},
	}
	for _, e := range edits {
		tests = append(tests, brokenFixture{
			name:    e.name,
			replace: map[string]string{e.file: strings.Replace(base[e.file], e.old, e.new, 1)},
			file:    e.file, object: e.object, field: e.field,
			msg: e.msg,
		})
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			files := maps.Clone(base)
			maps.Copy(files, tc.replace)
			set, dir := loadFiles(t, files)
			problems := Check(set, testOptions)
			if len(problems) != 1 {
				t.Fatalf("got %d problems, want 1: %v", len(problems), problems)
			}
			p := problems[0]
			if want := filepath.Join(dir, tc.file); p.File != want {
				t.Errorf("file = %q, want %q", p.File, want)
			}
			if p.Object != tc.object {
				t.Errorf("object = %q, want %q", p.Object, tc.object)
			}
			if p.Field != tc.field {
				t.Errorf("field = %q, want %q", p.Field, tc.field)
			}
			if !strings.Contains(p.Msg, tc.msg) {
				t.Errorf("message = %q, want it to contain %q", p.Msg, tc.msg)
			}
			if s := p.String(); !strings.Contains(s, tc.file) || !strings.Contains(s, tc.object) || !strings.Contains(s, tc.field) {
				t.Errorf("String() = %q does not name file, object and field", s)
			}
		})
	}
}

// TestCheckAllowedFlows are shapes that look like mistakes but are not.
func TestCheckAllowedFlows(t *testing.T) {
	tests := map[string]map[string]string{
		"emitted type declared terminal": {
			"config/700-audit.yaml": ksvc("audit", `knfaas.dev/emits: "dev.knfaas.example.audit.recorded"
    knfaas.dev/terminal: "dev.knfaas.example.audit.recorded"`, "", ""),
		},
		"loop annotated as intended": {
			"triggers/echo-ping.yaml": trigger("echo-ping", "echo", "knfaas.dev/loop: intended", `
  filter:
    attributes: {type: dev.knfaas.example.echo.replied}`),
		},
		"own type filtered on another attribute too: not provably a loop": {
			"triggers/echo-ping.yaml": trigger("echo-ping", "echo", "", `
  filter:
    attributes: {type: dev.knfaas.example.echo.replied, source: elsewhere}`),
		},
		"optional secret may be absent": {
			"config/700-deadletter.yaml": ksvc("deadletter", "", `
        - name: TOKEN
          valueFrom:
            secretKeyRef: {name: tokens, key: token, optional: true}`, ""),
		},
		"optional envFrom configmap may be absent": {
			"config/700-audit.yaml": ksvc("audit", "", "", "\n        envFrom:\n        - configMapRef: {name: extra, optional: true}"),
		},
		// A cluster resolves a ref to any Addressable; only knfaas up is limited to Knative
		// Services and Brokers (manifest.ResolveOptions.RefKinds).
		"sink ref to a Kubernetes Service": {
			"config/500-legacy.yaml": "apiVersion: v1\nkind: Service\nmetadata: {name: legacy, namespace: knfaas}\nspec: {ports: [{port: 80}]}\n",
			"config/800-tick.yaml":   strings.Replace(base["config/800-tick.yaml"], "{apiVersion: eventing.knative.dev/v1, kind: Broker, name: default}", "{apiVersion: v1, kind: Service, name: legacy}", 1),
		},
		"sink by URI is not resolved": {
			"config/800-tick.yaml": manifesttest.PingSource("knfaas", "tick", "* * * * *") + `  sink: {uri: "http://example.com/"}
`,
		},
	}
	for name, replace := range tests {
		t.Run(name, func(t *testing.T) {
			files := maps.Clone(base)
			maps.Copy(files, replace)
			set, _ := loadFiles(t, files)
			if problems := Check(set, testOptions); len(problems) != 0 {
				t.Fatalf("want no problems, got %v", problems)
			}
		})
	}
}
