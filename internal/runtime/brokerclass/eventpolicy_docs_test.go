// Not under the race detector: Knative's own "any" filter (eventfilter/subscriptionsapi, v0.50.0)
// reads its filter list in Cleanup without the lock its optimising goroutine takes to reorder
// that list, and auth.SubjectAndFiltersPass cleans each filter up right after one event. The
// shipped policies' "any" filters trigger it; ./hack/test.sh runs this test in its pass without
// -race.

//go:build !race

package brokerclass

import (
	"context"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"

	cloudevents "github.com/cloudevents/sdk-go/v2"
	"go.uber.org/zap"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/tools/cache"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	"knative.dev/eventing/pkg/apis/eventing/v1alpha1"
	"knative.dev/eventing/pkg/apis/feature"
	"knative.dev/eventing/pkg/auth"
	eventingv1alpha1listers "knative.dev/eventing/pkg/client/listers/eventing/v1alpha1"
	"sigs.k8s.io/yaml"
)

// shippedPolicies reads every EventPolicy in docs/eventpolicy as Knative's API server would
// admit it (strict decoding, defaults, validation with OIDC on) and resolves each "from" the
// way Knative's EventPolicy reconciler does: a SinkBinding to the OIDC ServiceAccount Knative
// gives it, a sub as written. Every policy is then Ready.
func shippedPolicies(t *testing.T) []*v1alpha1.EventPolicy {
	t.Helper()
	ctx := feature.ToContext(context.Background(), feature.Flags{feature.OIDCAuthentication: feature.Enabled})
	files, err := filepath.Glob(filepath.Join("..", "..", "..", "docs", "eventpolicy", "*.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	var policies []*v1alpha1.EventPolicy
	for _, f := range files {
		if filepath.Base(f) == "kustomization.yaml" {
			continue
		}
		raw, err := os.ReadFile(f)
		if err != nil {
			t.Fatal(err)
		}
		p := &v1alpha1.EventPolicy{}
		if err := yaml.UnmarshalStrict(raw, p); err != nil {
			t.Fatalf("%s: %v", f, err)
		}
		p.SetDefaults(ctx)
		if ferr := p.Validate(ctx); ferr != nil {
			t.Fatalf("%s: invalid EventPolicy: %v", f, ferr)
		}
		for _, from := range p.Spec.From {
			switch {
			case from.Ref != nil && from.Ref.Kind == "SinkBinding":
				gv, err := schema.ParseGroupVersion(from.Ref.APIVersion)
				if err != nil {
					t.Fatalf("%s: %v", f, err)
				}
				sa := auth.GetOIDCServiceAccountNameForResource(gv.WithKind(from.Ref.Kind), metav1.ObjectMeta{Name: from.Ref.Name, Namespace: from.Ref.Namespace})
				p.Status.From = append(p.Status.From, "system:serviceaccount:"+from.Ref.Namespace+":"+sa)
			case from.Sub != nil:
				p.Status.From = append(p.Status.From, *from.Sub)
			default:
				t.Fatalf("%s: a from this test cannot resolve: %+v", f, from)
			}
		}
		p.Status.InitializeConditions()
		p.Status.MarkOIDCAuthenticationEnabled()
		p.Status.MarkSubjectsResolvedSucceeded()
		policies = append(policies, p)
	}
	if len(policies) < 5 {
		t.Fatalf("found %d EventPolicies in docs/eventpolicy, want the shipped ones", len(policies))
	}
	return policies
}

// TestShippedEventPoliciesJudgeSendersAsDocumented evaluates docs/eventpolicy with Knative's own
// code along the path the RedisStreamBroker takes: the controller applies the policies to the
// Broker (auth.UpdateStatusWithEventPolicies) and turns the Ready ones into the contract's
// subjects and filters (auth.SubjectWithFiltersFromPolicyRef); the ingress judges a sender and
// an event with auth.SubjectAndFiltersPass, answering 403 when it fails.
func TestShippedEventPoliciesJudgeSendersAsDocumented(t *testing.T) {
	indexer := cache.NewIndexer(cache.MetaNamespaceKeyFunc, cache.Indexers{})
	for _, p := range shippedPolicies(t) {
		if err := indexer.Add(p); err != nil {
			t.Fatal(err)
		}
	}
	lister := eventingv1alpha1listers.NewEventPolicyLister(indexer)
	broker := &eventingv1.Broker{ObjectMeta: metav1.ObjectMeta{Namespace: "knfaas", Name: "default"}}
	broker.Status.InitializeConditions()
	flags := feature.Flags{feature.OIDCAuthentication: feature.Enabled}
	if err := auth.UpdateStatusWithEventPolicies(flags, &broker.Status.AppliedEventPoliciesStatus, &broker.Status, lister, eventingv1.SchemeGroupVersion.WithKind("Broker"), broker.ObjectMeta); err != nil {
		t.Fatal(err)
	}
	var applied []string
	for _, ref := range broker.Status.Policies {
		applied = append(applied, ref.Name)
	}
	if !sort.StringsAreSorted(applied) || len(applied) == 0 || applied[len(applied)-1] != "knfaas-90-everyone-else" {
		t.Fatalf("policies applied to the Broker in this order: %v; the catch-all must come last", applied)
	}
	policies, err := auth.SubjectWithFiltersFromPolicyRef(lister, "knfaas", broker.Status.Policies)
	if err != nil {
		t.Fatal(err)
	}

	sinkBinding := func(name string) string {
		return "system:serviceaccount:knfaas:" + auth.GetOIDCServiceAccountNameForResource(
			schema.GroupVersionKind{Group: "sources.knative.dev", Version: "v1", Kind: "SinkBinding"},
			metav1.ObjectMeta{Namespace: "knfaas", Name: name})
	}
	const (
		decision   = "dev.knfaas.tasks.completed"
		rejection  = "dev.knfaas.tasks.rejected"
		taskOpened = "dev.knfaas.tasks.created"
		timerFired = "dev.knfaas.timer.fired"
		mail       = "dev.knfaas.mail.requested"
		cfpMail    = "dev.knfaas.example.cfp.mail.requested"
		command    = "dev.knfaas.process.command.reserve"
		webhook    = "com.github.push"
	)
	tests := []struct {
		name    string
		sender  string
		allowed []string
		refused []string
	}{
		{name: "tasks function publishes decisions only", sender: sinkBinding("tasks"),
			allowed: []string{decision, rejection}, refused: []string{taskOpened, timerFired, mail, webhook}},
		{name: "process manager publishes commands, task openings and mail", sender: sinkBinding("process"),
			allowed: []string{taskOpened, command, mail, webhook}, refused: []string{decision, rejection, timerFired}},
		{name: "food-delivery process manager like the platform's", sender: sinkBinding("food-process"),
			allowed: []string{taskOpened, command, mail}, refused: []string{decision, timerFired}},
		{name: "cfp desk asks for its own mail only", sender: sinkBinding("cfp-desk"),
			allowed: []string{cfpMail, webhook}, refused: []string{mail, decision, taskOpened, timerFired}},
		{name: "timer publishes fired deadlines only", sender: sinkBinding("timer"),
			allowed: []string{timerFired}, refused: []string{decision, command, webhook}},
		{name: "redrive sends back any dead letter", sender: "system:serviceaccount:knfaas:knfaas-redrive",
			allowed: []string{decision, rejection, taskOpened, timerFired, mail, cfpMail, webhook}},
		{name: "webhook intake falls to the catch-all", sender: sinkBinding("webhook"),
			allowed: []string{webhook, command}, refused: []string{decision, rejection, taskOpened, timerFired, mail, cfpMail}},
		{name: "a workload elsewhere in the cluster", sender: "system:serviceaccount:shop:default",
			allowed: []string{webhook}, refused: []string{decision, timerFired, mail, cfpMail}},
		{name: "redrive identity of another namespace is no redrive", sender: "system:serviceaccount:shop:knfaas-redrive",
			allowed: []string{webhook}, refused: []string{decision, timerFired, mail}},
	}
	logger := zap.NewNop().Sugar()
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			judge := func(eventType string) bool {
				e := cloudevents.NewEvent()
				e.SetID("1")
				e.SetSource("/test")
				e.SetType(eventType)
				return auth.SubjectAndFiltersPass(context.Background(), tc.sender, policies, &e, logger)
			}
			for _, typ := range tc.allowed {
				if !judge(typ) {
					t.Errorf("%s may not send %s; the README's table says it may", tc.sender, typ)
				}
			}
			for _, typ := range tc.refused {
				if judge(typ) {
					t.Errorf("%s may send %s; the README's table says it is refused", tc.sender, typ)
				}
			}
		})
	}
	if t.Failed() {
		t.Logf("policies in Broker order: %s", strings.Join(applied, ", "))
	}
}
