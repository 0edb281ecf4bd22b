package funcstart_test

import (
	"errors"
	"strings"
	"testing"
	"time"

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
		env     map[string]string
		want    config
		wantErr string // fragment of the error; "" means none
	}{
		"defaults": {
			env:  map[string]string{"REDIS_URL": "redis://127.0.0.1:1"},
			want: config{Wait: 5 * time.Second, Limit: defaultLimit},
		},
		"set": {
			env:  map[string]string{"REDIS_URL": "redis://127.0.0.1:1", "FUNCSTART_TEST_WAIT": "1s", "FUNCSTART_TEST_LIMIT": "3"},
			want: config{Wait: time.Second, Limit: 3},
		},
		"not a duration": {
			env:     map[string]string{"REDIS_URL": "redis://127.0.0.1:1", "FUNCSTART_TEST_WAIT": "soon"},
			wantErr: "demo: reading configuration: envconfig.Process: assigning FUNCSTART_TEST_WAIT",
		},
		"refused by Check": {
			env:     map[string]string{"REDIS_URL": "redis://127.0.0.1:1", "FUNCSTART_TEST_LIMIT": "0"},
			wantErr: "demo: FUNCSTART_TEST_LIMIT must be at least 1",
		},
		"no Redis": {
			env:     map[string]string{"REDIS_URL": ""},
			wantErr: "demo: REDIS_URL is not set",
		},
	}
	for name, tc := range tests {
		t.Run(name, func(t *testing.T) {
			for k, v := range tc.env {
				t.Setenv(k, v)
			}
			cfg := config{Limit: defaultLimit}
			rdb, err := funcstart.Open("demo", &cfg)
			if tc.wantErr != "" {
				if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
					t.Fatalf("Open = %v, want an error holding %q", err, tc.wantErr)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			_ = rdb.Close()
			if cfg != tc.want {
				t.Errorf("config = %+v, want %+v", cfg, tc.want)
			}
		})
	}
}
