// Package redisconn builds the one Redis client a knfaas process uses, from REDIS_URL.
package redisconn

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	neturl "net/url"
	"os"
	"time"

	"github.com/redis/go-redis/extra/redisotel/v9"
	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/tracing"
)

// Environment variables read by FromEnv.
const (
	// EnvURL holds the server address: redis://[user:password@]host:port[/db] or rediss:// for TLS.
	EnvURL = "REDIS_URL"
	// EnvCAFile optionally names a PEM file with the CA that signed the server's TLS certificate.
	EnvCAFile = "REDIS_CA_FILE"
	// EnvPassword optionally overrides the password in the URL (e.g. fed from a Secret on its own).
	EnvPassword = "REDIS_PASSWORD"
)

// ErrNoURL is returned by FromEnv when REDIS_URL is unset.
var ErrNoURL = errors.New(EnvURL + " is not set")

// Options are settings that do not come from the URL.
type Options struct {
	// CAFile is a PEM bundle to trust for rediss:// servers; empty means the system pool.
	CAFile string
	// Password overrides the URL's password when non-empty.
	Password string
	// PoolSize overrides the connection pool size when the URL does not set pool_size.
	PoolSize int
}

// FromEnv builds a client from REDIS_URL, REDIS_PASSWORD and REDIS_CA_FILE. When tracing is on
// in this process (tracing.Active), every command and pipeline is a span (go-redis's own
// OpenTelemetry instrumentation).
func FromEnv() (*redis.Client, error) {
	url := os.Getenv(EnvURL)
	if url == "" {
		return nil, ErrNoURL
	}
	rdb, err := New(url, Options{CAFile: os.Getenv(EnvCAFile), Password: os.Getenv(EnvPassword)})
	if err != nil || !tracing.Active() {
		return rdb, err
	}
	if err := redisotel.InstrumentTracing(rdb, redisotel.WithDBStatement(false)); err != nil {
		return nil, fmt.Errorf("instrumenting redis for tracing: %w", err)
	}
	return rdb, nil
}

// New builds a client for url. The URL's query parameters (pool_size, dial_timeout, …) are
// honoured by go-redis; where the URL leaves them unset, knfaas' defaults apply: short dial and
// I/O timeouts so a dead server surfaces as an error the caller can retry, not a hang.
func New(url string, opts Options) (*redis.Client, error) {
	o, err := redis.ParseURL(url)
	if err != nil {
		return nil, fmt.Errorf("parsing %s: %w", EnvURL, err)
	}
	if opts.Password != "" {
		o.Password = opts.Password
	}
	if o.TLSConfig != nil && opts.CAFile != "" {
		pem, err := os.ReadFile(opts.CAFile)
		if err != nil {
			return nil, fmt.Errorf("reading %s: %w", EnvCAFile, err)
		}
		pool := x509.NewCertPool()
		if !pool.AppendCertsFromPEM(pem) {
			return nil, fmt.Errorf("%s %s holds no PEM certificate", EnvCAFile, opts.CAFile)
		}
		o.TLSConfig.RootCAs = pool
		o.TLSConfig.MinVersion = tls.VersionTLS12
	}
	applyDefaults(o, url)
	if opts.PoolSize > 0 && !hasQueryParam(url, "pool_size") {
		o.PoolSize = opts.PoolSize
	}
	return redis.NewClient(o), nil
}

// defaults are the timeouts used when the URL does not set them.
const (
	defaultDialTimeout  = 2 * time.Second
	defaultReadTimeout  = 3 * time.Second
	defaultWriteTimeout = 3 * time.Second
)

func applyDefaults(o *redis.Options, url string) {
	// go-redis fills its own defaults (5s dial, 3s read/write) when the URL is silent; we only
	// shorten the dial so that readiness fails fast against an absent server.
	if !hasQueryParam(url, "dial_timeout") {
		o.DialTimeout = defaultDialTimeout
	}
	if !hasQueryParam(url, "read_timeout") {
		o.ReadTimeout = defaultReadTimeout
	}
	if !hasQueryParam(url, "write_timeout") {
		o.WriteTimeout = defaultWriteTimeout
	}
}

func hasQueryParam(rawURL, name string) bool {
	u, err := neturl.Parse(rawURL)
	return err == nil && u.Query().Has(name)
}

// Ping reports whether the server answers within ctx.
func Ping(ctx context.Context, c redis.UniversalClient) error {
	if err := c.Ping(ctx).Err(); err != nil {
		return fmt.Errorf("pinging redis: %w", err)
	}
	return nil
}
