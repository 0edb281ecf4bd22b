package cli

import (
	"fmt"
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
type runFlags struct {
	addr     string
	stateDir string
}

func addRunFlags(cmd *cobra.Command, f *runFlags) {
	fl := cmd.Flags()
	fl.StringVar(&f.addr, "addr", "", "address of knfaas up, host:port (default: $"+EnvAddr+", else the running knfaas up found in the state dir)")
	fl.StringVar(&f.stateDir, "state-dir", "", "state dir of the knfaas up to find; a run started with --run-dir elsewhere is not found there (default $XDG_STATE_HOME/knfaas or ~/.local/state/knfaas)")
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
	dir := f.stateDir
	if dir == "" {
		d, err := embedded.DefaultStateDir()
		if err != nil {
			return embedded.Endpoints{}, err
		}
		dir = d
	}
	return embedded.Discover(filepath.Join(dir, embedded.RunsDir), f.explicitAddr())
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
	return rdb, nil
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
