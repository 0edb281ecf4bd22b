package embedded

import (
	"context"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/knfaas/knfaas/internal/runtime/dashboard"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// serve starts serving, delivering and firing what start set up, and blocks until ctx ends,
// then shuts down in order.
func (r *Runtime) serve(ctx context.Context) error {
	ctx, cancel := context.WithCancel(ctx)
	defer cancel()
	var bg sync.WaitGroup
	bg.Add(1)
	go func() { defer bg.Done(); r.advanceEmbeddedClock(ctx) }()

	storeCtx, stopStore := context.WithCancel(context.Background())
	storeDone := make(chan struct{})
	go func() { r.store.Run(storeCtx, 4); close(storeDone) }()

	var servers []*http.Server
	serveOn := func(l net.Listener, h http.Handler) {
		srv := serving.NewServer(h)
		servers = append(servers, srv)
		go func() {
			if err := srv.Serve(l); err != nil && !errors.Is(err, http.ErrServerClosed) {
				r.log.Error("server failed", "addr", l.Addr(), "error", err)
			}
		}()
	}
	serviceCtx, stopServices := context.WithCancel(context.Background())
	var svcWG sync.WaitGroup
	for key, pool := range r.services {
		svcWG.Add(1)
		go func() { defer svcWG.Done(); pool.Run(serviceCtx) }()
		if pl := r.pipes[key]; pl != nil {
			serveOn(pl, pool)
		}
	}
	if r.brokerPipe != nil {
		serveOn(r.brokerPipe, r.ingress)
	}
	serveOn(r.listeners["internal"], r.internalHandler())
	// Spans are forwarded (when configured) until the runtime's own last ones are flushed.
	forwardCtx, stopForwarding := context.WithCancel(context.Background())
	defer stopForwarding()
	if r.traces != nil {
		bg.Add(1)
		go func() { defer bg.Done(); r.traces.Run(forwardCtx) }()
	}
	consumerCtx, stopConsumers := context.WithCancel(context.Background())
	var consWG sync.WaitGroup
	for _, c := range r.consumers {
		consWG.Add(1)
		go func() {
			defer consWG.Done()
			if err := c.Run(consumerCtx); err != nil {
				r.log.Error("trigger consumer stopped", "error", err)
			}
		}()
	}
	bg.Add(1)
	go func() { defer bg.Done(); r.ingress.Maintain(ctx, r.rdb, 5*time.Second, r.opts.MaxBacklog) }()
	r.pings.Start()
	fmt.Fprintf(r.opts.Out, "listening on http://%s (ingress: Host <service>.<namespace>.localhost; brokers: /<namespace>/<broker>; metrics: /metrics; dashboard: /ui/)\n", r.addr)
	fmt.Fprintf(r.opts.Out, "internal: cluster-local services are not served on http://%s; Triggers, replies and dead letters reach every Service and Broker in process (http://<service>.<namespace>.svc.cluster.local, http://%s/<namespace>/<broker>); functions (K_SINK, pings) and operators use %s/services/<namespace>/<service>/ and %s/brokers/<namespace>/<broker> (capability drawn per run; without it: 403)\n",
		r.addr, brokerIngressHost, r.capabilityBase(), r.capabilityBase())
	if r.opts.StateDir != "" {
		if err := WriteEndpoints(r.opts.StateDir, r.endpoints(time.Now())); err != nil {
			r.log.Error("the CLI will not find this run", "error", err)
		}
	}
	// The public router (and so /healthz) goes live last: whoever waits for it finds the
	// addresses printed and the discovery record the CLI reads already written.
	router := r.router()
	r.public.Store(&router)
	if r.opts.Ready != nil {
		close(r.opts.Ready)
	}

	<-ctx.Done()
	// Intake stops first: pings and the public listener. The paths deliveries, replies, dead
	// letters and function publishes take stay open until those have finished: an event is
	// never failed (and so dead-lettered) because the runtime is stopping.
	fmt.Fprintln(r.opts.Out, "shutting down: stopping intake")
	r.pings.Stop()
	stage := func(d time.Duration) (context.Context, context.CancelFunc) {
		return context.WithTimeout(context.Background(), d)
	}
	publicCtx, cancelPublic := stage(15 * time.Second)
	_ = r.publicServer.Shutdown(publicCtx)
	cancelPublic()
	// Deliveries in flight finish (within the consumers' grace), their replies and dead
	// letters going to the broker ingress and the dead-letter sink in process.
	stopConsumers()
	consWG.Wait()
	fmt.Fprintln(r.opts.Out, "shutting down: deliveries finished; stopping functions")
	// Functions stop while the internal listener still takes their publishes.
	stopServices()
	svcWG.Wait()
	serversCtx, cancelServers := stage(5 * time.Second)
	r.flushTraces(serversCtx)
	stopForwarding()
	for _, srv := range servers {
		_ = srv.Shutdown(serversCtx)
	}
	cancelServers()
	// Last, the store: everything accepted until now is written.
	stopStore()
	<-storeDone
	cancel()
	bg.Wait()
	_ = r.rdb.Close()
	if r.mini != nil {
		r.mini.Close()
	}
	r.closeObjectStore()
	r.closeMailServer()
	fmt.Fprintln(r.opts.Out, "stopped")
	return nil
}

// router sends requests for <service>.<namespace>.localhost to the ksvc, /metrics to the
// metrics, /ui/ to the dashboard, and everything else to the broker ingress.
func (r *Runtime) router() http.Handler {
	metricsHandler := r.metrics.Handler()
	dashboardHandler := r.dashboardHandler()
	return http.HandlerFunc(func(w http.ResponseWriter, req *http.Request) {
		host := req.Host
		if h, _, err := net.SplitHostPort(host); err == nil {
			host = h
		}
		if strings.HasSuffix(host, ".localhost") {
			parts := strings.Split(strings.TrimSuffix(host, ".localhost"), ".")
			if len(parts) == 2 {
				key := parts[1] + "/" + parts[0]
				if r.clusterLocal[key] {
					notPublic(w, key)
					return
				}
				if svc, ok := r.services[key]; ok {
					svc.ServeHTTP(w, req)
					return
				}
			}
			http.Error(w, fmt.Sprintf("no Knative Service for host %s (want <service>.<namespace>.localhost)", req.Host), http.StatusNotFound)
			return
		}
		switch req.URL.Path {
		case "/metrics":
			metricsHandler.ServeHTTP(w, req)
			return
		case "/healthz":
			_, _ = io.WriteString(w, "ok")
			return
		}
		if strings.HasPrefix(req.URL.Path, dashboard.Prefix) || req.URL.Path+"/" == dashboard.Prefix {
			dashboardHandler.ServeHTTP(w, req)
			return
		}
		r.ingress.ServeHTTP(w, req)
	})
}
