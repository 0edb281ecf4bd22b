package embedded

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"sync"
	"time"

	"github.com/knfaas/knfaas/internal/function/logging"
	"github.com/knfaas/knfaas/internal/runtime/serving"
)

// startServices builds the functions of the planned Services, starts a Pool for each and
// brings it to its initial scale.
func (r *Runtime) startServices(ctx context.Context) error {
	// Triggers and sinks address Services and Brokers as inside a cluster; the runtime reaches
	// those addresses in process, functions through the internal listener (internal.go).
	r.serviceHosts, r.clusterLocal = map[string]string{}, map[string]bool{}
	for _, s := range r.plan.Services {
		r.serviceHosts[serviceHost(s.Spec.Namespace, s.Spec.Name)] = s.Key()
		r.clusterLocal[s.Key()] = s.ClusterLocal
	}
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return fmt.Errorf("internal listener: %w", err)
	}
	r.listeners["internal"] = l
	r.internalAddr = l.Addr().String()
	r.token = newToken()

	// Build every ko:// image in one go.
	var paths []string
	for _, s := range r.plan.Services {
		if !slices.Contains(paths, s.ImportPath) {
			paths = append(paths, s.ImportPath)
		}
	}
	progress := serving.PrintProgress(r.opts.Out)
	if r.opts.LiveProgress {
		progress = serving.LiveProgress(r.opts.Out)
	}
	builder := &serving.Builder{Dir: r.opts.ModuleDir, Modules: r.opts.Modules, CacheDir: r.opts.CacheDir, Progress: progress}
	started := time.Now()
	// Mailpit, when a function sends mail, is built and started while the functions build.
	mailReady := r.openMailServerAsync(ctx)
	built, err := builder.Build(ctx, paths)
	if mailErr := mailReady(); err == nil {
		err = mailErr
	}
	if err != nil {
		return err
	}
	binOf := map[string]serving.Built{}
	for _, b := range built {
		binOf[b.ImportPath] = b
	}
	if len(built) > 0 {
		fmt.Fprintf(r.opts.Out, "built %d functions in %s\n", len(built), time.Since(started).Round(time.Millisecond))
	}

	var initial []warmUp
	for i := range r.plan.Services {
		s := &r.plan.Services[i]
		b := binOf[s.ImportPath]
		spec, notes, err := r.serviceSpec(s, b.Binary)
		if err != nil {
			return err
		}
		pool := serving.NewPool(spec, r.log, r.poolObserver())
		r.services[s.Key()] = pool
		fmt.Fprintln(r.opts.Out, serviceLine(s, r.addr, b.Cached))
		for _, n := range notes {
			fmt.Fprintf(r.opts.Out, "  %s\n", n)
		}
		initial = append(initial, warmUp{pool: pool, n: spec.InitialScale, where: s.Where})
	}
	return r.warmUp(initial)
}

// serviceSpec completes the planned spec with what only the run knows: the binary, the
// Service's directory with its projected volumes, the Redis URL, K_SINK's internal address,
// and the machine's PATH and temporary directory.
func (r *Runtime) serviceSpec(p *ServicePlan, binary string) (serving.Spec, []string, error) {
	spec := p.Spec
	logs, err := newServiceLog(r.opts.FunctionLogs, r.logsDir(), spec.Namespace, spec.Name, r.opts.LogFormat == logging.FormatJSON)
	if err != nil {
		return serving.Spec{}, nil, err
	}
	spec.Binary, spec.Logs = binary, logs
	spec.Dir = filepath.Join(r.opts.StateDir, spec.Namespace, spec.Name)
	if err := os.RemoveAll(spec.Dir); err != nil {
		return serving.Spec{}, nil, err
	}
	if err := os.MkdirAll(spec.Dir, 0o700); err != nil {
		return serving.Spec{}, nil, err
	}
	c := &p.source.Spec.Template.Spec.Containers[0]
	mounts, err := projectVolumes(r.plan.set, p.source, c, spec.Dir)
	if err != nil {
		return serving.Spec{}, nil, err
	}
	var notes []string
	mountPaths := make([]string, 0, len(mounts))
	for mp := range mounts {
		mountPaths = append(mountPaths, mp)
	}
	sort.Strings(mountPaths)
	for _, mp := range mountPaths {
		notes = append(notes, fmt.Sprintf("volume %s → %s", mp, mounts[mp]))
	}
	notes = append(notes, p.Notes...)
	env := rewriteMountPaths(slices.Clone(spec.Env), mounts)
	for i, kv := range env {
		if k, _, _ := strings.Cut(kv, "="); slices.Contains(p.RedisEnv, k) {
			env[i] = k + "=" + r.redisURL
		}
	}
	env = r.withObjectStore(env)
	env = r.withMailServer(env)
	env = r.withTracing(env)
	env = r.withLogging(env)
	if p.Sink != nil {
		// The function publishes over the internal listener, which stays open until every
		// function stopped: a shutdown never cuts off its publishes.
		env = append(env, "K_SINK="+r.forFunctions(p.Sink).String())
	}
	spec.Env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+spec.Dir, "TMPDIR="+os.TempDir())
	return spec, notes, nil
}

// EnvRequestMetrics set to "off" turns the Services' request metrics (RED, with exemplars) off,
// to measure what they cost; the scaling metrics stay.
const EnvRequestMetrics = "KNFAAS_REQUEST_METRICS"

// scalingObserver is the runtime's metrics without ObserveRequest, so a Pool measures no
// requests.
type scalingObserver struct{ serving.Observer }

// poolObserver is what the Pools report to: the runtime's metrics, requests included unless
// EnvRequestMetrics is "off".
func (r *Runtime) poolObserver() serving.Observer {
	if strings.EqualFold(os.Getenv(EnvRequestMetrics), "off") {
		return scalingObserver{r.metrics}
	}
	return r.metrics
}

type warmUp struct {
	pool  *serving.Pool
	n     int
	where string
}

// warmUp brings every Service to its initial scale (Knative's default is one instance) and
// fails when one never becomes ready, as a Knative Service whose first revision cannot start
// never becomes Ready.
func (r *Runtime) warmUp(initial []warmUp) error {
	started := time.Now()
	errs := make([]error, len(initial))
	var wg sync.WaitGroup
	for i, w := range initial {
		wg.Add(1)
		go func() {
			defer wg.Done()
			if err := w.pool.Warm(w.n); err != nil {
				errs[i] = fmt.Errorf("%s: %w", w.where, err)
			}
		}()
	}
	wg.Wait()
	if err := errors.Join(errs...); err != nil {
		return err
	}
	fmt.Fprintf(r.opts.Out, "every service became ready (initial scale) in %s\n", time.Since(started).Round(time.Millisecond))
	return nil
}
