package brokerclass

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"
	"time"

	"github.com/kelseyhightower/envconfig"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/function/redisconn"
	"github.com/knfaas/knfaas/internal/runtime/broker"
)

// DataPlaneEnv is the data plane's configuration, from the environment its Deployment sets
// (REDIS_URL and REDIS_PASSWORD come from the redis Secret, read by redisconn).
type DataPlaneEnv struct {
	// ContractPath is where the contract ConfigMap's key is mounted.
	ContractPath string `envconfig:"CONTRACT_PATH" default:"/etc/redis-broker/contract.json"`
	// ListenAddress serves the ingress (and, on both, health and metrics).
	ListenAddress string `envconfig:"LISTEN_ADDRESS" default:":8080"`
	// PodName names this replica: the consumer in every group, the owner of trim leases.
	PodName string `envconfig:"POD_NAME"`
	// MaxBacklog: a Broker whose stream holds more entries answers 503 (0: no limit).
	MaxBacklog int64 `envconfig:"MAX_BACKLOG" default:"1000000"`
	// AppendTimeout bounds storing one event.
	AppendTimeout time.Duration `envconfig:"APPEND_TIMEOUT" default:"2s"`
	// RedeliverAfter: an entry pending this long (a failed round, a replica gone) is delivered again.
	RedeliverAfter time.Duration `envconfig:"REDELIVER_AFTER" default:"30s"`
	// Parallelism bounds the deliveries in flight per Trigger and replica.
	Parallelism int `envconfig:"PARALLELISM" default:"128"`
	// ParkAfter is the number of failed rounds after which an event is parked in the
	// dead-letter store.
	ParkAfter int `envconfig:"PARK_AFTER" default:"3"`
	// MaintainInterval is how often the ingress trims streams and checks backlogs.
	MaintainInterval time.Duration `envconfig:"MAINTAIN_INTERVAL" default:"5s"`
	// ContractEvery is how often the contract file is read again.
	ContractEvery time.Duration `envconfig:"CONTRACT_POLL_INTERVAL" default:"2s"`
}

// Modes of the data plane.
const (
	ModeIngress    = "ingress"
	ModeDispatcher = "dispatcher"
)

// Main runs the data plane in mode until SIGTERM or SIGINT and returns the process's exit code.
func Main(mode string) int {
	log := slog.New(slog.NewJSONHandler(os.Stderr, nil)).With("component", "redis-broker-"+mode)
	ctx, stop := signal.NotifyContext(context.Background(), syscall.SIGTERM, syscall.SIGINT)
	defer stop()
	if err := run(ctx, mode, log); err != nil {
		log.Error("stopped", "error", err)
		return 1
	}
	return 0
}

func run(ctx context.Context, mode string, log *slog.Logger) error {
	var env DataPlaneEnv
	if err := envconfig.Process("", &env); err != nil {
		return fmt.Errorf("configuration: %w", err)
	}
	if env.PodName == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("POD_NAME is unset and the host name unknown: %w", err)
		}
		env.PodName = host
	}
	rdb, err := redisconn.FromEnv()
	if err != nil {
		return fmt.Errorf("redis: %w", err)
	}
	defer func() { _ = rdb.Close() }()
	w := &ContractWatcher{Path: env.ContractPath, Every: env.ContractEvery, Log: log}
	switch mode {
	case ModeIngress:
		return RunIngress(ctx, rdb, w, IngressOptions{
			Listen: env.ListenAddress, Replica: env.PodName, MaintainEvery: env.MaintainInterval, MaxBacklog: env.MaxBacklog, AppendTimeout: env.AppendTimeout,
			Kube: KubeConfig(log),
		}, log)
	case ModeDispatcher:
		return RunDispatcher(ctx, rdb, w, DispatcherOptions{
			Listen: env.ListenAddress,
			Consumer: broker.ConsumerOptions{
				Name: env.PodName, ExternalGroups: true, RedeliverAfter: env.RedeliverAfter, Parallelism: env.Parallelism, MaxRounds: env.ParkAfter,
				Parker: broker.NewDeadLetterParker(rdb, deadletter.Options{}),
			},
			Kube: KubeConfig(log),
		}, log)
	}
	return errors.New("unknown data plane mode " + mode)
}
