package funcstart_test

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/funcstart"
)

// config has a tag default, a default from a Go constant (preset) and a rule only Check states.
type config struct {
	Wait  time.Duration `envconfig:"FUNCSTART_TEST_WAIT" default:"5s"`
	Limit int           `envconfig:"FUNCSTART_TEST_LIMIT"`
}

const defaultLimit = 7

func (c config) Check() error {
	if c.Limit < 1 {
		return errors.New("FUNCSTART_TEST_LIMIT must be at least 1")
	}
	return nil
}

func TestOpen(t *testing.T) {
	tests := map[string]struct {
		env  map[string]string
		want config // the configuration read, when Open succeeds
		err  string // what the error says; "" when Open must succeed
	}{
		"defaults": {want: config{Wait: 5 * time.Second, Limit: defaultLimit}},
		"set": {
			env:  map[string]string{"FUNCSTART_TEST_WAIT": "1s", "FUNCSTART_TEST_LIMIT": "3"},
			want: config{Wait: time.Second, Limit: 3},
		},
		"not a duration": {
			env: map[string]string{"FUNCSTART_TEST_WAIT": "soon"},
			err: "demo: reading configuration: envconfig.Process: assigning FUNCSTART_TEST_WAIT",
		},
		"refused by Check": {env: map[string]string{"FUNCSTART_TEST_LIMIT": "0"}, err: "demo: FUNCSTART_TEST_LIMIT must be at least 1"},
		"no Redis":         {env: map[string]string{"REDIS_URL": ""}, err: "demo: REDIS_URL is not set"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg := config{Limit: defaultLimit}
			rdb, err := funcstart.Open("demo", &cfg)
			if rdb != nil {
				defer rdb.Close()
			}
			switch {
			case tc.err == "" && err != nil:
				t.Fatalf("Open = %v, want it to read %+v", err, tc.want)
			case tc.err != "" && !strings.Contains(fmt.Sprint(err), tc.err):
				t.Fatalf("Open = %v, want an error saying %q", err, tc.err)
			case err == nil && cfg != tc.want:
				t.Errorf("read %+v, want %+v", cfg, tc.want)
			}
		})
	}
}

func TestStartHandsTheConfigurationAndRedisToStart(t *testing.T) {
	t.Setenv("REDIS_URL", "redis://127.0.0.1:1")
	tests := map[string]struct {
		limit string
		err   string // what the error says; "" when start must be called
	}{
		"configuration read": {limit: "9"},
		"bad configuration":  {limit: "0", err: "demo: FUNCSTART_TEST_LIMIT must be at least 1"},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			t.Setenv("FUNCSTART_TEST_LIMIT", tc.limit)
			var got config
			err := funcstart.Start(context.Background(), "demo", &config{}, func(_ context.Context, cfg config, rdb *redis.Client) error {
				defer rdb.Close()
				got = cfg
				return nil
			})
			if tc.err != "" {
				if err == nil || err.Error() != tc.err {
					t.Fatalf("Start = %v, want %q", err, tc.err)
				}
				return
			}
			if err != nil || got.Limit != 9 || got.Wait != 5*time.Second {
				t.Fatalf("Start = %v and start got %+v, want nil and {Wait:5s Limit:9}", err, got)
			}
		})
	}
}
