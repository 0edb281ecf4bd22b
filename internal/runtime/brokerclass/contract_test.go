package brokerclass

import (
	"strings"
	"testing"

	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
)

func TestParseContract(t *testing.T) {
	broker := `{"namespace":"ns","name":"b"}`
	trigger := func(extra string) string {
		return `{"namespace":"ns","name":"t","broker":"b","subscriber":"http://sub.ns.svc.cluster.local","replyURL":"http://ingress/ns/b"` + extra + `}`
	}
	for _, tc := range []struct {
		name, json, wantErr string
		brokers, triggers   int
	}{
		{name: "empty file is an empty contract", json: ""},
		{name: "broker and trigger", json: `{"brokers":[` + broker + `],"triggers":[` + trigger("") + `]}`, brokers: 1, triggers: 1},
		{name: "trigger of an unknown broker", json: `{"brokers":[],"triggers":[` + trigger("") + `]}`, wantErr: "broker ns/b is not in the contract"},
		{name: "broker twice", json: `{"brokers":[` + broker + `,` + broker + `]}`, wantErr: "broker ns/b listed twice"},
		{name: "relative subscriber", json: `{"brokers":[` + broker + `],"triggers":[{"namespace":"ns","name":"t","broker":"b","subscriber":"/x","replyURL":"http://i/ns/b"}]}`, wantErr: "no absolute http(s) URL"},
		{name: "bad dead-letter sink", json: `{"brokers":[` + broker + `],"triggers":[` + trigger(`,"deadLetterSink":"ftp://x"`) + `]}`, wantErr: "dead-letter sink"},
		{name: "bad backoff", json: `{"brokers":[` + broker + `],"triggers":[` + trigger(`,"delivery":{"retry":1,"backoffPolicy":"linear","backoffDelay":"soon"}`) + `]}`, wantErr: "delivery"},
		{name: "not JSON", json: `{`, wantErr: "reading the broker contract"},
		{name: "OIDC broker without an audience", json: `{"features":{"authentication-oidc":"enabled"},"brokers":[` + broker + `]}`, wantErr: "has no audience"},
		{name: "OIDC broker with its audience and policies", json: `{"features":{"authentication-oidc":"enabled"},"brokers":[{"namespace":"ns","name":"b","audience":"eventing.knative.dev/broker/ns/b","policies":[{"subjects":["system:serviceaccount:ns:a"]}]}]}`, brokers: 1},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c, err := ParseContract([]byte(tc.json))
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("error %v, want one mentioning %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if len(c.Brokers) != tc.brokers || len(c.Triggers) != tc.triggers {
				t.Fatalf("%d brokers, %d triggers; want %d, %d", len(c.Brokers), len(c.Triggers), tc.brokers, tc.triggers)
			}
		})
	}
}

// TestEncodeIsStable: the same objects in any order encode to the same bytes, so the controller
// never rewrites an unchanged contract.
func TestEncodeIsStable(t *testing.T) {
	a := Trigger{Namespace: "ns", Name: "a", Broker: "b", Subscriber: "http://a", ReplyURL: "http://i/ns/b",
		Filter: &eventingv1.TriggerFilter{Attributes: eventingv1.TriggerFilterAttributes{"type": "x", "source": "y"}}}
	z := Trigger{Namespace: "ns", Name: "z", Broker: "b", Subscriber: "http://z", ReplyURL: "http://i/ns/b"}
	b1, err := (&Contract{Brokers: []Broker{{Namespace: "ns", Name: "b"}}, Triggers: []Trigger{a, z}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	b2, err := (&Contract{Brokers: []Broker{{Namespace: "ns", Name: "b"}}, Triggers: []Trigger{z, a}}).Encode()
	if err != nil {
		t.Fatal(err)
	}
	if string(b1) != string(b2) {
		t.Fatalf("encodings differ:\n%s\n%s", b1, b2)
	}
	if _, err := ParseContract(b1); err != nil {
		t.Fatalf("an encoded contract does not parse: %v", err)
	}
}

// TestTriggerConsumerOIDC: a Trigger's OIDC identity and its subscriber's and dead-letter sink's
// audiences reach what the dispatcher delivers with; without them nothing asks for a token.
func TestTriggerConsumerOIDC(t *testing.T) {
	base := Trigger{Namespace: "ns", Name: "t", Broker: "b", Subscriber: "http://sub", DeadLetterSink: "http://dls", ReplyURL: "http://i/ns/b"}
	for _, tc := range []struct {
		name                     string
		serviceAccount, sub, dls string
		wantIdentity             string
	}{
		{name: "OIDC off: no identity, no audiences"},
		{name: "identity and both audiences", serviceAccount: "oidc-trigger-t", sub: "sub-aud", dls: "dls-aud", wantIdentity: "ns/oidc-trigger-t"},
		{name: "identity, subscriber without audience", serviceAccount: "oidc-trigger-t", dls: "dls-aud", wantIdentity: "ns/oidc-trigger-t"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			tr := base
			tr.ServiceAccount, tr.SubscriberAudience, tr.DeadLetterSinkAudience = tc.serviceAccount, tc.sub, tc.dls
			c, err := tr.Consumer()
			if err != nil {
				t.Fatal(err)
			}
			identity := ""
			if c.OIDCServiceAccount != nil {
				identity = c.OIDCServiceAccount.String()
			}
			if identity != tc.wantIdentity {
				t.Errorf("identity %q, want %q", identity, tc.wantIdentity)
			}
			if got := audienceOf(c.Subscriber.Audience); got != tc.sub {
				t.Errorf("subscriber audience %q, want %q", got, tc.sub)
			}
			if got := audienceOf(c.DeadLetter.Audience); got != tc.dls {
				t.Errorf("dead-letter sink audience %q, want %q", got, tc.dls)
			}
		})
	}
}

func audienceOf(a *string) string {
	if a == nil {
		return ""
	}
	return *a
}
