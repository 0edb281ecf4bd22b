package embedded

import (
	"fmt"
	"strconv"
	"time"

	"github.com/redis/go-redis/v9"

	"github.com/knfaas/knfaas/internal/function/deadletter"
	"github.com/knfaas/knfaas/internal/runtime/broker"
	"github.com/knfaas/knfaas/internal/runtime/manifest"
)

// deadLetterOptions bounds the dead-letter store as the dead-letter function does: by the
// loaded deadletter-config ConfigMap of the namespace when there is one, by the defaults otherwise.
func deadLetterOptions(set *manifest.Set) (deadletter.Options, error) {
	var opts deadletter.Options
	cm := set.ConfigMap("knfaas", "deadletter-config")
	if cm == nil {
		return opts, nil
	}
	where := "ConfigMap knfaas/deadletter-config"
	if v := cm.Data["max-letters"]; v != "" {
		n, err := strconv.Atoi(v)
		if err != nil {
			return opts, fmt.Errorf("%s: max-letters: %w", where, err)
		}
		opts.MaxLetters = n
	}
	if v := cm.Data["max-bytes"]; v != "" {
		n, err := strconv.ParseInt(v, 10, 64)
		if err != nil {
			return opts, fmt.Errorf("%s: max-bytes: %w", where, err)
		}
		opts.MaxBytes = n
	}
	if v := cm.Data["max-age"]; v != "" {
		d, err := time.ParseDuration(v)
		if err != nil {
			return opts, fmt.Errorf("%s: max-age: %w", where, err)
		}
		opts.MaxAge = d
	}
	return opts, nil
}

// newDeadLetterParker parks in the dead-letter store of rdb, bounded by opts.
func newDeadLetterParker(rdb redis.UniversalClient, opts deadletter.Options) broker.DeadLetterParker {
	return broker.NewDeadLetterParker(rdb, opts)
}
