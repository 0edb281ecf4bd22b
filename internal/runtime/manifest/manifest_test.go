package manifest

import (
	"github.com/knfaas/knfaas/internal/harness/manifesttest"
	"strings"
	"testing"

	servingv1 "knative.dev/serving/pkg/apis/serving/v1"
)

func TestLoadValid(t *testing.T) {
	set, err := Load("testdata/valid.yaml")
	if err != nil {
		t.Fatalf("Load: %v", err)
	}
	if got := len(set.Objects); got != 4 {
		t.Fatalf("loaded %d objects, want 4 (the comment-only document is skipped)", got)
	}
	svcs := set.Services()
	if len(svcs) != 1 {
		t.Fatalf("Services() = %d, want 1", len(svcs))
	}
	svc := svcs[0]
	// Knative's SetDefaults ran: the container got a name and the readiness probe a default.
	if got := svc.Spec.Template.Spec.Containers[0].Name; got == "" {
		t.Error("container name not defaulted; Knative SetDefaults did not run")
	}
	if got := svc.Spec.Template.Spec.Containers[0].Image; got != "ko://github.com/knfaas/knfaas/test/functions/echo" {
		t.Errorf("image = %q", got)
	}
	br := set.Brokers()[0]
	if got := br.Annotations["eventing.knative.dev/broker.class"]; got != "MTChannelBasedBroker" {
		t.Errorf("broker class = %q, want the cluster default MTChannelBasedBroker", got)
	}
	if br.Spec.Delivery == nil || br.Spec.Delivery.Retry == nil || *br.Spec.Delivery.Retry != 10 {
		t.Errorf("broker delivery = %+v, want the cluster default retry 10", br.Spec.Delivery)
	}
	trig := set.Triggers()[0]
	if trig.Spec.Subscriber.Ref.Namespace != "shop" {
		t.Errorf("trigger subscriber ref namespace = %q, want defaulted to shop", trig.Spec.Subscriber.Ref.Namespace)
	}
	if o := set.Find("serving.knative.dev", "Service", "shop", "echo"); o == nil || o.Obj != svc {
		t.Error("Find did not return the Knative Service")
	}
	var _ *servingv1.Service = svc
}

func TestLoadErrorsNameFileObjectAndField(t *testing.T) {
	tests := map[string]struct {
		yaml string
		want []string
	}{
		"unknown field": {
			yaml: manifesttest.KService("{name: echo, namespace: shop}", "ko://x/y") + `        imagePullPolicyy: Always
`,
			want: []string{"bad.yaml (document 1)", "Service shop/echo", `unknown field "spec.template.spec.containers[0].imagePullPolicyy"`},
		},
		"knative validation": {
			yaml: `apiVersion: eventing.knative.dev/v1
kind: Trigger
metadata: {name: t, namespace: shop}
spec:
  subscriber:
    uri: http://example.com
`,
			want: []string{"Trigger shop/t", "spec.broker"},
		},
		"unknown kind": {
			yaml: "apiVersion: example.com/v1\nkind: Widget\nmetadata: {name: w}\n",
			want: []string{"Widget default/w", "unknown kind"},
		},
		"missing name": {
			yaml: "apiVersion: v1\nkind: ConfigMap\nmetadata: {}\n",
			want: []string{"missing field metadata.name"},
		},
		"second document is broken": {
			yaml: "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: a}\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: b}\ndatta: {}\n",
			want: []string{"(document 2)", "ConfigMap default/b", `unknown field "datta"`},
		},
		"invalid delivery": {
			yaml: manifesttest.Broker("shop", "default") + `spec:
  delivery:
    backoffDelay: soon
`,
			want: []string{"Broker shop/default", "backoffDelay"},
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			_, errs := Decode("bad.yaml", []byte(tc.yaml))
			if len(errs) == 0 {
				t.Fatal("Decode accepted a broken document")
			}
			msg := errs[0].Error()
			for _, w := range tc.want {
				if !strings.Contains(msg, w) {
					t.Errorf("error %q does not contain %q", msg, w)
				}
			}
		})
	}
}

func TestDeliveryTimeoutIsAcceptedAsOnAFreshCluster(t *testing.T) {
	doc := manifesttest.Broker("shop", "default") + `spec:
  delivery:
    timeout: PT30S
`
	objs, errs := Decode("broker.yaml", []byte(doc))
	if len(errs) > 0 {
		t.Fatalf("delivery.timeout refused: %v (Knative's config-features enables delivery-timeout by default)", errs[0])
	}
	if len(objs) != 1 {
		t.Fatalf("decoded %d objects, want 1", len(objs))
	}
}

func TestLoadRejectsDuplicates(t *testing.T) {
	_, err := Load("testdata/valid.yaml", "testdata/valid-copy")
	if err == nil || !strings.Contains(err.Error(), "defined twice") {
		t.Fatalf("Load of the same objects twice: err = %v, want 'defined twice'", err)
	}
}
