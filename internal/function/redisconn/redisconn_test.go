package redisconn

import (
	"context"
	"errors"
	"runtime"
	"testing"
	"time"

	"github.com/alicebob/miniredis/v2"

	"github.com/knfaas/knfaas/internal/harness/redistest"
)

func TestNewConnectsWithPassword(t *testing.T) {
	srv := redistest.Start(t, redistest.Options{Password: "s3cret"})
	ctx := context.Background()

	tests := map[string]struct {
		url     string
		opts    Options
		wantErr bool
	}{
		"password in url":          {url: srv.URL()},
		"password from option":     {url: "redis://" + srv.Addr() + "/0", opts: Options{Password: "s3cret"}},
		"wrong password refused":   {url: "redis://:nope@" + srv.Addr() + "/0", wantErr: true},
		"missing password refused": {url: "redis://" + srv.Addr() + "/0", wantErr: true},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			c, err := New(tc.url, tc.opts)
			if err != nil {
				t.Fatalf("New: %v", err)
			}
			defer c.Close()
			err = Ping(ctx, c)
			if (err != nil) != tc.wantErr {
				t.Fatalf("Ping error = %v, wantErr %v", err, tc.wantErr)
			}
		})
	}
}

func TestNewTLS(t *testing.T) {
	// miniredis serves TLS with a certificate the test trusts through REDIS_CA_FILE.
	certFile, keyFile, caFile := writeTestCert(t)
	tlsCfg := serverTLS(t, certFile, keyFile)
	m := miniredis.NewMiniRedis()
	if err := m.StartTLS(tlsCfg); err != nil {
		t.Fatalf("StartTLS: %v", err)
	}
	defer m.Close()

	c, err := New("rediss://"+m.Addr()+"/0", Options{CAFile: caFile})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer c.Close()
	if err := Ping(context.Background(), c); err != nil {
		t.Fatalf("Ping over TLS with trusted CA: %v", err)
	}

	untrusted, err := New("rediss://"+m.Addr()+"/0", Options{})
	if err != nil {
		t.Fatalf("New: %v", err)
	}
	defer untrusted.Close()
	if err := Ping(context.Background(), untrusted); err == nil {
		t.Fatal("Ping over TLS with an untrusted certificate succeeded; want a verification error")
	}
}

func TestNewErrors(t *testing.T) {
	tests := map[string]struct {
		url  string
		opts Options
	}{
		"bad scheme":           {url: "http://localhost:6379"},
		"missing CA file":      {url: "rediss://localhost:6379", opts: Options{CAFile: "/nonexistent/ca.pem"}},
		"CA file without PEMs": {url: "rediss://localhost:6379", opts: Options{CAFile: "redisconn_test.go"}},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			if _, err := New(tc.url, tc.opts); err == nil {
				t.Fatal("New succeeded; want an error")
			}
		})
	}
}

func TestFromEnvRequiresURL(t *testing.T) {
	t.Setenv(EnvURL, "")
	if _, err := FromEnv(); !errors.Is(err, ErrNoURL) {
		t.Fatalf("FromEnv error = %v, want ErrNoURL", err)
	}
}

func TestDefaultsOnlyWhereURLIsSilent(t *testing.T) {
	c, err := New("redis://localhost:6379/0?dial_timeout=7s", Options{})
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	if got := c.Options().DialTimeout; got != 7*time.Second {
		t.Errorf("DialTimeout = %v, want the URL's 7s", got)
	}
	if got := c.Options().PoolSize; got != 10*runtime.GOMAXPROCS(0) {
		t.Errorf("PoolSize = %d, want go-redis' default", got)
	}
	sized, err := New("redis://localhost:6379/0", Options{PoolSize: 77})
	if err != nil {
		t.Fatal(err)
	}
	defer sized.Close()
	if got := sized.Options().PoolSize; got != 77 {
		t.Errorf("PoolSize = %d, want the option's 77", got)
	}
	if got := c.Options().ReadTimeout; got != defaultReadTimeout {
		t.Errorf("ReadTimeout = %v, want default %v", got, defaultReadTimeout)
	}
}
