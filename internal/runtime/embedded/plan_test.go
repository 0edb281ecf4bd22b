package embedded

import (
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"net/url"
	"reflect"
	"strings"
	"testing"
	"time"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"

	"github.com/knfaas/knfaas/internal/function/eventsize"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// Manifest snippets the cases combine; each is one YAML document.
var (
	brokerDoc     = manifesttest.Broker("ns", "default")
	subscriberDoc = manifesttest.KService("{name: sub, namespace: ns}", "ko://example.com/sub")
	deadLetterDoc = manifesttest.KService("{name: dls, namespace: ns}", "ko://example.com/dls")
)

// planView is what a case compares: the plan with the trigger consumers' retry functions
// reduced to values, and without the manifest objects the run reads.
type planView struct {
	Services []ServicePlan
	Brokers  []BrokerPlan
	Triggers []triggerView
	Pings    []PingPlan
}

type triggerView struct {
	Key, Where, Subscriber, SubscriberURL, DeadLetterURL, ReplyURL string
	Attributes                                                     eventingv1.TriggerFilterAttributes
	Filters                                                        []eventingv1.SubscriptionsAPIFilter
	Retries                                                        int
	// Backoffs are the waits before the first three retries.
	Backoffs []time.Duration
}

func viewOf(p *Plan) planView {
	var v planView
	for _, s := range p.Services {
		s.source = nil
		v.Services = append(v.Services, s)
	}
	v.Brokers = p.Brokers
	for _, t := range p.Triggers {
		tv := triggerView{
			Key: t.Consumer.Key(), Where: t.Where, Subscriber: t.Subscriber, SubscriberURL: t.Consumer.Subscriber.URL.String(),
			ReplyURL: t.Consumer.ReplyURL, Filters: t.Filters, Retries: t.Consumer.Retry.RetryMax,
		}
		if t.Filter != nil && len(t.Filter.Attributes) > 0 {
			tv.Attributes = t.Filter.Attributes
		}
		if t.Consumer.DeadLetter != nil {
			tv.DeadLetterURL = t.Consumer.DeadLetter.URL.String()
		}
		for attempt := 1; attempt <= min(3, tv.Retries); attempt++ {
			tv.Backoffs = append(tv.Backoffs, t.Consumer.Retry.Backoff(attempt, nil))
		}
		v.Triggers = append(v.Triggers, tv)
	}
	for _, ps := range p.Pings {
		ps.source = nil
		v.Pings = append(v.Pings, ps)
	}
	return v
}

func mustURL(t *testing.T, raw string) *url.URL {
	t.Helper()
	u, err := url.Parse(raw)
	if err != nil {
		t.Fatal(err)
	}
	return u
}

// kEnv is the environment Knative gives every revision of Service name.
func kEnv(name string, env ...string) []string {
	return append(env, "K_SERVICE="+name, "K_CONFIGURATION="+name, "K_REVISION="+name+"-00001")
}

// TestPlan turns manifest snippets into plans. Only the parts of planView a case sets are
// compared; wantNotes must each appear among the plan's notes.
func TestPlan(t *testing.T) {
	opts := PlanOptions{IdleTimeout: 30 * time.Second, StartTimeout: 10 * time.Second}
	tests := []struct {
		name      string
		manifests string
		want      planView
		wantNotes []string
		wantErr   string
	}{
		{
			name: "service with scale, concurrency, timeout and readiness",
			manifests: `apiVersion: serving.knative.dev/v1
kind: Service
metadata: {name: fn, namespace: ns}
spec:
  template:
    metadata:
      annotations:
        autoscaling.knative.dev/min-scale: "2"
        autoscaling.knative.dev/max-scale: "5"
    spec:
      containerConcurrency: 4
      timeoutSeconds: 60
      containers:
      - image: ko://example.com/fn
        env: [{name: GREETING, value: hello}]
        readinessProbe: {httpGet: {path: /ready}}
`,
			want: planView{Services: []ServicePlan{{
				Spec: serving.Spec{
					Namespace: "ns", Name: "fn", Env: kEnv("fn", "GREETING=hello"), ReadinessPath: "/ready",
					ContainerConcurrency: 4, MinScale: 2, MaxScale: 5, InitialScale: 2, Timeout: time.Minute,
					IdleTimeout: 30 * time.Second, StartTimeout: 10 * time.Second,
				},
				Where: "m.yaml (document 1): Service ns/fn", ImportPath: "example.com/fn",
			}}},
		},
		{
			name:      "service with Knative's defaults: max-scale left to serving, one initial instance",
			manifests: manifesttest.KService("{name: fn, namespace: ns, labels: {networking.knative.dev/visibility: cluster-local}}", "ko://example.com/fn"),
			want: planView{Services: []ServicePlan{{
				Spec: serving.Spec{
					Namespace: "ns", Name: "fn", Env: kEnv("fn"), Timeout: 5 * time.Minute, InitialScale: 1,
					IdleTimeout: 30 * time.Second, StartTimeout: 10 * time.Second,
				},
				Where: "m.yaml (document 1): Service ns/fn", ImportPath: "example.com/fn", ClusterLocal: true,
			}}},
		},
		{
			name: "broker with the max-event-bytes annotation",
			manifests: manifesttest.Docs(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: small, namespace: ns, annotations: {knfaas.dev/max-event-bytes: "2048"}}
`, brokerDoc),
			want: planView{Brokers: []BrokerPlan{
				{Namespace: "ns", Name: "small", MaxEventBytes: 2048},
				{Namespace: "ns", Name: "default", MaxEventBytes: eventsize.DefaultMaxEventBytes},
			}},
		},
		{
			name: "trigger with filters, dead-letter sink and retry",
			manifests: manifesttest.Docs(brokerDoc, subscriberDoc, deadLetterDoc, manifesttest.Trigger("ns", "orders", "default")+`  filters:
  - prefix: {type: com.shop.order.}
  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sub}, uri: /orders}
  delivery:
    retry: 3
    backoffPolicy: linear
    backoffDelay: PT0.5S
    deadLetterSink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: dls}}
`),
			want: planView{Triggers: []triggerView{{
				Key: "ns/orders", Where: "m.yaml (document 4): Trigger ns/orders", Subscriber: "Service sub",
				SubscriberURL: "http://sub.ns.svc.cluster.local/orders", DeadLetterURL: "http://dls.ns.svc.cluster.local",
				ReplyURL: "http://broker-ingress.knative-eventing.svc.cluster.local/ns/default",
				Filters:  []eventingv1.SubscriptionsAPIFilter{{Prefix: map[string]string{"type": "com.shop.order."}}},
				Retries:  3, Backoffs: []time.Duration{500 * time.Millisecond, time.Second, 1500 * time.Millisecond},
			}}},
		},
		{
			name: "trigger without delivery takes its broker's, which Knative defaults",
			manifests: manifesttest.Docs(brokerDoc, manifesttest.Trigger("ns", "all", "default")+`  filter: {attributes: {type: com.shop.order.placed, source: /shop}}
  subscriber: {uri: "http://127.0.0.1:9/"}
`),
			want: planView{Triggers: []triggerView{{
				Key: "ns/all", Where: "m.yaml (document 2): Trigger ns/all", Subscriber: "http://127.0.0.1:9/",
				SubscriberURL: "http://127.0.0.1:9/", ReplyURL: "http://broker-ingress.knative-eventing.svc.cluster.local/ns/default",
				Attributes: eventingv1.TriggerFilterAttributes{"type": "com.shop.order.placed", "source": "/shop"},
				Retries:    10, Backoffs: []time.Duration{400 * time.Millisecond, 800 * time.Millisecond, 1600 * time.Millisecond},
			}}},
		},
		{
			name: "ping source",
			manifests: manifesttest.Docs(subscriberDoc, manifesttest.PingSource("ns", "tick", "*/5 * * * *")+`  timezone: Europe/Paris
  data: '{"n": 1}'
  sink: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sub}}
`),
			want: planView{Pings: []PingPlan{{
				Namespace: "ns", Name: "tick", Where: "m.yaml (document 2): PingSource ns/tick",
				Schedule: "*/5 * * * *", Timezone: "Europe/Paris",
				Sink: mustURL(t, "http://sub.ns.svc.cluster.local"), SinkName: "Service sub",
			}}},
		},
		{
			name:      "sink binding gives its subject K_SINK",
			manifests: manifesttest.Docs(brokerDoc, subscriberDoc, manifesttest.SinkBinding("ns", "sub-sink", "sub", "default")),
			want: planView{Services: []ServicePlan{{
				Spec: serving.Spec{
					Namespace: "ns", Name: "sub", Env: kEnv("sub"), Timeout: 5 * time.Minute, InitialScale: 1,
					IdleTimeout: 30 * time.Second, StartTimeout: 10 * time.Second,
				},
				Where: "m.yaml (document 2): Service ns/sub", ImportPath: "example.com/sub",
				Sink:  mustURL(t, "http://broker-ingress.knative-eventing.svc.cluster.local/ns/default"),
				Notes: []string{"K_SINK=http://broker-ingress.knative-eventing.svc.cluster.local/ns/default (SinkBinding sub-sink; the function gets its internal address)"},
			}}},
		},
		{
			name: "redis of the manifests is stood in for",
			manifests: manifesttest.Docs(manifesttest.RedisStatefulSet("ns"), manifesttest.RedisService("ns"), manifesttest.KService("{name: fn, namespace: ns}", "ko://example.com/fn")+`        env: [{name: REDIS_URL, value: "redis://redis.ns.svc.cluster.local:6379/0"}]
`),
			want: planView{Services: []ServicePlan{{
				Spec: serving.Spec{
					Namespace: "ns", Name: "fn", Env: kEnv("fn", "REDIS_URL=redis://redis.ns.svc.cluster.local:6379/0"), Timeout: 5 * time.Minute, InitialScale: 1,
					IdleTimeout: 30 * time.Second, StartTimeout: 10 * time.Second,
				},
				Where: "m.yaml (document 3): Service ns/fn", ImportPath: "example.com/fn", RedisEnv: []string{"REDIS_URL"},
				Notes: []string{"env REDIS_URL points at the Redis Service in the manifests; the runtime's Redis stands in"},
			}}},
			wantNotes: []string{
				"m.yaml (document 2): Service ns/redis: fronts a Redis StatefulSet; the runtime's Redis stands in for it",
				"m.yaml (document 1): StatefulSet ns/redis: runs Redis behind a Service; the runtime's Redis stands in for it",
			},
		},
		{
			name: "a kind the runtime does not run is a note",
			manifests: `apiVersion: apps/v1
kind: Deployment
metadata: {name: legacy, namespace: ns}
spec:
  selector: {matchLabels: {app: legacy}}
  template:
    metadata: {labels: {app: legacy}}
    spec:
      containers: [{name: legacy, image: example.com/legacy}]
`,
			wantNotes: []string{"redis: embedded (miniredis)", "m.yaml (document 1): Deployment ns/legacy: loaded, not run"},
		},
		{
			name: "a RedisStreamBroker and its class's Deployment are stood in for",
			manifests: manifesttest.Docs(`apiVersion: eventing.knative.dev/v1
kind: Broker
metadata:
  name: default
  namespace: ns
  annotations: {eventing.knative.dev/broker.class: RedisStreamBroker}
`, `apiVersion: apps/v1
kind: Deployment
metadata:
  name: redis-broker-dispatcher
  namespace: knfaas-broker
  labels: {app.kubernetes.io/component: redis-broker}
spec:
  selector: {matchLabels: {app: d}}
  template:
    metadata: {labels: {app: d}}
    spec:
      containers: [{name: d, image: example.com/d}]
`, `apiVersion: v1
kind: Service
metadata:
  name: redis-broker-ingress
  namespace: knfaas-broker
  labels: {app.kubernetes.io/component: redis-broker}
spec:
  ports: [{port: 80}]
`),
			wantNotes: []string{
				"m.yaml (document 1): Broker ns/default: class RedisStreamBroker: runs on the same data plane as on a cluster",
				"m.yaml (document 2): Deployment knfaas-broker/redis-broker-dispatcher: part of the RedisStreamBroker Broker class; the runtime's broker, the same data plane, stands in for it",
				"m.yaml (document 3): Service knfaas-broker/redis-broker-ingress: part of the RedisStreamBroker Broker class; the runtime's broker, the same data plane, stands in for it",
			},
		},
		{
			name:      "a Broker of the default class runs as the durable broker",
			manifests: brokerDoc,
			wantNotes: []string{"m.yaml (document 1): Broker ns/default: class MTChannelBasedBroker: runs as the durable Redis Streams broker (the RedisStreamBroker class's data plane on a cluster)"},
		},
		{
			name: "a ref to a Service the manifests lack names the object and field",
			manifests: manifesttest.Docs(brokerDoc, manifesttest.Trigger("ns", "orders", "default")+`  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: nope}}
`),
			wantErr: "m.yaml: Trigger ns/orders: spec.subscriber.ref: Service ns/nope (serving.knative.dev/v1) is not defined in the manifests",
		},
		{
			name: "a dead-letter sink of a kind that does not run locally",
			manifests: manifesttest.Docs(brokerDoc, subscriberDoc, manifesttest.Trigger("ns", "orders", "default")+`  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sub}}
  delivery:
    deadLetterSink: {ref: {apiVersion: messaging.knative.dev/v1, kind: InMemoryChannel, name: dlq}}
`),
			wantErr: "m.yaml: Trigger ns/orders: spec.delivery.deadLetterSink.ref: InMemoryChannel ns/dlq (messaging.knative.dev/v1) cannot be resolved locally",
		},
		{
			name: "a trigger on a broker the manifests lack",
			manifests: manifesttest.Docs(subscriberDoc, manifesttest.Trigger("ns", "orders", "other")+`  subscriber: {ref: {apiVersion: serving.knative.dev/v1, kind: Service, name: sub}}
`),
			wantErr: "m.yaml: Trigger ns/orders: spec.broker: Broker ns/other is not defined in the manifests",
		},
		{
			name: "a volume whose ConfigMap the manifests lack fails the plan, not the run",
			manifests: manifesttest.KService("{name: fn, namespace: ns}", "ko://example.com/fn") + `        volumeMounts: [{name: conf, mountPath: /etc/fn}]
      volumes: [{name: conf, configMap: {name: fn-config}}]
`,
			wantErr: "m.yaml: Service ns/fn: spec.template.spec.volumes[0].configMap: ConfigMap ns/fn-config is not defined in the manifests",
		},
		{
			name:      "a SinkBinding whose subject the manifests lack is refused, as verify refuses it",
			manifests: manifesttest.Docs(brokerDoc, manifesttest.SinkBinding("ns", "sb", "ghost", "default")),
			wantErr:   "m.yaml: SinkBinding ns/sb: spec.subject: Service ns/ghost is not defined in the manifests",
		},
		{
			name:      "an image that is not ko://",
			manifests: manifesttest.KService("{name: fn, namespace: ns}", "docker.io/library/nginx"),
			wantErr:   `m.yaml (document 1): Service ns/fn: image "docker.io/library/nginx" cannot run locally`,
		},
		{
			name: "a broker whose max-event-bytes is not a number",
			manifests: `apiVersion: eventing.knative.dev/v1
kind: Broker
metadata: {name: default, namespace: ns, annotations: {knfaas.dev/max-event-bytes: lots}}
`,
			wantErr: "m.yaml (document 1): Broker ns/default: ",
		},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			p, err := NewPlan(decodeSet(t, "m.yaml", tc.manifests), opts)
			if endsWithError(t, err, tc.wantErr) {
				return
			}
			got := viewOf(p)
			for _, part := range []struct {
				name      string
				got, want any
				set       bool
			}{
				{"services", got.Services, tc.want.Services, tc.want.Services != nil},
				{"brokers", got.Brokers, tc.want.Brokers, tc.want.Brokers != nil},
				{"triggers", got.Triggers, tc.want.Triggers, tc.want.Triggers != nil},
				{"pings", got.Pings, tc.want.Pings, tc.want.Pings != nil},
			} {
				if part.set && !reflect.DeepEqual(part.got, part.want) {
					t.Errorf("%s:\n got %+v\nwant %+v", part.name, part.got, part.want)
				}
			}
			notes := strings.Join(p.Notes, "\n")
			for _, n := range tc.wantNotes {
				if !strings.Contains(notes, n) {
					t.Errorf("notes lack %q:\n%s", n, notes)
				}
			}
		})
	}
}

// endsWithError fails t unless err is as a case wants: nil when wantErr is "", else an error
// whose message contains wantErr. It reports whether the case wanted an error, and so ends here.
func endsWithError(t *testing.T, err error, wantErr string) bool {
	t.Helper()
	if wantErr == "" {
		if err != nil {
			t.Fatal(err)
		}
		return false
	}
	if err == nil || !strings.Contains(err.Error(), wantErr) {
		t.Fatalf("err = %v, want an error containing %q", err, wantErr)
	}
	return true
}

// decodeSet is the manifest set of the YAML stream docs, read as if from file.
func decodeSet(t *testing.T, file, docs string) *manifest.Set {
	t.Helper()
	objs, errs := manifest.Decode(file, []byte(docs))
	if len(errs) > 0 {
		t.Fatalf("decoding the manifests: %v", errs[0])
	}
	return &manifest.Set{Objects: objs}
}
