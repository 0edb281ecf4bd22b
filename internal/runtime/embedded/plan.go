package embedded

import (
	"fmt"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"time"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	"k8s.io/apimachinery/pkg/api/meta"
	"k8s.io/apimachinery/pkg/runtime"
	eventingduckv1 "knative.dev/eventing/pkg/apis/duck/v1"
	"knative.dev/eventing/pkg/apis/eventing"
	eventingv1 "knative.dev/eventing/pkg/apis/eventing/v1"
	sourcesv1 "knative.dev/eventing/pkg/apis/sources/v1"
	"knative.dev/eventing/pkg/eventfilter"
	"knative.dev/eventing/pkg/kncloudevents"
	"knative.dev/pkg/apis"
	duckv1 "knative.dev/pkg/apis/duck/v1"
	"knative.dev/pkg/kmap"
	"knative.dev/serving/pkg/apis/autoscaling"
	servingv1 "knative.dev/serving/pkg/apis/serving/v1"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/brokerclass"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
	"github.com/knfaas/knfaas/internal/runtime/ping"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// PlanOptions are the choices of a run that its plan depends on.
type PlanOptions struct {
	// IdleTimeout is the scale-to-zero window of every Service; StartTimeout bounds how long
	// one of its instances may take to become ready.
	IdleTimeout, StartTimeout time.Duration
	// RedisURL is the Redis server the run will use; empty is the embedded one.
	RedisURL string
}

// Plan is what a run of a set of manifests does, worked out before anything runs. It holds no
// port, address, binary or file of its own: those only the run knows (see Run).
type Plan struct {
	// Services are the Knative Services, by namespace and name.
	Services []ServicePlan
	// Brokers are in load order.
	Brokers []BrokerPlan
	// Triggers are by namespace and name.
	Triggers []TriggerPlan
	// Pings are the PingSources, in load order.
	Pings []PingPlan
	// DeadLetters bounds the dead-letter store that parked events go to, from the ConfigMap
	// knfaas/deadletter-config when the manifests have it.
	DeadLetters deadletter.Options
	// Notes say what runs otherwise than on a cluster, or not at all: the Redis the run uses,
	// the Services it stands in for, the objects it loads but does not run.
	Notes []string
	// NotRun are the notes on objects loaded but not run (also in Notes): `up --strict`
	// refuses a plan that has any.
	NotRun []string

	// set is what the plan was made from; the run projects volumes from it.
	set *manifest.Set
}

// ServicePlan is one Knative Service.
type ServicePlan struct {
	// Spec is what serving needs to run the Service but for what the run adds: Binary, Dir,
	// Logs, and the run's part of the environment (the Redis URL in RedisEnv, K_SINK's internal
	// address, PATH, HOME, TMPDIR). Spec.Env is resolved from the manifests, with Knative's K_*.
	Spec serving.Spec
	// Where names the manifest object in messages.
	Where string
	// ImportPath is what the run builds: the image's ko:// import path.
	ImportPath string
	// ClusterLocal is set by networking.knative.dev/visibility: cluster-local; the public
	// listener does not serve such a Service.
	ClusterLocal bool
	// Mounts are the paths of the volume mounts the run projects into the Service's directory.
	Mounts []string
	// RedisEnv names the variables whose value points at the Redis Service of the manifests;
	// the run's Redis URL replaces it.
	RedisEnv []string
	// Sink is K_SINK, from a SinkBinding, as inside a cluster (the function gets its internal
	// address); nil without a SinkBinding.
	Sink *url.URL
	// Notes say what the Service gets otherwise than on a cluster.
	Notes []string

	// source is the manifest object.
	source *servingv1.Service
}

// Key is namespace/name.
func (p *ServicePlan) Key() string { return p.Spec.Namespace + "/" + p.Spec.Name }

// BrokerPlan is one Broker.
type BrokerPlan struct {
	Namespace, Name string
	// MaxEventBytes bounds the events its ingress accepts (broker.MaxEventBytesAnnotation).
	MaxEventBytes int64
}

// TriggerPlan is one Trigger.
type TriggerPlan struct {
	// Consumer is the consumer's configuration, without its Filter, which the run builds
	// from Filter and Filters. Its addresses are the ones inside a cluster, which the run
	// dials in process.
	Consumer broker.Trigger
	// Where names the manifest object in messages.
	Where string
	// Filter and Filters are the Trigger's filters; Filters, when set, win.
	Filter  *eventingv1.TriggerFilter
	Filters []eventingv1.SubscriptionsAPIFilter
	// Delivery is the Trigger's delivery, or its Broker's when it has none; nil is no retries
	// and no dead-letter sink.
	Delivery *eventingduckv1.DeliverySpec
	// Subscriber names the subscriber in messages: "Service <name>" or its URI.
	Subscriber string
}

// filter builds the Trigger's filter (nil delivers every event).
func (p *TriggerPlan) filter() eventfilter.Filter {
	return triggerFilter(&eventingv1.Trigger{Spec: eventingv1.TriggerSpec{Filter: p.Filter, Filters: p.Filters}})
}

// PingPlan is one PingSource, its schedule and data checked.
type PingPlan struct {
	Namespace, Name string
	// Where names the manifest object in messages.
	Where string
	// Schedule and Timezone are the cron schedule and its zone (empty: local time).
	Schedule, Timezone string
	// Sink is where the pings go, as inside a cluster; they go to its internal address.
	Sink *url.URL
	// SinkName names the sink in messages: "Service <name>" or its URI.
	SinkName string

	// source is the manifest object, which the scheduler fires.
	source *sourcesv1.PingSource
}

// NewPlan turns a loaded set of manifests into the plan of a run, or says what in the
// manifests cannot run: the file, object and field. It has no side effect.
func NewPlan(set *manifest.Set, opts PlanOptions) (*Plan, error) {
	// Every reference resolves first, as knfaas verify checks it, with what a run on this
	// machine adds (localResolve): up refuses what verify refuses, and says all of it at once.
	if err := manifest.NewResolver(set, localResolve).Check(); err != nil {
		return nil, err
	}
	p := &Plan{set: set}
	addrs := clusterAddresses(set)
	standIn := redisStandIn(set)
	svcs := set.Services()
	slices.SortFunc(svcs, func(a, b *servingv1.Service) int { return strings.Compare(a.Namespace+a.Name, b.Namespace+b.Name) })
	bound := map[*sourcesv1.SinkBinding]bool{}
	for _, s := range svcs {
		sp, err := planService(set, s, addrs, standIn, opts)
		if err != nil {
			return nil, err
		}
		if sb := sinkBindingFor(set, s); sb != nil {
			bound[sb] = true
		}
		p.Services = append(p.Services, sp)
	}
	brokers := map[string]*eventingv1.Broker{}
	for _, b := range set.Brokers() {
		maxBytes, err := broker.MaxEventBytesOf(b.Annotations)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", whereOf(set, b), err)
		}
		brokers[b.Namespace+"/"+b.Name] = b
		p.Brokers = append(p.Brokers, BrokerPlan{Namespace: b.Namespace, Name: b.Name, MaxEventBytes: maxBytes})
	}
	triggers := set.Triggers()
	slices.SortFunc(triggers, func(a, b *eventingv1.Trigger) int { return strings.Compare(a.Namespace+a.Name, b.Namespace+b.Name) })
	for _, t := range triggers {
		tp, err := planTrigger(set, t, brokers, addrs)
		if err != nil {
			return nil, err
		}
		p.Triggers = append(p.Triggers, tp)
	}
	for _, ps := range set.PingSources() {
		where := whereOf(set, ps)
		u, err := addrs.destination(&ps.Spec.Sink, ps.Namespace, where+": spec.sink")
		if err != nil {
			return nil, err
		}
		if err := ping.Check(ps); err != nil {
			return nil, fmt.Errorf("%s: %w", where, err)
		}
		p.Pings = append(p.Pings, PingPlan{
			Namespace: ps.Namespace, Name: ps.Name, Where: where, Schedule: ps.Spec.Schedule, Timezone: ps.Spec.Timezone,
			Sink: u, SinkName: destinationName(&ps.Spec.Sink), source: ps,
		})
	}
	var err error
	if p.DeadLetters, err = deadLetterOptions(set); err != nil {
		return nil, err
	}
	p.Notes, p.NotRun = planNotes(set, opts, standIn, bound)
	p.Notes = append(p.Notes, objectStoreNotes(p)...)
	p.Notes = append(p.Notes, mailServerNotes(p)...)
	return p, nil
}

// clusterAddresses gives every Service and Broker of set the address Knative gives it inside a
// cluster.
func clusterAddresses(set *manifest.Set) *addresses {
	addrs := &addresses{set: set, brokers: map[string]string{}, services: map[string]string{}}
	for _, b := range set.Brokers() {
		addrs.brokers[b.Namespace+"/"+b.Name] = inProcessBrokerURL(b.Namespace, b.Name)
	}
	for _, s := range set.Services() {
		addrs.services[s.Namespace+"/"+s.Name] = inProcessServiceURL(s.Namespace, s.Name)
	}
	return addrs
}

func planService(set *manifest.Set, s *servingv1.Service, addrs *addresses, standIn []string, opts PlanOptions) (ServicePlan, error) {
	where := whereOf(set, s)
	ps := s.Spec.Template.Spec
	c := ps.Containers[0]
	importPath, err := serving.ImportPath(c.Image)
	if err != nil {
		return ServicePlan{}, fmt.Errorf("%s: %w", where, err)
	}
	env, err := envFor(set, s, &c)
	if err != nil {
		return ServicePlan{}, err
	}
	sp := ServicePlan{
		Spec: serving.Spec{
			Namespace: s.Namespace, Name: s.Name, Env: env,
			IdleTimeout: opts.IdleTimeout, StartTimeout: opts.StartTimeout,
		},
		Where: where, ImportPath: importPath, ClusterLocal: isClusterLocal(s), source: s,
	}
	for _, m := range c.VolumeMounts {
		sp.Mounts = append(sp.Mounts, m.MountPath)
	}
	for _, kv := range env {
		k, v, _ := strings.Cut(kv, "=")
		if _, ok := rewriteRedisURL(v, standIn, ""); ok {
			sp.RedisEnv = append(sp.RedisEnv, k)
			sp.Notes = append(sp.Notes, fmt.Sprintf("env %s points at the Redis Service in the manifests; the runtime's Redis stands in", k))
		}
	}
	if sb := sinkBindingFor(set, s); sb != nil {
		u, err := addrs.destination(&sb.Spec.Sink, sb.Namespace, fmt.Sprintf("SinkBinding %s/%s: spec.sink", sb.Namespace, sb.Name))
		if err != nil {
			return ServicePlan{}, err
		}
		sp.Sink = u
		sp.Notes = append(sp.Notes, "K_SINK="+u.String()+" (SinkBinding "+sb.Name+"; the function gets its internal address)")
	}
	if p := c.ReadinessProbe; p != nil && p.HTTPGet != nil {
		sp.Spec.ReadinessPath = p.HTTPGet.Path
		if sp.Spec.ReadinessPath == "" {
			sp.Spec.ReadinessPath = "/"
		}
	}
	if ps.ContainerConcurrency != nil {
		sp.Spec.ContainerConcurrency = int(*ps.ContainerConcurrency)
	}
	if ps.TimeoutSeconds != nil {
		sp.Spec.Timeout = time.Duration(*ps.TimeoutSeconds) * time.Second
	}
	ann := s.Spec.Template.Annotations
	scale := func(a kmap.KeyPriority, key string, into *int) error {
		v := a.Value(ann)
		if v == "" {
			return nil
		}
		n, err := strconv.Atoi(v)
		if err != nil {
			return fmt.Errorf("%s: annotation %s: %w", where, key, err)
		}
		*into = n
		return nil
	}
	// Knative starts one instance unless initial-scale says otherwise; min-scale raises it.
	sp.Spec.InitialScale = 1
	for _, err := range []error{
		scale(autoscaling.MinScaleAnnotation, autoscaling.MinScaleAnnotationKey, &sp.Spec.MinScale),
		scale(autoscaling.MaxScaleAnnotation, autoscaling.MaxScaleAnnotationKey, &sp.Spec.MaxScale),
		scale(autoscaling.InitialScaleAnnotation, autoscaling.InitialScaleAnnotationKey, &sp.Spec.InitialScale),
	} {
		if err != nil {
			return ServicePlan{}, err
		}
	}
	sp.Spec.InitialScale = max(sp.Spec.InitialScale, sp.Spec.MinScale)
	return sp, nil
}

func planTrigger(set *manifest.Set, t *eventingv1.Trigger, brokers map[string]*eventingv1.Broker, addrs *addresses) (TriggerPlan, error) {
	where := whereOf(set, t)
	b, ok := brokers[t.Namespace+"/"+t.Spec.Broker]
	if !ok {
		return TriggerPlan{}, fmt.Errorf("%s: spec.broker: Broker %s/%s is not defined in the manifests", where, t.Namespace, t.Spec.Broker)
	}
	sub, err := addrs.destination(&t.Spec.Subscriber, t.Namespace, where+": spec.subscriber")
	if err != nil {
		return TriggerPlan{}, err
	}
	tp := TriggerPlan{
		Consumer: broker.Trigger{
			Namespace: t.Namespace, Name: t.Name, Broker: t.Spec.Broker,
			Subscriber: duckv1.Addressable{URL: (*apis.URL)(sub)},
			ReplyURL:   addrs.brokers[t.Namespace+"/"+t.Spec.Broker],
			Retry:      kncloudevents.NoRetries(),
		},
		Where: where, Filter: t.Spec.Filter, Filters: t.Spec.Filters,
		Delivery: t.Spec.Delivery, Subscriber: destinationName(&t.Spec.Subscriber),
	}
	if tp.Delivery == nil {
		tp.Delivery = b.Spec.Delivery
	}
	if d := tp.Delivery; d != nil {
		rc, err := kncloudevents.RetryConfigFromDeliverySpec(*d)
		if err != nil {
			return TriggerPlan{}, fmt.Errorf("%s: spec.delivery: %w", where, err)
		}
		tp.Consumer.Retry = rc
		if d.DeadLetterSink != nil {
			dls, err := addrs.destination(d.DeadLetterSink, t.Namespace, where+": delivery.deadLetterSink")
			if err != nil {
				return TriggerPlan{}, err
			}
			tp.Consumer.DeadLetter = &duckv1.Addressable{URL: (*apis.URL)(dls)}
		}
	}
	return tp, nil
}

// destinationName names a destination in messages: "Service <name>" or its URI.
func destinationName(d *duckv1.Destination) string {
	if d.Ref != nil {
		return d.Ref.Kind + " " + d.Ref.Name
	}
	if d.URI != nil {
		return d.URI.String()
	}
	return "?"
}

// planNotes says which objects the run stands in for or leaves out, in load order; notRun are
// the notes on those it leaves out.
func planNotes(set *manifest.Set, opts PlanOptions, standIn []string, bound map[*sourcesv1.SinkBinding]bool) (notes, notRun []string) {
	leftOut := func(note string) {
		notes = append(notes, note)
		notRun = append(notRun, note)
	}
	if opts.RedisURL == "" {
		notes = append(notes, "redis: embedded (miniredis), started by the run; set REDIS_URL to use a real server; embedded data is lost on exit")
	} else {
		notes = append(notes, "redis: "+redactURL(opts.RedisURL))
	}
	for _, o := range set.Objects {
		switch obj := o.Obj.(type) {
		case *eventingv1.Broker:
			notes = append(notes, brokerClassNote(o.Where(), obj))
		case *servingv1.Service, *eventingv1.Trigger, *sourcesv1.PingSource,
			*corev1.ConfigMap, *corev1.Secret, *corev1.Namespace:
			// Run, or read by what runs.
		case *sourcesv1.SinkBinding:
			if !bound[obj] {
				leftOut(o.Where() + ": its subject is no Knative Service in the loaded manifests; no function gets its K_SINK")
			}
		case *corev1.Service:
			if slices.Contains(standIn, serviceHost(obj.Namespace, obj.Name)) {
				notes = append(notes, o.Where()+": fronts a Redis StatefulSet; the runtime's Redis stands in for it")
				continue
			}
			if obj.Labels[brokerclass.ComponentLabel] == brokerclass.ComponentValue {
				notes = append(notes, o.Where()+": part of the "+brokerclass.ClassName+" Broker class; the runtime's broker, the same data plane, stands in for it")
				continue
			}
			leftOut(notRunNote(o))
		case *appsv1.StatefulSet:
			if len(standIn) > 0 && runsRedis(obj) {
				notes = append(notes, o.Where()+": runs Redis behind a Service; the runtime's Redis stands in for it")
				continue
			}
			leftOut(notRunNote(o))
		default:
			if m, err := meta.Accessor(o.Obj); err == nil && m.GetLabels()[brokerclass.ComponentLabel] == brokerclass.ComponentValue {
				notes = append(notes, o.Where()+": part of the "+brokerclass.ClassName+" Broker class; the runtime's broker, the same data plane, stands in for it")
				continue
			}
			leftOut(notRunNote(o))
		}
	}
	return notes, notRun
}

// brokerClassNote says that a Broker of any class runs as the durable Redis Streams broker,
// which is the RedisStreamBroker class's data plane on a cluster.
func brokerClassNote(where string, b *eventingv1.Broker) string {
	class := b.Annotations[eventing.BrokerClassKey]
	if class == brokerclass.ClassName {
		return where + ": class " + class + ": runs on the same data plane as on a cluster (the runtime's Redis Streams broker)"
	}
	if class == "" {
		class = "unset"
	}
	return where + ": class " + class + ": runs as the durable Redis Streams broker (the " + brokerclass.ClassName + " class's data plane on a cluster)"
}

// runsRedis reports whether a StatefulSet runs a Redis image (as redisStandIn judges it).
func runsRedis(ss *appsv1.StatefulSet) bool {
	for _, c := range ss.Spec.Template.Spec.Containers {
		if strings.Contains(c.Image, "redis") {
			return true
		}
	}
	return false
}

// RefuseNotRun is the error of `up --strict` for a plan with objects loaded but not run, or nil.
func (p *Plan) RefuseNotRun() error {
	if len(p.NotRun) == 0 {
		return nil
	}
	return fmt.Errorf("--strict: %d loaded objects would not run:\n  %s", len(p.NotRun), strings.Join(p.NotRun, "\n  "))
}

func notRunNote(o manifest.Object) string {
	return o.Where() + ": loaded, not run (knfaas up runs Knative Services, Brokers, Triggers, PingSources and SinkBindings)"
}

// whereOf names obj's file, document and object for messages.
func whereOf(set *manifest.Set, obj runtime.Object) string {
	if o := set.Origin(obj); o != nil {
		return o.Where()
	}
	return fmt.Sprintf("%T", obj)
}
