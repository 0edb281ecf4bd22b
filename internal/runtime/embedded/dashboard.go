package embedded

import (
	"net/http"
	"sort"
	"time"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/sink"
	"github.com/knfaas/knfaas/internal/runtime/dashboard"
)

// dashboardHandler is the run's dashboard at /ui/ on the public listener (see dashboard for
// what it shows and how it refuses other sites). Redrives go to the brokers in process.
func (r *Runtime) dashboardHandler() http.Handler {
	opts := dashboard.Options{Addr: r.addr, Metrics: r.metrics, Traces: r.traces, Log: r.log}
	if r.rdb != nil && r.plan != nil {
		opts.Redis, opts.DeadLetters = r.rdb, deadletter.NewStore(r.rdb, r.plan.DeadLetters)
	}
	for key, pool := range r.services {
		opts.Services = append(opts.Services, dashboard.Service{Key: key, Instances: pool.Instances})
	}
	sort.Slice(opts.Services, func(i, j int) bool { return opts.Services[i].Key < opts.Services[j].Key })
	if r.plan != nil {
		for _, b := range r.plan.Brokers {
			opts.Brokers = append(opts.Brokers, b.Namespace+"/"+b.Name)
		}
		for _, t := range r.plan.Triggers {
			opts.Triggers = append(opts.Triggers, dashboard.Trigger{Key: t.Consumer.Key(), Broker: t.Consumer.Namespace + "/" + t.Consumer.Broker, Subscriber: t.Subscriber})
		}
	}
	const redriveTimeout = 30 * time.Second
	opts.RedriveTimeout = redriveTimeout
	opts.Publisher = func(broker string) (deadletter.Publisher, error) {
		return sink.New(r.capabilityBase()+"/brokers/"+broker, redriveTimeout)
	}
	h, err := dashboard.New(opts)
	if err != nil {
		return http.HandlerFunc(func(w http.ResponseWriter, _ *http.Request) {
			http.Error(w, "the dashboard is not served: "+err.Error(), http.StatusNotFound)
		})
	}
	return h
}
