package funcstart_test

import (
	"errors"
	"fmt"
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
