package cli

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/redis/go-redis/v9"
	"github.com/spf13/cobra"

	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/runtime/embedded"
)

// EnvAddr names the address of a running `knfaas up` for every command that talks to it,
// as --addr does.
const EnvAddr = "KNFAAS_ADDR"

// runFlags find the `knfaas up` a command talks to: --addr or KNFAAS_ADDR for its address,
// REDIS_URL for its Redis, and otherwise the record the running `up` keeps in its state
// directory (see embedded.Discover).
//
// On a cluster (-n, --kubeconfig or --context given), they reach the platform through the
// Kubernetes API instead: a port-forward to the Redis Service, the API server's service proxy
// to a Knative Service or a Broker's ingress.
type runFlags struct {
	addr     string
	stateDir string
	cluster  clusterFlags
	verbose  bool
	cmd      *cobra.Command
}

func addRunFlags(cmd *cobra.Command, f *runFlags) {
	f.cmd = cmd
	addClusterFlags(cmd, &f.cluster)
	fl := cmd.Flags()
	fl.BoolVarP(&f.verbose, "verbose", "v", false, "say on standard error how knfaas up or the cluster is reached")
	fl.StringVar(&f.addr, "addr", "", "address of knfaas up, host:port (default: $"+EnvAddr+", else the running knfaas up found in the state dir)")
	fl.StringVar(&f.stateDir, "state-dir", "", "state dir of the knfaas up to find; a run started with --run-dir elsewhere is not found there (default $XDG_STATE_HOME/knfaas or ~/.local/state/knfaas)")
	_ = cmd.RegisterFlagCompletionFunc("addr", completeAddrs(f))
	_ = cmd.MarkFlagDirname("state-dir")
}

// explicitAddr is --addr, else KNFAAS_ADDR, else "".
func (f runFlags) explicitAddr() string {
	if f.addr != "" {
		return f.addr
	}
	return os.Getenv(EnvAddr)
}

// discover returns the record of the running `knfaas up` (the one on the explicit address, if
// any).
func (f runFlags) discover() (embedded.Endpoints, error) {
	runs, err := f.runsDir()
	if err != nil {
		return embedded.Endpoints{}, err
	}
	return embedded.Discover(runs, f.explicitAddr())
}

// runsDir is the runs directory under --state-dir, else under the default state dir.
func (f runFlags) runsDir() (string, error) {
	dir := f.stateDir
	if dir == "" {
		d, err := embedded.DefaultStateDir()
		if err != nil {
			return "", err
		}
		dir = d
	}
	return filepath.Join(dir, embedded.RunsDir), nil
}

// address is where `knfaas up` listens: the explicit address, else the discovered one.
func (f runFlags) address() (string, error) {
	if a := f.explicitAddr(); a != "" {
		return a, nil
	}
	ep, err := f.discover()
	if err != nil {
		return "", fmt.Errorf("%w: start knfaas up, or pass --addr (or set %s)", err, EnvAddr)
	}
	return ep.Addr, nil
}

// openRedis connects to REDIS_URL when it is set, else to the Redis of the running `knfaas up`
// (REDIS_PASSWORD and REDIS_CA_FILE apply to both). what says what is read there.
func (f runFlags) openRedis(what string) (*redis.Client, error) {
	if f.cluster.onCluster() {
		return f.openClusterRedis(what)
	}
	if os.Getenv(redisconn.EnvURL) != "" {
		rdb, err := redisconn.FromEnv()
		if err != nil {
			return nil, fmt.Errorf("%s are read from Redis: %w", what, err)
		}
		return rdb, nil
	}
	ep, err := f.discover()
	if err != nil {
		return nil, fmt.Errorf("%s are read from Redis: %s is not set and %w: start knfaas up, or set %s", what, redisconn.EnvURL, err, redisconn.EnvURL)
	}
	rdb, err := redisconn.New(ep.RedisURL, redisconn.Options{CAFile: os.Getenv(redisconn.EnvCAFile), Password: os.Getenv(redisconn.EnvPassword)})
	if err != nil {
		return nil, fmt.Errorf("%s are read from the Redis of knfaas up (pid %d): %w", what, ep.PID, err)
	}
	fmt.Fprintf(f.log(), "redis: the Redis of knfaas up (pid %d, %s)\n", ep.PID, ep.Addr)
	return rdb, nil
}

// log is standard error with --verbose, else a sink.
func (f runFlags) log() io.Writer {
	if f.cmd == nil {
		return verboseWriter(f.verbose, os.Stderr)
	}
	return verboseWriter(f.verbose, f.cmd.ErrOrStderr())
}

// context is the running command's context.
func (f runFlags) context() context.Context {
	if f.cmd != nil && f.cmd.Context() != nil {
		return f.cmd.Context()
	}
	return context.Background()
}

// openClusterRedis connects to the platform's Redis on a cluster through a port-forward; the
// forward ends with the command.
func (f runFlags) openClusterRedis(what string) (*redis.Client, error) {
	c, err := clusterConnector(f.cluster)
	if err != nil {
		return nil, fmt.Errorf("%s are read from Redis: %w", what, err)
	}
	u, stop, err := c.redisURL(f.context(), f.log())
	if err != nil {
		return nil, fmt.Errorf("%s are read from Redis: %w", what, err)
	}
	rdb, err := redisconn.New(u, redisconn.Options{CAFile: os.Getenv(redisconn.EnvCAFile), Password: os.Getenv(redisconn.EnvPassword)})
	if err != nil {
		stop()
		return nil, fmt.Errorf("%s are read from the cluster's Redis: %w", what, err)
	}
	return rdb, nil
}

// brokerTarget is where to post to Broker ref (namespace/name, or a full URL used as it is):
// the ingress of knfaas up, or on a cluster the API server's service proxy to the Broker's
// ingress. A nil transport means the caller's default.
func (f runFlags) brokerTarget(ref string) (httpTarget, error) {
	if !f.cluster.onCluster() || strings.Contains(ref, "://") {
		u, err := f.brokerURL(ref)
		if err == nil {
			fmt.Fprintf(f.log(), "http: %s\n", u)
		}
		return httpTarget{url: u}, err
	}
	ns, name, err := splitRef("--broker", ref)
	if err != nil {
		return httpTarget{}, err
	}
	c, err := clusterConnector(f.cluster)
	if err != nil {
		return httpTarget{}, err
	}
	return c.brokerTarget(f.context(), ns, name, f.log())
}

// brokerTargetAs is brokerTarget; on a cluster, when the Broker requires OIDC authentication
// (its status.address.audience is set), every request carries a token of ServiceAccount
// serviceAccount of the platform's namespace for that audience.
func (f runFlags) brokerTargetAs(ref, serviceAccount string) (httpTarget, error) {
	t, err := f.brokerTarget(ref)
	if err != nil || t.audience == "" {
		return t, err
	}
	c, err := clusterConnector(f.cluster)
	if err != nil {
		return httpTarget{}, err
	}
	return c.withToken(t, serviceAccount, f.log()), nil
}

// serviceTarget is where to post to Knative Service ref (namespace/name) at path: through knfaas
// up (see serviceURL), or on a cluster through the API server's service proxy. A nil transport
// means the caller's default.
func (f runFlags) serviceTarget(ref, path string) (httpTarget, error) {
	if !f.cluster.onCluster() {
		u, err := f.serviceURL(ref, path)
		if err == nil {
			fmt.Fprintf(f.log(), "http: %s\n", u)
		}
		return httpTarget{url: u}, err
	}
	ns, name, err := splitRef("--service", ref)
	if err != nil {
		return httpTarget{}, err
	}
	c, err := clusterConnector(f.cluster)
	if err != nil {
		return httpTarget{}, err
	}
	return c.serviceTarget(f.context(), ns, name, path, f.log())
}

// brokerURL turns --broker into the broker's ingress URL: namespace/name on the address of
// `knfaas up`, or, kept from earlier versions, a full http(s) URL used as it is.
func (f runFlags) brokerURL(ref string) (string, error) {
	if strings.Contains(ref, "://") {
		return ref, nil
	}
	ns, name, err := splitRef("--broker", ref)
	if err != nil {
		return "", err
	}
	addr, err := f.address()
	if err != nil {
		return "", err
	}
	return fmt.Sprintf("http://%s/%s/%s", addr, ns, name), nil
}

// serviceURL is the URL of a Knative Service under `knfaas up`: through the run's internal
// capability when the run is discovered (it reaches cluster-local Services too), else through
// the public ingress on the explicit address (Host <name>.<namespace>.localhost), which
// serves public Services only.
func (f runFlags) serviceURL(ref, path string) (string, error) {
	ns, name, err := splitRef("--service", ref)
	if err != nil {
		return "", err
	}
	path = "/" + strings.TrimPrefix(path, "/")
	if a := f.explicitAddr(); a != "" {
		if ep, err := f.discover(); err == nil && ep.Internal != "" {
			return fmt.Sprintf("%s/services/%s/%s%s", ep.Internal, ns, name, path), nil
		}
		_, port, ok := strings.Cut(a, ":")
		if !ok {
			return "", fmt.Errorf("--addr %q: want host:port", a)
		}
		return fmt.Sprintf("http://%s.%s.localhost:%s%s", name, ns, port, path), nil
	}
	ep, err := f.discover()
	if err != nil {
		return "", fmt.Errorf("%w: start knfaas up, or pass --addr (or set %s)", err, EnvAddr)
	}
	return fmt.Sprintf("%s/services/%s/%s%s", ep.Internal, ns, name, path), nil
}

// splitRef reads namespace/name.
func splitRef(flag, ref string) (namespace, name string, err error) {
	ns, name, ok := strings.Cut(ref, "/")
	if !ok || ns == "" || name == "" || strings.Contains(name, "/") {
		return "", "", fmt.Errorf("%s %q: want namespace/name", flag, ref)
	}
	return ns, name, nil
}

// clusterWebhookSecret is the signing secret of provider in the cluster's Secret
// webhook-secrets of namespace.
func (f runFlags) clusterWebhookSecret(namespace, provider string) (string, error) {
	c, err := clusterConnector(f.cluster)
	if err != nil {
		return "", err
	}
	return c.webhookSecret(f.context(), namespace, provider, f.log())
}
